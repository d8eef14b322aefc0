"""The head's Prometheus metrics (`GET /metrics`) against a head and a worker run as
processes: the text parses with the Prometheus client's own parser, the task counters match
exactly what the test did (per agent and final state), and the per-model figures the
worker's heartbeats carry (tokens, time to first token, time between tokens) add up."""

import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import agentfleet as af

from conftest import Node, cancel_once_streaming

TOKEN = "s3cret"
MODEL = "random-weights.gguf"


class Scrape:
    """One `/metrics` answer: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series of `name` whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models = tmp_path_factory.mktemp("models")
    af.write_random_weight_model(models / MODEL)
    head = Node("head", "--listen", "127.0.0.1:0", "--print-address", "--token", TOKEN, "--join-token", "j0in")
    assert head.proc.stdout is not None
    line = head.proc.stdout.readline()
    assert line.startswith("listening on "), line
    address = "http://" + line.removeprefix("listening on ").strip()
    worker = Node("worker", "--head", address, "--join-token", "j0in", "--models-dir", str(models))
    yield address
    worker.stop()
    head.stop()


def scrape(address: str) -> Scrape:
    answer = httpx.get(address + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(answer.text)


def test_metrics_need_the_client_credential(head: str) -> None:
    assert httpx.get(head + "/metrics", timeout=10).status_code == 401
    wrong = httpx.get(head + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and "credential" in wrong.text
    # The API key header is accepted as at the other doors.
    assert httpx.get(head + "/metrics", headers={"X-API-Key": TOKEN}, timeout=10).status_code == 200


def test_counters_match_what_ran(head: str) -> None:
    fleet = af.init(head, token=TOKEN)
    try:
        echo = fleet.agent("echo", model="builtin:echo")
        slow = fleet.agent("slow", model="builtin:echo", model_options={"token_delay_ms": "50"})
        chat = fleet.agent("chat", model=MODEL, sampling=af.Sampling(max_tokens=12, temperature=0.0))
        assert echo.map([f"hello {i}" for i in range(5)]) == [f"hello {i}" for i in range(5)]
        answer = chat.submit("Say something.").result(timeout=120)
        assert isinstance(answer, str)
        # A chat model asked to embed: the worker fails the task.
        with pytest.raises(af.FleetError, match="does not embed"):
            chat.embed(["x"])
        # Canceled while it streams.
        cancel_once_streaming(slow.submit(" ".join(["word"] * 200)))

        m = scrape(head)
        # Task series carry the tenant whose tasks they count (the admin token's: the default).
        assert m.types["agentfleet:tasks_submitted"] == "counter"
        assert m.get("agentfleet:tasks_submitted_total", tenant="default", agent="echo") == 5
        assert m.get("agentfleet:tasks_submitted_total", tenant="default", agent="chat") == 2
        assert m.get("agentfleet:tasks_submitted_total", tenant="default", agent="slow") == 1
        finished = "agentfleet:tasks_finished_total"
        assert m.get(finished, tenant="default", agent="echo", state="completed") == 5
        assert m.get(finished, tenant="default", agent="chat", state="completed") == 1
        assert m.get(finished, tenant="default", agent="chat", state="failed") == 1
        assert m.get(finished, tenant="default", agent="slow", state="canceled") == 1
        assert m.total(finished) == 8
        # Every end observed once in the duration histogram, and each bucket series is
        # cumulative up to +Inf.
        assert m.get("agentfleet:task_duration_seconds_count", tenant="default", agent="echo", state="completed") == 5
        bucket = "agentfleet:task_duration_seconds_bucket"
        assert m.get(bucket, tenant="default", agent="echo", state="completed", le="+Inf") == 5
        assert m.get("agentfleet:task_first_event_seconds_count", tenant="default", agent="echo") == 5
        assert m.total("agentfleet:task_duration_seconds_count") == 8
        assert m.get("agentfleet:tasks_running", agent="echo") == 0
        assert m.get("agentfleet:tasks_queued", agent="echo") == 0
        assert m.get("agentfleet:workers", state="ready") == 1
        workers = fleet.status()["workers"]
        assert isinstance(workers, list) and len(workers) == 1
        worker_id = workers[0]["id"]
        assert m.get("agentfleet:worker_slots", worker=worker_id) >= 1
        assert m.get("agentfleet:worker_slots_used", worker=worker_id) == 0

        # The engine's figures arrive with the worker's heartbeats: wait for one sent after the
        # chat ended (no sequence running, tokens counted).
        deadline = time.monotonic() + 10
        labels = {"worker": worker_id, "model": MODEL}
        while (
            m.get("agentfleet:generation_tokens_total", **labels) == 0
            or m.get("agentfleet:num_requests_running", **labels) != 0
        ):
            assert time.monotonic() < deadline, "no generation figures from the worker's heartbeats"
            time.sleep(0.05)
            m = scrape(head)
        generated = m.get("agentfleet:generation_tokens_total", **labels)
        assert 1 <= generated <= 12
        # One sequence reached its first token; each later token is one inter-token gap.
        assert m.get("agentfleet:time_to_first_token_seconds_count", **labels) == 1
        assert m.get("agentfleet:time_to_first_token_seconds_bucket", le="+Inf", **labels) == 1
        assert m.get("agentfleet:inter_token_latency_seconds_count", **labels) == generated - 1
        assert m.get("agentfleet:time_to_first_token_seconds_sum", **labels) > 0
        assert m.get("agentfleet:prompt_tokens_total", **labels) > 0
        assert m.get("agentfleet:kv_cache_capacity_bytes", **labels) > 0
        assert m.get("agentfleet:num_requests_waiting", **labels) == 0
    finally:
        fleet.shutdown()
