import _thread
import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import agentfleet as af

from conftest import Node, cancel_once_streaming


def test_embedded_init_starts_two_workers(fleet: af.Fleet) -> None:
    assert fleet.embedded
    status = fleet.status()
    workers = status["workers"]
    assert isinstance(workers, list) and len(workers) == 2
    assert all(w["slots"] > 0 and w["resources"]["cpus"] > 0 for w in workers)
    # Embedded workers run models on the CPU: they report no GPUs.
    assert all(w["gpus"] == [] and w["resources"]["gpus"] == 0 for w in workers)


def test_map_of_a_thousand_prompts_returns_ordered_results(fleet: af.Fleet, echo: af.Agent) -> None:
    prompts = [f"prompt {i} says hi" for i in range(1000)]
    assert echo.map(prompts, progress=False) == prompts
    unordered = echo.map(prompts[:100], ordered=False, progress=False)
    assert sorted(unordered) == sorted(prompts[:100])
    per_worker = [w["tasks_assigned"] for w in fleet.status()["workers"]]  # type: ignore[index, union-attr]
    assert all(n > 0 for n in per_worker), per_worker
    assert echo.map([], progress=False) == []


def test_stream_yields_deltas_in_order(echo: af.Agent) -> None:
    events = list(echo.stream("one two three four"))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].kind == "submitted" and events[-1].kind == "completed"
    assert events[-1].is_final
    assert "".join(e.text for e in events if e.kind == "text_delta") == "one two three four"


def test_submit_then_result_and_events(echo: af.Agent) -> None:
    task = echo.submit("hello there")
    assert task.result(timeout=10) == "hello there"
    assert task.done()
    kinds = [e.kind for e in task.events()]
    assert kinds[:3] == ["submitted", "scheduled", "working"] and kinds[-1] == "completed"


@pytest.mark.asyncio
async def test_asyncio_submit_and_stream(echo: af.Agent) -> None:
    tasks = await asyncio.gather(*(echo.asubmit(f"async {i}") for i in range(50)))
    results = await asyncio.gather(*(t.aresult() for t in tasks))
    assert results == [f"async {i}" for i in range(50)]
    texts = [e.text async for e in echo.astream("a b c") if e.kind == "text_delta"]
    assert texts == ["a", " b", " c"]
    task = echo.submit("awaited")
    assert await task.aresult() == "awaited"
    kinds = [e.kind async for e in task.aevents()]
    assert kinds[-1] == "completed"


def test_cancel_stops_a_running_task(slow: af.Agent) -> None:
    task = slow.submit(" ".join(f"w{i}" for i in range(500)))
    cancel_once_streaming(task)
    deltas = [e for e in task.events() if e.kind == "text_delta"]
    assert len(deltas) < 50


def test_result_times_out_but_the_task_keeps_running(slow: af.Agent) -> None:
    task = slow.submit("a b c d e f g h")
    with pytest.raises(TimeoutError):
        task.result(timeout=0.05)
    assert task.result(timeout=10) == "a b c d e f g h"


def test_unknown_agent_is_not_found(fleet: af.Fleet) -> None:
    with pytest.raises(af.UnknownAgentError, match="nobody"):
        fleet.get_agent("nobody")
    ghost = fleet.agent("ghost", model="builtin:echo")
    assert fleet.get_agent("ghost").name == ghost.name


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.02)


async def awaiting(submit: Callable[[str], Awaitable[af.Task]], prompt: str) -> object:
    task = await submit(prompt)
    return await task


