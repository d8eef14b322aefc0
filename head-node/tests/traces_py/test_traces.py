"""OpenTelemetry traces from a real cluster: a head and two workers (separate processes, on a
mesh over 127.0.0.1) export OTLP/HTTP protobuf to a minimal receiver in this test, decoded
with the opentelemetry-proto package. Agent "caller" runs on one worker and calls agent
"callee" on the other over the mesh; the task is one trace: the head's `invoke_agent` span
is its only root, the callee's spans hang under the caller's `execute_tool` span, and the
spans carry the GenAI attributes. A `traceparent` header on an OpenAI request becomes the
parent of the task's trace."""

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from fleetproc import Fleet, clean_env
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

CONFIG = """
[[agent]]
name = "caller"
model = "builtin:echo"
tools = ["callee"]
labels = { role = "caller" }

[[agent]]
name = "callee"
model = "builtin:echo"
labels = { role = "callee" }
"""


class Span:
    """One received span, flattened: ids as hex, attributes as Python values."""

    def __init__(self, service: str, span) -> None:  # type: ignore[no-untyped-def]
        self.service = service
        self.name: str = span.name
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_id = span.parent_span_id.hex()
        self.kind: int = span.kind
        self.status_code: int = span.status.code
        self.attributes = {a.key: value(a.value) for a in span.attributes}
        self.events = [e.name for e in span.events]

    def __repr__(self) -> str:
        return f"{self.service}:{self.name}({self.span_id} <- {self.parent_id or 'root'})"


def value(v):  # type: ignore[no-untyped-def]
    field = v.WhichOneof("value")
    if field == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, field) if field else None


class Receiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1 that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
                if ok:
                    request = ExportTraceServiceRequest.FromString(body)
                    with receiver.lock:
                        for resource in request.resource_spans:
                            service = next(a.value.string_value for a in resource.resource.attributes if a.key == "service.name")
                            for scope in resource.scope_spans:
                                receiver.spans.extend(Span(service, s) for s in scope.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str, count: int, timeout: float = 30) -> list[Span]:
        """The spans of `trace_id`, once `count` of them arrived."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                spans = [s for s in self.spans if s.trace_id == trace_id]
            if len(spans) >= count:
                return spans
            assert time.monotonic() < deadline, f"{len(spans)} of {count} spans arrived: {spans}"
            time.sleep(0.05)

    def traces_of(self, task_id: str, timeout: float = 30) -> str:
        """The trace id of the head's span of `task_id` (the SERVER span naming it)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                for s in self.spans:
                    if s.kind == 2 and s.attributes.get("agentfleet.task.id") == task_id:
                        return s.trace_id
            assert time.monotonic() < deadline, f"no head span for task {task_id}"
            time.sleep(0.05)


def start_cluster(otlp: str) -> Fleet:
    """A head and two workers on a mesh over loopback, all exporting to `otlp`; the second
    worker traces through the standard variable instead of the flag."""
    env = clean_env(FLEET_MESH_LISTEN="/ip4/127.0.0.1/tcp/0", OTEL_BSP_SCHEDULE_DELAY="100")  # spans go out within 0.1 s of ending
    workers = [["--name", "one", "--label", "role=caller", "--otlp-endpoint", otlp], ["--name", "two", "--label", "role=callee"]]
    return Fleet(CONFIG, "--otlp-endpoint", otlp, workers=workers, env=env, worker_envs=[{}, {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp}])


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture(scope="module")
def cluster(receiver: Receiver) -> Iterator[Fleet]:
    c = start_cluster(receiver.url)
    yield c
    c.stop()


def call(callee: str, question: str) -> str:
    """What the caller is told: builtin:echo repeats it, so it "writes" this call."""
    return f'<tool_call>{{"name": "{callee}", "arguments": {{"input": "{question}"}}}}</tool_call>'


