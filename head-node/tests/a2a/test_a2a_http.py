"""HTTP-level tests: the HTTP+JSON binding and every A2A error code, and the server keeps serving."""

import email.utils
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import Cluster

V1 = {"A2A-Version": "1.0"}


def rpc(cluster: Cluster, method: str, params: object, headers: dict[str, str] = V1, agent: str = "echo") -> dict:
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}
    response = httpx.post(f"{cluster.url}/a2a/{agent}", json=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def message(text: str = "hi") -> dict:
    return {"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": text}]}}


def error_code(reply: dict) -> int:
    assert "error" in reply, reply
    assert reply["error"]["data"][0]["domain"] == "a2a-protocol.org"
    return reply["error"]["code"]


def test_http_json_binding(cluster: Cluster) -> None:
    base = f"{cluster.url}/a2a/echo"
    sent = httpx.post(base + "/message:send", json=message("over rest"), timeout=10).json()
    task = sent["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED"
    assert task["artifacts"][0]["parts"][0]["text"] == "over rest"
    got = httpx.get(f"{base}/tasks/{task['id']}?historyLength=1").json()
    assert got["id"] == task["id"] and len(got["history"]) == 1
    listed = httpx.get(f"{base}/tasks?pageSize=1&status=TASK_STATE_COMPLETED").json()
    assert len(listed["tasks"]) == 1 and listed["totalSize"] >= 1 and listed["pageSize"] == 1
    with httpx.stream("POST", base + "/message:stream", json=message("a b"), timeout=10) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    assert '"task"' in lines[0] and "TASK_STATE_COMPLETED" in lines[-1]
    missing = httpx.get(f"{base}/tasks/nope")
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"
    done = httpx.post(f"{base}/tasks/{task['id']}:cancel")
    assert done.status_code == 400 and done.json()["error"]["details"][0]["reason"] == "TASK_NOT_CANCELABLE"
    for method in ("GET", "POST"):
        sub = httpx.request(method, f"{base}/tasks/{task['id']}:subscribe")
        assert sub.status_code == 400 and sub.json()["error"]["details"][0]["reason"] == "UNSUPPORTED_OPERATION"


def test_every_error_code_and_the_server_keeps_serving(cluster: Cluster) -> None:
    url = f"{cluster.url}/a2a/echo"
    as_json = {**V1, "Content-Type": "application/json"}
    garbage = httpx.post(url, content=b"{not json", headers=as_json).json()
    assert error_code(garbage) == -32700 and garbage["id"] is None
    # A body not declared JSON (a web page's text/plain post, or none at all) is refused.
    for headers in (V1, {**V1, "Content-Type": "text/plain"}):
        untyped = httpx.post(url, content=b'{"jsonrpc": "2.0", "id": 1, "method": "GetTask"}', headers=headers)
        assert untyped.status_code == 415 and error_code(untyped.json()) == -32005, untyped.text
    wrong_version = httpx.post(url, json={"jsonrpc": "1.0", "id": 1, "method": "GetTask"}, headers=V1).json()
    assert error_code(wrong_version) == -32600
    assert error_code(rpc(cluster, "NoSuchMethod", {})) == -32601
    assert error_code(rpc(cluster, "message/send", message(), headers=V1)) == -32601  # a 0.3 name in 1.0
    assert error_code(rpc(cluster, "SendMessage", {"message": {"parts": "x"}})) == -32602
    assert error_code(rpc(cluster, "GetTask", {})) == -32602
    assert error_code(rpc(cluster, "GetTask", {"id": "nope"})) == -32001
    assert error_code(rpc(cluster, "tasks/get", {"id": "nope"}, headers={})) == -32001  # 0.3: no header
    done = rpc(cluster, "SendMessage", message())["result"]["task"]
    assert error_code(rpc(cluster, "CancelTask", {"id": done["id"]})) == -32002
    bad_hook = {"taskId": done["id"], "url": "ftp://nowhere"}
    assert error_code(rpc(cluster, "CreateTaskPushNotificationConfig", bad_hook)) == -32602
    assert error_code(rpc(cluster, "SubscribeToTask", {"id": done["id"]})) == -32004
    file_part = {"message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"raw": "AAAA", "mediaType": "image/png"}]}}
    assert error_code(rpc(cluster, "SendMessage", file_part)) == -32005
    assert error_code(rpc(cluster, "GetExtendedAgentCard", {})) == -32007
    assert error_code(rpc(cluster, "GetTask", {"id": "x"}, headers={"A2A-Version": "9.9"})) == -32009
    for version in ("9.9", "0.3"):  # the HTTP+JSON binding speaks 1.0 only
        rest = httpx.post(f"{url}/message:send", json=message(), headers={"A2A-Version": version}, timeout=10)
        assert rest.status_code == 400 and "VERSION_NOT_SUPPORTED" in rest.text, rest.text
    no_id = {"message": {"role": "ROLE_USER", "parts": [{"text": "hi"}]}}
    assert error_code(rpc(cluster, "SendMessage", no_id)) == -32602
    no_id_03 = {"message": {"kind": "message", "role": "user", "parts": [{"kind": "text", "text": "hi"}]}}
    assert error_code(rpc(cluster, "message/send", no_id_03, headers={})) == -32602
    oversized = httpx.post(url, content=b"x" * (2 << 20), headers=as_json, timeout=10)
    assert oversized.status_code == 200 and error_code(oversized.json()) == -32600
    nobody = rpc(cluster, "GetTask", {"id": "x"}, agent="nobody")["error"]
    assert nobody["code"] == -32051 and nobody["data"][0] == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "AGENT_NOT_FOUND",
        "domain": "agentfleet",
    }
    unknown = httpx.post(f"{cluster.url}/a2a/nobody/message:send", json=message(), timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["status"] == "NOT_FOUND"
    # Still serving.
    assert rpc(cluster, "SendMessage", message("still here"))["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"


def test_clients_built_the_usual_ways_get_answers(cluster: Cluster) -> None:
    # httpx.Client(base_url=".../a2a/echo/") posts to the trailing slash.
    with httpx.Client(base_url=f"{cluster.url}/a2a/echo/", headers=V1, timeout=10) as client:
        body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": message("slash")}
        reply = client.post("", json=body)
        assert reply.status_code == 200, reply.text
        task = reply.json()["result"]["task"]
        assert task["artifacts"][0]["parts"][0]["text"] == "slash"
    # ProtoJSON parsers accept the .proto field names: so does the server, over both bindings.
    proto_names = {
        "message": {"message_id": "m2", "role": "ROLE_USER", "parts": [{"text": "snake"}]},
        "configuration": {"history_length": 0},
    }
    sent = rpc(cluster, "SendMessage", proto_names)["result"]["task"]
    assert sent["artifacts"][0]["parts"][0]["text"] == "snake" and sent["history"] == []
    hook = {"task_id": sent["id"], "url": "http://127.0.0.1:9/hook"}
    created = rpc(cluster, "CreateTaskPushNotificationConfig", hook)
    assert created.get("result", {}).get("taskId") == sent["id"], created
    rest = httpx.post(f"{cluster.url}/a2a/echo/message:send", json=proto_names, timeout=10)
    assert rest.status_code == 200 and rest.json()["task"]["artifacts"][0]["parts"][0]["text"] == "snake"


def test_an_api_key_is_required_when_configured(keyed_cluster: Cluster) -> None:
    url = f"{keyed_cluster.url}/a2a/echo"
    card = httpx.get(url + "/.well-known/agent-card.json").json()
    assert "apiKey" in card["securitySchemes"]
    body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": message()}
    assert httpx.post(url, json=body, headers=V1).status_code == 401
    assert httpx.post(url, json=body, headers={**V1, "Authorization": "Bearer wrong"}).status_code == 401
    ok = httpx.post(url, json=body, headers={**V1, "Authorization": "Bearer k3y"}, timeout=10)
    assert ok.status_code == 200 and ok.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
    assert httpx.post(url, json=body, headers={**V1, "X-API-Key": "k3y"}, timeout=10).status_code == 200
    assert card["capabilities"]["extendedAgentCard"] is True
    extended = {"jsonrpc": "2.0", "id": 2, "method": "GetExtendedAgentCard", "params": {}}
    reply = httpx.post(url, json=extended, headers={**V1, "Authorization": "Bearer k3y"}).json()
    assert "model builtin:echo" in reply["result"]["skills"][0]["description"]
    assert httpx.get(url + "/extendedAgentCard").status_code == 401


@pytest.mark.parametrize("agent", ["echo", "slow"])
def test_list_tasks_pages_through_everything_once(cluster: Cluster, agent: str) -> None:
    for i in range(3):
        rpc(cluster, "SendMessage", {**message(f"list {i}"), "configuration": {"returnImmediately": agent == "slow"}}, agent=agent)
    seen, token = [], ""
    while True:
        page = rpc(cluster, "ListTasks", {"pageSize": 2, "pageToken": token}, agent=agent)["result"]
        seen += [t["id"] for t in page["tasks"]]
        token = page["nextPageToken"]
        if not token:
            break
    assert len(seen) == len(set(seen)) == page["totalSize"] >= 3


class Webhook:
    """A local HTTP server (HTTPS with `tls`: CA, certificate, key) that records POSTs; the
    first `failures` answer 503."""

    def __init__(self, failures: int, tls: "tuple[Path, Path, Path] | None" = None) -> None:
        self.received: list[tuple[dict[str, str], dict]] = []
        self.failed = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if hook.failed < failures:
                    hook.failed += 1
                    self.send_response(503)
                else:
                    hook.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[1]), str(tls[2]))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://localhost:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def await_final_task(hook: Webhook) -> dict:
    deadline = time.monotonic() + 15
    while not any("task" in body for _, body in hook.received):
        assert time.monotonic() < deadline, hook.received
        time.sleep(0.05)
    return [body for _, body in hook.received][-1]["task"]


def test_push_notifications_reach_the_webhook_with_retries(cluster: Cluster) -> None:
    hook = Webhook(failures=2)
    try:
        push = {"url": hook.url, "token": "tok", "authentication": {"scheme": "Bearer", "credentials": "cred"}}
        params = {**message("a b c d e"), "configuration": {"returnImmediately": True, "taskPushNotificationConfig": push}}
        task = rpc(cluster, "SendMessage", params, agent="slow")["result"]["task"]
        final = await_final_task(hook)
        assert hook.failed == 2, "the failed deliveries were not retried"
        for headers, _ in hook.received:
            assert headers["x-a2a-notification-token"] == "tok" and headers["authorization"] == "Bearer cred"
        bodies = [body for _, body in hook.received]
        states = [b["statusUpdate"]["status"]["state"] for b in bodies if "statusUpdate" in b]
        assert "TASK_STATE_WORKING" in states
        assert final["id"] == task["id"] and final["status"]["state"] == "TASK_STATE_COMPLETED"
        assert final["artifacts"][0]["parts"][0]["text"] == "a b c d e"
    finally:
        hook.close()


def test_push_notifications_reach_an_https_webhook(cluster: Cluster, tls: tuple[Path, Path, Path]) -> None:
    hook = Webhook(failures=0, tls=tls)
    try:
        assert hook.url.startswith("https://")
        push = {"url": hook.url, "token": "secret-over-tls"}
        params = {**message("over tls"), "configuration": {"returnImmediately": True, "taskPushNotificationConfig": push}}
        task = rpc(cluster, "SendMessage", params)["result"]["task"]
        final = await_final_task(hook)
        assert final["id"] == task["id"] and final["artifacts"][0]["parts"][0]["text"] == "over tls"
        assert all(headers["x-a2a-notification-token"] == "secret-over-tls" for headers, _ in hook.received)
    finally:
        hook.close()


def test_private_webhook_targets_are_refused_unless_the_operator_allows_them(keyed_cluster: Cluster) -> None:
    auth = {**V1, "Authorization": "Bearer k3y"}
    task = rpc(keyed_cluster, "SendMessage", message("hooks"), headers=auth)["result"]["task"]["id"]
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "https://localhost/hook",
        "http://[::1]:9/hook",
        "http://10.0.0.1/hook",
        "http://[::ffff:127.0.0.1]/hook",
    ]:
        reply = rpc(keyed_cluster, "CreateTaskPushNotificationConfig", {"taskId": task, "url": url}, headers=auth)
        assert error_code(reply) == -32602, (url, reply)
        assert "--allow-private-webhooks" in reply["error"]["message"], reply
        push = {"url": url}
        params = {**message(), "configuration": {"taskPushNotificationConfig": push}}
        assert error_code(rpc(keyed_cluster, "SendMessage", params, headers=auth)) == -32602
    listed = rpc(keyed_cluster, "ListTaskPushNotificationConfigs", {"taskId": task}, headers=auth)
    assert listed["result"]["configs"] == []