def test_bad_input_raises_with_the_servers_message(fleet: af.Fleet, echo: af.Agent) -> None:
    with pytest.raises(af.InvalidRequestError, match="input is empty"):
        echo.submit("   ")
    with pytest.raises(af.InvalidRequestError, match="invalid agent spec"):
        fleet.agent("bad name", model="builtin:echo")
    broken = fleet.agent("broken", model="builtin:echo", model_options={"token_delay_ms": "-1"})
    task = broken.submit("x")
    with pytest.raises(af.InvalidRequestError, match="token_delay_ms") as bad_option:
        task.result(timeout=10)
    # The agent's option is at fault, not the cluster: the failure says which kind it is.
    assert bad_option.value.kind == "invalid_request"
    assert [e.error_kind for e in task.events() if e.kind == "failed"] == ["invalid_request"]
    with pytest.raises(af.InvalidRequestError, match="3 of 3 tasks") as all_three:
        broken.map(["a", "b", "c"], progress=False)
    assert all_three.value.kind == "invalid_request"
    # Every path that raises a task's failure says its kind: awaited, and embeddings asked of a model
    # that does not embed (the agent is misconfigured); one raised by hand has the default.
    with pytest.raises(af.InvalidRequestError, match="token_delay_ms") as awaited:
        asyncio.run(awaiting(broken.asubmit, "x"))
    assert awaited.value.kind == "invalid_request"
    with pytest.raises(af.InvalidRequestError, match="does not embed") as not_embedded:
        echo.embed(["a text"])
    assert not_embedded.value.kind == "invalid_request"
    assert af.FleetError("raised by hand").kind == "internal"
    assert echo.submit("still serving").result(timeout=10) == "still serving"


def test_mcp_servers_reach_the_worker_which_runs_only_those_it_allows(fleet: af.Fleet) -> None:
    with pytest.raises(ValueError, match='unknown MCP server key "cmd"'):
        fleet.agent("tooled", model="builtin:echo", mcp=[{"cmd": ["python3"]}])
    with pytest.raises(af.InvalidRequestError, match="both a command and a url"):
        fleet.agent("tooled", model="builtin:echo", mcp=[{"command": ["x"], "url": "http://a/"}])
    # The embedded workers allow no MCP server: the spec reached them, and they refuse it.
    tooled = fleet.agent("tooled", model="builtin:echo", mcp=[{"command": ["python3", "tools.py"]}])
    with pytest.raises(af.UnsupportedError, match="--allow-mcp-command") as refused:
        tooled.submit("hello").result(timeout=10)
    assert refused.value.kind == "unsupported"


def test_keyboard_interrupt_during_map_cancels_the_tasks(fleet: af.Fleet, slow: af.Agent, ctrl_c_raises: None) -> None:
    before = fleet.status()
    prompts = [" ".join(f"w{i}" for i in range(100)) for _ in range(2000)]
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        slow.map(prompts, progress=False)
    assert time.monotonic() - started < 4, "map did not stop promptly"
    # Every task the map started was canceled: none keeps running or waiting.
    deadline = time.monotonic() + 15
    while True:
        status = fleet.status()
        if status["running_tasks"] == 0 and status["queued_tasks"] == 0:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    canceled = status["tasks_canceled"] - before["tasks_canceled"]  # type: ignore[operator]
    completed = status["tasks_completed"] - before["tasks_completed"]  # type: ignore[operator]
    assert canceled > 0 and completed == 0, (canceled, completed)


def test_connect_by_address_to_separate_processes(remote_cluster: str) -> None:
    fleet = af.init(remote_cluster, token="s3cret")
    assert not fleet.embedded
    deadline = time.monotonic() + 15
    while len(fleet.status()["workers"]) < 1:  # type: ignore[arg-type]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    echo = fleet.agent("echo", model="builtin:echo")
    assert echo.map(["across", "processes"], progress=False) == ["across", "processes"]
    fleet.shutdown()  # a no-op for a connection


def test_connect_over_tls_with_the_cluster_ca(tls_cluster: tuple[str, Path]) -> None:
    address, ca = tls_cluster
    fleet = af.init(address, token="s3cret", tls_ca=ca)
    deadline = time.monotonic() + 15
    while len(fleet.status()["workers"]) < 1:  # type: ignore[arg-type]
        assert time.monotonic() < deadline, "the worker did not join over TLS"
        time.sleep(0.05)
    echo = fleet.agent("echo", model="builtin:echo")
    assert echo.map(["over", "tls"], progress=False) == ["over", "tls"]
    # The system's roots do not know the test CA; a CA file means https://.
    with pytest.raises(af.UnavailableError, match="certificate"):
        af.init(address, token="s3cret")
    with pytest.raises(af.InvalidRequestError, match="https://"):
        af.init(address.replace("https://", "http://"), token="s3cret", tls_ca=ca)
    with pytest.raises(ValueError, match="tls_ca"):
        af.init(workers=1, tls_ca=ca)