def chat(cluster: Fleet, content: str, headers: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
    body = {"model": "caller", "messages": [{"role": "user", "content": content}]}
    response = httpx.post(cluster.url + "/v1/chat/completions", json=body, headers=headers or {}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def send(cluster: Fleet, agent: str, text: str) -> str:
    """Sends `text` to `agent` over A2A's HTTP+JSON binding; returns the task's id."""
    message = {"message": {"messageId": secrets.token_hex(8), "role": "ROLE_USER", "parts": [{"text": text}]}}
    sent = httpx.post(f"{cluster.url}/a2a/{agent}/message:send", json=message, timeout=60)
    assert sent.status_code == 200, sent.text
    return str(sent.json()["task"]["id"])


def test_a_task_calling_an_agent_over_the_mesh_is_one_trace(cluster: Fleet, receiver: Receiver) -> None:
    task_id = send(cluster, "caller", call("callee", "hello over the mesh"))
    trace_id = receiver.traces_of(task_id)
    # head: invoke_agent; worker one: invoke_agent, 2 chats, execute_tool; worker two:
    # invoke_agent, chat.
    spans = receiver.trace(trace_id, 7)
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_id]
    assert [(r.service, r.name) for r in roots] == [("fleet-head", "invoke_agent caller")], spans
    root = roots[0]
    assert root.kind == 2, "the head's span of a client's task is a SERVER span"  # SPAN_KIND_SERVER
    for s in spans:
        assert s.parent_id == "" or s.parent_id in by_id, f"{s} has a parent outside the trace"

    def only(service: str, name: str) -> Span:
        found = [s for s in spans if s.service == service and s.name == name]
        assert len(found) == 1, (service, name, spans)
        return found[0]

    run = only("fleet-worker", "invoke_agent caller")
    assert run.parent_id == root.span_id
    tool = only("fleet-worker", "execute_tool callee")
    assert tool.parent_id == run.span_id
    callee = only("fleet-worker", "invoke_agent callee")
    assert callee.parent_id == tool.span_id, "the sub-task's spans go under the caller's execute_tool span"
    chats = [s for s in spans if s.name == "chat builtin:echo"]
    assert len(chats) == 3, spans
    assert sorted(by_id[c.parent_id].name for c in chats) == ["invoke_agent callee", "invoke_agent caller", "invoke_agent caller"]

    # GenAI attributes.
    for s in (root, run, callee):
        assert s.attributes["gen_ai.operation.name"] == "invoke_agent"
        assert s.attributes["gen_ai.request.model"] == "builtin:echo"
    assert root.attributes["gen_ai.agent.name"] == "caller"
    assert root.attributes["agentfleet.task.id"] == task_id
    assert root.attributes["agentfleet.task.state"] == "completed"
    assert root.attributes["gen_ai.usage.output_tokens"] > 0
    assert {"scheduled", "first_event"} <= set(root.events)
    assert callee.attributes["gen_ai.agent.name"] == "callee"
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "callee"
    assert tool.attributes["gen_ai.tool.call.id"]
    for c in chats:
        assert c.attributes["gen_ai.operation.name"] == "chat"
        assert c.attributes["gen_ai.provider.name"] == "agentfleet"
        assert c.attributes["gen_ai.usage.input_tokens"] > 0
        assert c.attributes["gen_ai.usage.output_tokens"] > 0
        assert c.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    # The two workers exported their own spans.
    workers = {s.service for s in spans}
    assert workers == {"fleet-head", "fleet-worker"}


def test_a_traceparent_header_becomes_the_tasks_parent(cluster: Fleet, receiver: Receiver) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    answer = chat(cluster, call("callee", "traced by the client"), headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert answer["choices"][0]["message"]["content"] == "traced by the client", answer
    spans = receiver.trace(trace_id, 7)
    head = [s for s in spans if s.service == "fleet-head"]
    assert len(head) == 1 and head[0].parent_id == parent_id, spans
    assert all(s.parent_id for s in spans), "no span of a continued trace is a root"

    # A malformed traceparent is ignored: the task starts a trace of its own.
    before = len(receiver.spans)
    chat(cluster, "echo again", headers={"traceparent": "00-not-a-trace-01"})
    deadline = time.monotonic() + 30
    while not any(s.service == "fleet-head" and not s.parent_id for s in receiver.spans[before:]):
        assert time.monotonic() < deadline, "no new root span"
        time.sleep(0.05)


def test_an_embedded_cluster_in_python_traces_its_tasks(receiver: Receiver) -> None:
    """`af.init(otlp_endpoint=...)`: the head and workers inside a Python process export its
    tasks' traces, `shutdown()` sends those still queued (the default batch delay is 5 s,
    far longer than this script lives). Its workers have no mesh: the head runs the callee
    as a sub-task, whose span goes under the caller's `execute_tool` span all the same."""
    script = (
        "import sys, agentfleet as af\n"
        "fleet = af.init(workers=1, otlp_endpoint=sys.argv[1])\n"
        "fleet.agent('callee', 'builtin:echo')\n"
        "caller = fleet.agent('caller', 'builtin:echo', tools=['callee'])\n"
        "task = caller.submit(sys.argv[2])\n"
        "assert task.result(timeout=30) == 'traced from python', task.result()\n"
        "print(task.id, flush=True)\n"
        "fleet.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    argv = [sys.executable, "-c", script, receiver.url, call("callee", "traced from python")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    trace_id = receiver.traces_of(done.stdout.strip(), timeout=5)
    # head: caller, callee; worker: caller's run, 2 chats, execute_tool, callee's run, chat.
    spans = receiver.trace(trace_id, 8, timeout=5)
    assert {s.service for s in spans} == {"agentfleet"}
    assert len([s for s in spans if not s.parent_id]) == 1, spans
    tool = [s for s in spans if s.name == "execute_tool callee"]
    # The head's span of the sub-task (the one with the head's moments as events).
    sub_task = [s for s in spans if s.name == "invoke_agent callee" and "scheduled" in s.events]
    assert len(tool) == 1 and len(sub_task) == 1, spans
    assert sub_task[0].parent_id == tool[0].span_id, "the relayed sub-task goes under the caller's execute_tool span"