def test_push_configs_survive_a_head_restart_and_deliver_the_end() -> None:
    """The head is SIGKILLed while a task with a webhook runs: the restarted head has the
    config and notifies the webhook when the task ends."""
    c = Cluster("--allow-private-webhooks")
    hook = Webhook(failures=0)
    try:
        push = {"id": "kept", "url": hook.url, "token": "tok"}
        params = {**message(" ".join(["w"] * 60)), "configuration": {"returnImmediately": True, "taskPushNotificationConfig": push}}
        task = rpc(c, "SendMessage", params, agent="slow")["result"]["task"]["id"]
        deadline = time.monotonic() + 15
        while not hook.received:  # Delivering: the config is in force (and stored).
            assert time.monotonic() < deadline, "no notification before the restart"
            time.sleep(0.02)
        c.restart_head()
        listed = rpc(c, "ListTaskPushNotificationConfigs", {"taskId": task}, agent="slow")["result"]["configs"]
        assert [(p["id"], p["url"], p["token"]) for p in listed] == [("kept", hook.url, "tok")]
        final = await_final_task(hook)
        assert final["id"] == task and final["status"]["state"] == "TASK_STATE_COMPLETED", final
    finally:
        hook.close()
        c.stop()


def gauge(cluster: Cluster, name: str) -> float:
    for line in httpx.get(f"{cluster.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in /metrics")