def test_wrong_token_is_unauthenticated(remote_cluster: str) -> None:
    with pytest.raises(af.UnauthenticatedError, match="client token"):
        af.init(remote_cluster, token="wrong")
    with pytest.raises(af.UnauthenticatedError, match="client token"):
        af.init(remote_cluster, token="j0in")  # the workers' join token is not a client's


def test_principals_keys_see_their_tenant_and_act_as_their_role(tmp_path: Path) -> None:
    import hashlib

    def principal(name: str, tenant: str, role: str) -> str:
        digest = hashlib.sha256(f"key-{name}".encode()).hexdigest()
        return f'[[principal]]\nname = "{name}"\ntenant = "{tenant}"\nrole = "{role}"\nkey_sha256 = "{digest}"\n'

    config = tmp_path / "fleet.toml"
    config.write_text(
        principal("ann", "a", "user") + principal("bob", "b", "user") + principal("rita", "a", "reader")
        + '[[agent]]\nname = "echo"\nmodel = "builtin:echo"\n'
    )
    head = Node("head", "--listen", "127.0.0.1:0", "--print-address", "--config", str(config), "--join-token", "j0in")
    assert head.proc.stdout is not None
    line = head.proc.stdout.readline()
    assert line.startswith("listening on "), line
    address = "http://" + line.removeprefix("listening on ").strip()
    worker = Node("worker", "--head", address, "--join-token", "j0in")
    try:
        ann, bob, rita = (af.init(address, token=f"key-{n}") for n in ("ann", "bob", "rita"))
        deadline = time.monotonic() + 30
        while len(ann.status()["workers"]) < 1:  # type: ignore[arg-type]
            assert time.monotonic() < deadline, "the worker did not join"
            time.sleep(0.05)
        mine = ann.agent("ann-echo", model="builtin:echo")
        assert mine.submit("ours").result(timeout=30) == "ours"
        assert bob.get_agent("echo").submit("shared").result(timeout=30) == "shared"
        with pytest.raises(af.UnknownAgentError):
            bob.get_agent("ann-echo")  # another tenant's agent is not there for bob
        with pytest.raises(af.PermissionDeniedError, match="shared"):
            ann.agent("echo", model="builtin:echo", instructions="mine now")
        with pytest.raises(af.PermissionDeniedError, match="reader"):
            rita.get_agent("echo").submit("hi").result(timeout=30)
        assert rita.get_agent("ann-echo").name == "ann-echo"  # readers see their tenant's agents
    finally:
        worker.stop()
        head.stop()


def test_an_embedded_cluster_refuses_other_processes_without_its_random_token(fleet: af.Fleet) -> None:
    import httpx

    token = fleet.token
    assert token is not None and len(token) >= 32
    assert token not in repr(fleet)
    with pytest.raises(af.UnauthenticatedError):
        af.init(fleet.address)
    other = af.init(fleet.address, token=token)
    assert len(other.status()["workers"]) == 2  # type: ignore[arg-type]
    assert httpx.get(fleet.address + "/v1/models").status_code == 401
    authorized = httpx.get(fleet.address + "/v1/models", headers={"Authorization": f"Bearer {token}"})
    assert authorized.status_code == 200


def test_unreachable_cluster_is_unavailable() -> None:
    with pytest.raises(af.UnavailableError):
        af.init("http://127.0.0.1:1")