def test_push_configs_go_with_their_task_when_retention_evicts_it() -> None:
    """With two finished tasks retained, six tasks with webhooks leave two tasks' configs:
    the others went with their tasks."""
    c = Cluster("--allow-private-webhooks", "--max-retained-tasks", "2")
    hook = Webhook(failures=0)
    try:
        ids = []
        for i in range(6):
            params = {**message(f"task {i}"), "configuration": {"taskPushNotificationConfig": {"url": hook.url}}}
            task = rpc(c, "SendMessage", params)["result"]["task"]
            assert task["status"]["state"] == "TASK_STATE_COMPLETED", task
            ids.append(task["id"])
        assert gauge(c, "agentfleet:a2a_push_config_tasks") == 2
        for kept in ids[-2:]:
            assert rpc(c, "ListTaskPushNotificationConfigs", {"taskId": kept})["result"]["configs"]
        assert error_code(rpc(c, "ListTaskPushNotificationConfigs", {"taskId": ids[0]})) == -32001
    finally:
        hook.close()
        c.stop()


def test_push_config_methods_in_both_dialects_and_over_rest(cluster: Cluster) -> None:
    task = rpc(cluster, "SendMessage", message("configs"))["result"]["task"]["id"]
    hook = "http://127.0.0.1:9/hook"
    created = rpc(cluster, "CreateTaskPushNotificationConfig", {"taskId": task, "id": "c1", "url": hook})["result"]
    assert created == {"id": "c1", "taskId": task, "url": hook, "token": ""}
    assert rpc(cluster, "GetTaskPushNotificationConfig", {"taskId": task, "id": "c1"})["result"]["url"] == hook
    old = {"taskId": task, "pushNotificationConfig": {"id": "c2", "url": hook, "token": "t"}}
    assert rpc(cluster, "tasks/pushNotificationConfig/set", old, headers={})["result"]["pushNotificationConfig"]["id"] == "c2"
    listed = rpc(cluster, "ListTaskPushNotificationConfigs", {"taskId": task})["result"]["configs"]
    assert [c["id"] for c in listed] == ["c1", "c2"]
    got = rpc(cluster, "tasks/pushNotificationConfig/get", {"id": task, "pushNotificationConfigId": "c2"}, headers={})
    assert got["result"]["pushNotificationConfig"]["token"] == "t"
    assert len(rpc(cluster, "tasks/pushNotificationConfig/list", {"id": task}, headers={})["result"]) == 2
    rpc(cluster, "DeleteTaskPushNotificationConfig", {"taskId": task, "id": "c1"})
    # Deleting is idempotent: again, or a config that never was, is no error.
    assert rpc(cluster, "DeleteTaskPushNotificationConfig", {"taskId": task, "id": "c1"})["result"] == {}
    assert rpc(cluster, "DeleteTaskPushNotificationConfig", {"taskId": task, "id": "never"})["result"] == {}
    rpc(cluster, "tasks/pushNotificationConfig/delete", {"id": task, "pushNotificationConfigId": "c2"}, headers={})
    assert rpc(cluster, "ListTaskPushNotificationConfigs", {"taskId": task})["result"]["configs"] == []
    assert error_code(rpc(cluster, "GetTaskPushNotificationConfig", {"taskId": task, "id": "c1"})) == -32602
    assert error_code(rpc(cluster, "CreateTaskPushNotificationConfig", {"taskId": "nope", "url": hook})) == -32001

    base = f"{cluster.url}/a2a/echo/tasks/{task}/pushNotificationConfigs"
    assert httpx.post(base, json={"id": "r1", "url": hook}).json()["id"] == "r1"
    assert [c["id"] for c in httpx.get(base).json()["configs"]] == ["r1"]
    assert httpx.get(base + "/r1").json()["url"] == hook
    assert httpx.delete(base + "/r1").status_code == 200
    assert httpx.delete(base + "/r1").status_code == 200, "deleting is idempotent"
    assert httpx.get(base + "/r1").status_code == 400


def test_cards_carry_an_etag_and_answer_304_when_unchanged(cluster: Cluster) -> None:
    modified = {}
    for path in ("/a2a/echo/.well-known/agent-card.json", "/a2a/slow/.well-known/agent-card.json", "/.well-known/agent-card.json"):
        first = httpx.get(cluster.url + path)
        assert first.status_code == 200 and first.json()["name"]
        etag = first.headers["etag"]
        assert etag.startswith('"') and "max-age=" in first.headers["cache-control"]
        # Last-Modified: when the agent was registered (after the head started, not later than now).
        modified[path] = email.utils.parsedate_to_datetime(first.headers["last-modified"])
        assert cluster.started_at - 1 <= modified[path].timestamp() <= time.time() + 1, (path, first.headers)
        again = httpx.get(cluster.url + path, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        other = httpx.get(cluster.url + path, headers={"If-None-Match": '"0000"'})
        assert other.status_code == 200 and other.json() == first.json()
    # The cluster's card changed when its newest agent did.
    agents = [modified[p] for p in modified if p.startswith("/a2a/")]
    assert modified["/.well-known/agent-card.json"] == max(agents)
    # The card names the host the client used, so another host is another card.
    elsewhere = httpx.get(cluster.url + "/a2a/echo/.well-known/agent-card.json", headers={"Host": "example.com:7070"})
    assert elsewhere.headers["etag"] != httpx.get(cluster.url + "/a2a/echo/.well-known/agent-card.json").headers["etag"]
    # Behind a TLS-terminating proxy the card names https:// URLs.
    proxied = httpx.get(cluster.url + "/a2a/echo/.well-known/agent-card.json", headers={"Host": "a.example", "X-Forwarded-Proto": "https"})
    assert proxied.json()["url"] == "https://a.example/a2a/echo" and "X-Forwarded-Proto" in proxied.headers["vary"]