def test_python_m_agentfleet_explains_its_usage() -> None:
    done = subprocess.run([sys.executable, "-m", "agentfleet"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "python -m agentfleet head" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "agentfleet", "worker", "--head", "not a url"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and "invalid head address" in done.stderr


def test_python_m_agentfleet_runs_the_fleet_command_line(remote_cluster: str) -> None:
    env = dict(os.environ, FLEET_HEAD=remote_cluster, FLEET_TOKEN="s3cret")
    fleet = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "agentfleet", *args], capture_output=True, text=True, timeout=60, env=env
    )
    client = af.init(remote_cluster, token="s3cret")
    client.agent("cli-echo", model="builtin:echo")
    done = fleet("submit", "cli-echo", "from python -m")
    assert done.returncode == 0 and done.stdout.strip() == "from python -m", done.stderr
    task = done.stderr.split("[", 1)[1].split(" ", 1)[0]
    status = fleet("status")
    assert status.returncode == 0 and "workers 1 alive of 1" in status.stdout, status.stderr
    tasks = fleet("tasks", "--agent", "cli-echo")
    assert tasks.returncode == 0 and task in tasks.stdout and "completed" in tasks.stdout, tasks.stdout
    wrong = subprocess.run(
        [sys.executable, "-m", "agentfleet", "--head", remote_cluster, "agents"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "FLEET_TOKEN"},
    )
    assert wrong.returncode == 1 and "wrong client token" in wrong.stderr, wrong.stderr


def test_stubs_match_the_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "agentfleet", "--allowlist", str(Path(__file__).parents[1] / "stubtest-allowlist.txt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_keyboard_interrupt_during_stream_cancels_the_task(fleet: af.Fleet, slow: af.Agent, ctrl_c_raises: None) -> None:
    # 500 words 20 ms apart: left alone the task would run 10 s; canceled, it ends as canceled
    # within 3 s of the interrupt (the count of canceled tasks is what shows it).
    canceled_before = fleet.status()["tasks_canceled"]
    assert isinstance(canceled_before, int)
    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    seen = []
    with pytest.raises(KeyboardInterrupt):
        for event in slow.stream(" ".join(f"w{i}" for i in range(500))):
            seen.append(event)
    interrupted = time.monotonic()
    task_id = seen[0].task_id
    wait_until(lambda: fleet.status()["tasks_canceled"] == canceled_before + 1, timeout=3.0, what="the interrupted task to be canceled")
    assert time.monotonic() - interrupted < 3.0
    assert fleet.status()["running_tasks"] == 0
    assert len([e for e in seen if e.kind == "text_delta"]) < 100, "the stream ran on"
    assert all(e.task_id == task_id for e in seen)


def test_keyboard_interrupt_during_map_cancels_the_tasks_of_a_remote_cluster(remote_cluster: str, ctrl_c_raises: None) -> None:
    fleet = af.init(remote_cluster, token="s3cret")
    slow = fleet.agent("slow-remote", model="builtin:echo", model_options={"token_delay_ms": "20"})
    prompts = [" ".join(f"w{i}" for i in range(100)) for _ in range(1000)]
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        slow.map(prompts, progress=False)
    deadline = time.monotonic() + 15
    while True:
        status = fleet.status()
        if status["running_tasks"] == 0 and status["queued_tasks"] == 0:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status["tasks_canceled"] > 0 and status["tasks_completed"] < 10, status


def test_an_embedded_cluster_runs_the_mcp_servers_it_allows() -> None:
    script = Path(__file__).parents[2] / "worker-node" / "tests" / "mcp" / "tools_server.py"
    with af.init(workers=1, allow_mcp_commands=[sys.executable]) as fleet:
        calculator = fleet.agent(
            "calculator", model="builtin:echo", mcp=[{"command": [sys.executable, str(script)]}]
        )
        # builtin:echo writes the call it is told to, then answers with the tool's result.
        call = '<tool_call>{"name": "add", "arguments": {"a": 20, "b": 22}}</tool_call>'
        task = calculator.submit(call)
        assert task.result(timeout=60) == "42"
        events = list(task.events())
        assert [(e.tool, e.arguments) for e in events if e.kind == "tool_call"] == [
            ("add", '{"a":20,"b":22}')
        ]
        assert [(e.output, e.is_error) for e in events if e.kind == "tool_result"] == [("42", False)]
        failing = calculator.submit('<tool_call>{"name": "fail", "arguments": {"reason": "no"}}</tool_call>')
        failing.result(timeout=60)
        errors = [(e.output, e.is_error) for e in failing.events() if e.kind == "tool_result"]
        assert errors == [("Error executing tool fail: no", True)]
