"""The inspector in a real browser: Debian's chromium driven by Selenium (through the system
chromedriver; nothing is downloaded) against a real head with a client token and two
workers (separate processes on 127.0.0.1). Logging in, both workers on the cluster page, 20
slow echo tasks appearing and streaming, a task canceled from its page, a tool call followed
into its sub-task, a conversation's turns; the timeline, a call graph and the live charts of
a run with sub-tasks on both workers; workers and tasks searched, grouped and paged on the
head; the credential checks at the HTTP level. Screenshots of every page go to
$FLEET_TEST_ARTIFACTS/inspector (default: the system temp folder)."""

import base64
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fleetproc import Fleet, clean_env, wait_until
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

CONFIG = """
[[agent]]
name = "slow"
model = "builtin:echo"
description = "repeats what you say, a word every 250 ms"
model_options = { token_delay_ms = 250 }

[[agent]]
name = "caller"
model = "builtin:echo"
tools = ["callee"]

[[agent]]
name = "callee"
model = "builtin:echo"
model_options = { token_delay_ms = 20 }

[[agent]]
name = "planner"
model = "builtin:echo"
tools = ["researcher"]
labels = { host = "one" }
model_options = { token_delay_ms = 20 }

[[agent]]
name = "researcher"
model = "builtin:echo"
labels = { host = "two" }
model_options = { token_delay_ms = 100 }
"""

TOKEN = secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHOTS = Path(os.environ.get("FLEET_TEST_ARTIFACTS") or tempfile.gettempdir()) / "inspector"


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    # Off the mesh, a tool call is a sub-task the head runs, which the page can follow (on
    # the mesh the callee runs beside its caller without a task on the head).
    f = Fleet(CONFIG, "--token", TOKEN, workers=[["--name", "one", "--no-mesh", "--label", "host=one"], ["--name", "two", "--no-mesh", "--label", "host=two"]], env=clean_env())
    yield f
    f.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("FLEET_CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch a driver
    driver = webdriver.Chrome(service=Service(os.environ.get("FLEET_CHROMEDRIVER", "/usr/bin/chromedriver")), options=options)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def shot(browser: webdriver.Chrome, name: str) -> None:
    browser.save_screenshot(str(SHOTS / f"{name}.png"))


def wait(browser: webdriver.Chrome, condition, timeout: float = 30):  # type: ignore[no-untyped-def]
    """Waits for `condition()`; on a timeout, says what the page showed."""
    try:
        # Live pages re-render: an element found a moment ago may be gone (try again).
        waiting = WebDriverWait(browser, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException])
        return waiting.until(lambda d: condition())
    except TimeoutException:
        shown = {css: text(browser, css) for css in ("#live", "#task-state", "#task-alert", "#tasks-total")}
        raise AssertionError(f"timed out at {browser.current_url}; the page showed {shown}; console: {console_errors(browser)}") from None


def text(browser: webdriver.Chrome, css: str) -> str:
    try:
        found = browser.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else ""
    except StaleElementReferenceException:
        return ""  # re-rendered between finding and reading


def attribute(browser: webdriver.Chrome, css: str, name: str) -> "str | None":
    """`name` of the first element matching `css` (None while there is none)."""
    try:
        found = browser.find_elements(By.CSS_SELECTOR, css)
        return found[0].get_attribute(name) if found else None
    except StaleElementReferenceException:
        return None


def click(browser: webdriver.Chrome, css: str) -> bool:
    """Clicks the first element matching `css`; False if there is none yet or it was
    re-rendered meanwhile (for `wait`)."""
    try:
        found = browser.find_elements(By.CSS_SELECTOR, css)
        if found:
            found[0].click()
        return bool(found)
    except StaleElementReferenceException:
        return False


def send(fleet: Fleet, agent: str, words: str) -> str:
    """Submits over A2A without waiting for the answer; returns the task id."""
    message = {"messageId": secrets.token_hex(8), "role": "ROLE_USER", "parts": [{"text": words}]}
    body = {"message": message, "configuration": {"returnImmediately": True}}
    sent = httpx.post(f"{fleet.url}/a2a/{agent}/message:send", json=body, headers=AUTH, timeout=30)
    assert sent.status_code == 200, sent.text
    return str(sent.json()["task"]["id"])


def converse(fleet: Fleet, agent: str, words: str, context: str) -> None:
    """One turn of a conversation over A2A, answered before this returns."""
    message = {"messageId": secrets.token_hex(8), "role": "ROLE_USER", "parts": [{"text": words}], "contextId": context}
    sent = httpx.post(f"{fleet.url}/a2a/{agent}/message:send", json={"message": message}, headers=AUTH, timeout=30)
    assert sent.status_code == 200 and sent.json()["task"]["status"]["state"] == "TASK_STATE_COMPLETED", sent.text


def publish(fleet: Fleet, topic: str, body: str) -> int:
    """Publishes with the Python client (gRPC); the message's offset."""
    import agentfleet as af

    with af.init(fleet.url, token=TOKEN) as client:
        return client.publish(topic, body)


def api(fleet: Fleet, path: str) -> dict:  # type: ignore[type-arg]
    got = httpx.get(f"{fleet.url}/ui/api/{path}", headers=AUTH, timeout=10)
    assert got.status_code == 200, got.text
    return got.json()  # type: ignore[no-any-return]


def console_errors(browser: webdriver.Chrome) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_without_a_credential_nothing_is_shown(fleet: Fleet) -> None:
    with httpx.Client(base_url=fleet.url, follow_redirects=False, timeout=10) as http:
        assert http.get("/").headers["location"] == "/ui/"
        page = http.get("/ui/")
        assert page.status_code == 303 and page.headers["location"] == "/ui/login"
        for path in ("/ui/api/cluster", "/ui/api/tasks", "/ui/api/tasks/live", "/ui/api/agents/live", "/ui/api/tasks/x/live", "/ui/api/topics/x/live"):
            refused = http.get(path)
            assert refused.status_code == 401, (path, refused.text)
            assert "error" in refused.json()
        # The credential is checked before the CSRF header.
        assert http.post("/ui/api/tasks/x/cancel", headers={"X-Fleet-UI": "1"}).status_code == 401
        wrong = http.post("/ui/login", data={"token": "not-" + TOKEN})
        assert wrong.headers["location"] == "/ui/login?failed=1" and "set-cookie" not in wrong.headers
        assert http.get("/ui/api/cluster", headers={"Cookie": "fleet_ui=bm90LWl0"}).status_code == 401

        right = http.post("/ui/login", data={"token": TOKEN})
        assert right.headers["location"] == "/ui/"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
        session = cookie.split(";")[0].split("=", 1)[1]
        # The cookie is a session's random id with an end, never the token.
        assert TOKEN not in session and base64.urlsafe_b64encode(TOKEN.encode()).decode().rstrip("=") not in session
        assert "Max-Age=43200" in cookie, cookie
        # Logging out ends the session: its id admits nobody after.
        other = http.post("/ui/login", data={"token": TOKEN}).headers["set-cookie"].split(";")[0].split("=", 1)[1]
        assert http.get("/ui/api/cluster", headers={"Cookie": f"fleet_ui={other}"}).status_code == 200
        out = http.post("/ui/logout", headers={"Cookie": f"fleet_ui={other}"})
        assert "Max-Age=0" in out.headers["set-cookie"]
        assert http.get("/ui/api/cluster", headers={"Cookie": f"fleet_ui={other}"}).status_code == 401
        http.cookies.set("fleet_ui", session)
        assert http.get("/ui/").status_code == 200
        csp = http.get("/ui/").headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp, csp
        view = http.get("/ui/api/cluster").json()
        assert {w["id"] for w in view["workers"]} == {"one", "two"}
        # A POST without the page's header is refused (a form on another site cannot add it).
        task = send(fleet, "slow", "a few words")
        assert http.post(f"/ui/api/tasks/{task}/cancel").status_code == 403
        assert http.post(f"/ui/api/tasks/{task}/cancel", headers={"X-Fleet-UI": "1"}).json()["id"] == task
        assert http.get("/ui/api/tasks/nope").status_code == 404
        assert http.get("/ui/api/tasks?state=sleeping").status_code == 400
        # A topic's log streams without any worker on the mesh: its latest messages, then
        # live ones; a bad name is refused with a status (an EventSource would retry a
        # stream that ends forever).
        published = publish(fleet, "news", "hello log")
        with http.stream("GET", "/ui/api/topics/news/live") as topic:
            assert topic.status_code == 200 and topic.headers["content-type"].startswith("text/event-stream")
            seen = ""
            for chunk in topic.iter_text():
                seen += chunk
                if "hello log" in seen:
                    break
            assert f'"offset":{published}' in seen.replace(" ", ""), seen
        bad = http.get("/ui/api/topics/no%20spaces/live")
        assert bad.status_code == 400 and "topic" in bad.json()["error"], bad.text


def test_the_inspector_in_a_browser(fleet: Fleet, browser: webdriver.Chrome) -> None:
    # Logging in through the page.
    browser.get(fleet.url + "/")
    wait(browser, lambda: browser.current_url.endswith("/ui/login"))
    shot(browser, "login")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#workers tr[data-worker]"))

    # The cluster page shows both workers.
    wait(browser, lambda: {r.get_attribute("data-worker") for r in browser.find_elements(By.CSS_SELECTOR, "#workers tr[data-worker]")} == {"one", "two"})
    shot(browser, "cluster")

    # 20 slow tasks appear on the tasks page, and stream text.
    # 15 s of streaming each: the first two are still streaming when their pages open,
    # however slow the machine (about 3 s in on an idle one).
    words = " ".join(f"word{i}" for i in range(60))
    tasks = [send(fleet, "slow", f"task {n} {words}") for n in range(20)]
    browser.get(fleet.url + "/ui/#/tasks?agent=slow")
    wait(browser, lambda: len({r.get_attribute("data-task") for r in browser.find_elements(By.CSS_SELECTOR, "#tasks tr[data-task]")} & set(tasks)) == 20)
    assert Select(browser.find_element(By.ID, "filter-agent")).first_selected_option.get_attribute("value") == "slow"
    shot(browser, "tasks")

    # A task's page: its text streams in.
    browser.get(f"{fleet.url}/ui/#/tasks/{tasks[0]}")
    wait(browser, lambda: "word3" in text(browser, "#task-output"))
    before = text(browser, "#task-output")
    wait(browser, lambda: len(text(browser, "#task-output")) > len(before) + 10)
    assert text(browser, "#task-agent") == "slow"
    assert browser.find_elements(By.CSS_SELECTOR, '#events li[data-kind="scheduled"]')
    shot(browser, "task-streaming")

    # Cancel another, running one from its page.
    victim = tasks[1]
    browser.get(f"{fleet.url}/ui/#/tasks/{victim}")
    wait(browser, lambda: text(browser, "#task-state") in ("working", "scheduled") and browser.find_elements(By.ID, "cancel"))
    wait(browser, lambda: click(browser, "#cancel"))
    wait(browser, lambda: text(browser, "#task-state") == "canceled")
    assert api(fleet, f"tasks/{victim}")["state"] == "canceled"
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, '#events li[data-kind="canceled"]'))
    shot(browser, "task-canceled")

    # The first task streams to its end, and its timings fill in.
    browser.get(f"{fleet.url}/ui/#/tasks/{tasks[0]}")
    wait(browser, lambda: text(browser, "#task-state") == "completed", timeout=60)
    assert text(browser, "#task-output").split() == f"task 0 {words}".split()
    assert "—" not in text(browser, "#timings"), text(browser, "#timings")

    # A tool call leads to its sub-task.
    call = '<tool_call>{"name": "callee", "arguments": {"input": "answer from the callee"}}</tool_call>'
    caller = send(fleet, "caller", call)
    browser.get(f"{fleet.url}/ui/#/tasks/{caller}")
    child = wait(browser, lambda: attribute(browser, "a.subtask-link[data-task]", "data-task"))
    assert api(fleet, f"tasks/{child}")["parent"]["task_id"] == caller
    wait(browser, lambda: text(browser, "#task-state") == "completed")
    shot(browser, "task-with-tool-call")
    wait(browser, lambda: click(browser, "a.subtask-link[data-task]"))
    wait(browser, lambda: browser.current_url.endswith(f"#/tasks/{child}") and text(browser, "#task-agent") == "callee")
    wait(browser, lambda: text(browser, "#task-output") == "answer from the callee")
    assert wait(browser, lambda: attribute(browser, "#task-parent", "href")).endswith(f"#/tasks/{caller}")
    shot(browser, "sub-task")

    # The agents page: where their actors live.
    agents = {a["name"]: a for a in api(fleet, "agents")["agents"]}
    assert set(agents["slow"]["actors"]) <= {"one", "two"} and agents["slow"]["actors"], agents["slow"]
    assert agents["slow"]["done"]["failed"] == 0 and agents["slow"]["done"]["canceled"] >= 1, agents["slow"]
    browser.get(fleet.url + "/ui/#/agents")
    wait(browser, lambda: {r.get_attribute("data-agent") for r in browser.find_elements(By.CSS_SELECTOR, "#agents tr[data-agent]")} >= {"slow", "caller", "callee"})
    shot(browser, "agents")

    # A conversation: the head's turns of a context, from the list to its page.
    for words in ("first turn here", "second turn"):
        converse(fleet, "callee", words, "insp-ctx")
    browser.get(fleet.url + "/ui/#/conversations")
    link = 'a.conversation-link[href="#/conversations/callee/insp-ctx"]'
    wait(browser, lambda: click(browser, link))
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#conversation-turns li.turn")) == 4)
    said = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#conversation-turns li.turn pre.body")]
    assert said == ["first turn here", "first turn here", "second turn", "second turn"], said
    # Each user turn links the task that made it.
    made = [a.get_attribute("data-task") for a in browser.find_elements(By.CSS_SELECTOR, "#conversation-turns li.turn-user a.turn-task")]
    assert len(made) == 2 and all(api(fleet, f"tasks/{t}")["context_id"] == "insp-ctx" for t in made), made
    assert [api(fleet, f"tasks/{t}")["input"] for t in made] == ["first turn here", "second turn"]
    assert text(browser, "#conversation-tasks").startswith("2 tasks made these turns"), text(browser, "#conversation-tasks")
    roles = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#conversation-turns li.turn strong")]
    assert roles == ["user", "assistant", "user", "assistant"], roles
    shot(browser, "conversation")

    # Phone-sized and dark.
    browser.set_window_size(390, 844)
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    browser.get(fleet.url + "/ui/#/cluster")
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#workers tr[data-worker]"))
    shot(browser, "cluster-phone-dark")
    browser.get(f"{fleet.url}/ui/#/tasks/{caller}")
    wait(browser, lambda: text(browser, "#task-state") == "completed")
    shot(browser, "task-phone-dark")
    browser.set_window_size(1280, 800)
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    assert console_errors(browser) == []
    # Every slow task ends (none canceled but the one).
    states = wait_until(lambda: (s := [api(fleet, f"tasks/{t}")["state"] for t in tasks]) and all(x in ("completed", "canceled") for x in s) and s, timeout=60, what="the slow tasks to end")
    assert states.count("canceled") == 1


def log_in(fleet: Fleet, browser: webdriver.Chrome) -> None:
    """Logs the browser in through the page, unless its session is still open."""
    browser.get(fleet.url + "/ui/")
    wait(browser, lambda: browser.current_url.endswith(("/ui/login", "/ui/#/cluster", "/ui/")))
    if browser.current_url.endswith("/ui/login"):
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#workers"))


def written_call(agent: str, words: str) -> str:
    return f'<tool_call>{{"name": "{agent}", "arguments": {{"input": "{words}"}}}}</tool_call>'


def read(browser: webdriver.Chrome, css: str, *names: str) -> "list[list[str]]":
    """The attributes `names` of every element matching `css`, read at one moment (the
    pictures are drawn anew as the cluster moves: elements found one by one may be gone)."""
    script = "return [...document.querySelectorAll(arguments[0])].map((e) => arguments[1].map((n) => e.getAttribute(n) || ''))"
    return browser.execute_script(script, css, list(names))  # type: ignore[no-any-return]


def found(browser: webdriver.Chrome, css: str, name: str) -> "set[str]":
    """`name` of every element matching `css`."""
    return {row[0] for row in read(browser, css, name)}


def box(browser: webdriver.Chrome, css: str) -> "dict[str, float] | None":
    """Where the first element matching `css` is on the page, in CSS pixels (None: nowhere)."""
    script = "const e = document.querySelector(arguments[0]); if (!e) return null; const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}"
    return browser.execute_script(script, css)  # type: ignore[no-any-return]


def test_the_pictures_of_a_run_with_sub_tasks_on_two_workers(fleet: Fleet, browser: webdriver.Chrome) -> None:
    """The timeline, the call graph and the live charts, drawn from a planner on worker one
    that calls a researcher twice, on worker two (the agents require each worker's label)."""
    log_in(fleet, browser)
    planner = send(fleet, "planner", f"plan {written_call('researcher', 'finding one')} {written_call('researcher', 'finding two')}")
    wait_until(lambda: api(fleet, f"tasks/{planner}")["state"] == "completed", timeout=60, what="the planner to end")
    graph = api(fleet, f"tasks/{planner}/graph")
    calls = [c for c in graph["calls"] if c["from"] == planner]
    children = {c["task"] for c in calls}
    assert len(calls) == 2 and all(c["kind"] == "task" and c["name"] == "researcher" and c["result_us"] >= c["at_us"] > 0 for c in calls), graph
    assert {t["id"]: t["worker"] for t in graph["tasks"]} == {planner: "one", **{c: "two" for c in children}}, graph
    # A sub-task's graph is its family's, from the planner down.
    assert api(fleet, f"tasks/{sorted(children)[0]}/graph")["root"] == planner

    # The timeline: each task a bar on its worker's row; a click opens the task.
    browser.get(fleet.url + "/ui/#/timeline?window=300&by=worker")
    wait(browser, lambda: found(browser, "#timeline rect.bar", "data-task") >= {planner, *children})
    bars = {task: (worker, state) for task, worker, state in read(browser, "#timeline rect.bar", "data-task", "data-worker", "data-state")}
    assert bars[planner] == ("one", "completed") and all(bars[c] == ("two", "completed") for c in children), bars
    assert found(browser, "#timeline g.row", "data-row") >= {"one", "two"}
    shot(browser, "timeline")
    # Dragging across the chart from just before the planner's bar to the chart's end zooms
    # in: its bar widens.
    bar, chart = box(browser, f'#timeline rect.bar[data-task="{planner}"]'), box(browser, ".timeline-wrap")
    assert bar and chart
    start, end = bar["x"] - 40, chart["x"] + chart["width"] - 4  # page pixels
    # From the chart's frame (it stays while the chart within is drawn anew).
    drag = ActionChains(browser).move_to_element_with_offset(browser.find_element(By.CSS_SELECTOR, ".timeline-wrap"), int(start - chart["x"] - chart["width"] / 2), 0)
    drag.click_and_hold().move_by_offset(int(end - start), 0).release().perform()
    narrow = bar["width"]
    wait(browser, lambda: (b := box(browser, f'#timeline rect.bar[data-task="{planner}"]')) and b["width"] > max(10 * narrow, 50))
    assert not browser.find_element(By.ID, "timeline-follow").is_selected() and browser.find_element(By.ID, "timeline-zoom-reset").is_displayed()
    shot(browser, "timeline-zoomed")
    Select(browser.find_element(By.ID, "timeline-by")).select_by_value("agent")
    wait(browser, lambda: found(browser, "#timeline g.row", "data-row") >= {"planner", "researcher"} and "by=agent" in browser.current_url)
    shot(browser, "timeline-by-agent")
    wait(browser, lambda: click(browser, f'#timeline rect.bar[data-task="{planner}"]'))
    wait(browser, lambda: browser.current_url.endswith(f"#/tasks/{planner}"))

    # The call graph on the task's page: the planner, both sub-tasks, an edge to each.
    wait(browser, lambda: found(browser, "#graph g.graph-task", "data-task") == {planner, *children})
    edges = {tuple(edge) for edge in read(browser, "#graph path.edge[data-to]", "data-from", "data-to", "data-result")}
    assert edges == {(planner, c, "ok") for c in children}, edges
    assert found(browser, "#graph g.graph-task.current", "data-task") == {planner}
    browser.execute_script("arguments[0].scrollIntoView()", browser.find_element(By.ID, "call-graph"))
    shot(browser, "call-graph")
    # A sub-task's page draws the same family, marking the sub-task.
    child = sorted(children)[0]
    wait(browser, lambda: click(browser, f'#graph g.graph-task[data-task="{child}"]'))
    wait(browser, lambda: found(browser, "#graph g.graph-task.current", "data-task") == {child})
    assert found(browser, "#graph g.graph-task", "data-task") == {planner, *children}

    # Per agent: who calls it, and how often.
    researcher = next(a for a in api(fleet, "agents")["agents"] if a["name"] == "researcher")
    assert researcher["callers"] == [{"agent": "planner", "relayed": 2, "located": 0}], researcher
    browser.get(fleet.url + "/ui/#/agents")
    wait(browser, lambda: "planner ×2" in text(browser, '#agents tr[data-agent="researcher"] td.callers'))
    shot(browser, "agents-callers")

    # The live charts: tasks ending while the page is open move the rates and percentiles.
    browser.get(fleet.url + "/ui/#/charts")
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, '#chart-levels polyline[data-series="queued"]'))
    for n in range(6):
        send(fleet, "callee", f"charted {n}")
    ended = '#chart-tasks + .chart-legend li[data-series="ended"] strong'
    wait(browser, lambda: text(browser, ended) not in ("", "—", "0.0/s"))
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, '#chart-latency polyline[data-series="p50"]') and browser.find_elements(By.CSS_SELECTOR, '#chart-ttft polyline[data-series="p99"]'))
    # (Over every task that completed in the last 10 s: the slow ones of the test before too.)
    assert re.fullmatch(r"[0-9.]+ (ms|s)", text(browser, '#chart-latency + .chart-legend li[data-series="p50"] strong'))
    shot(browser, "charts")

    # Bad questions get statuses that say what to fix.
    with httpx.Client(base_url=fleet.url, headers=AUTH, timeout=10) as http:
        for path, word in (("timeline?by=planet", "worker or agent"), ("timeline?window_s=999999", "at most"), ("timeline/live?by=x", "worker or agent")):
            bad = http.get(f"/ui/api/{path}")
            assert bad.status_code == 400 and word in bad.json()["error"], (path, bad.text)
        assert http.get("/ui/api/tasks/nope/graph").status_code == 404

    # Phone-sized and dark.
    browser.set_window_size(390, 844)
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    try:
        browser.get(fleet.url + "/ui/#/timeline?window=60&by=agent")
        wait(browser, lambda: found(browser, "#timeline g.row", "data-row"))
        shot(browser, "timeline-phone-dark")
        browser.get(fleet.url + "/ui/#/charts")
        wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, '#chart-levels polyline[data-series="running"]'))
        shot(browser, "charts-phone-dark")
        browser.get(f"{fleet.url}/ui/#/tasks/{planner}")
        wait(browser, lambda: found(browser, "#graph g.graph-task", "data-task") == {planner, *children})
        browser.execute_script("arguments[0].scrollIntoView()", browser.find_element(By.ID, "call-graph"))
        shot(browser, "call-graph-phone-dark")
    finally:
        browser.set_window_size(1280, 800)
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    assert console_errors(browser) == []


def test_a_task_page_stream_resumes_after_the_last_event(fleet: Fleet) -> None:
    """What the browser does on reconnect: `Last-Event-ID` skips the events it has."""
    task = send(fleet, "callee", "one two three four five")
    wait_until(lambda: api(fleet, f"tasks/{task}")["state"] == "completed", what="the task to end")

    def stream(last: "str | None") -> list[tuple[str, dict]]:  # type: ignore[type-arg]
        headers = dict(AUTH, **({"Last-Event-ID": last} if last else {}))
        frames, name = [], ""
        with httpx.stream("GET", f"{fleet.url}/ui/api/tasks/{task}/live", headers=headers, timeout=10) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("event:"):
                    name = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    frames.append((name, json.loads(line.removeprefix("data:"))))
        return frames

    everything = stream(None)
    assert everything[0][0] == "task" and everything[-1][0] == "end"
    events = [data for name, data in everything if name == "event"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert "".join(e["text"] for e in events if e["kind"] == "text").split() == "one two three four five".split()
    rest = [data for name, data in stream("3") if name == "event"]
    assert [e["seq"] for e in rest] == list(range(4, len(events) + 1))


def test_workers_and_tasks_are_found_and_paged_on_the_head(fleet: Fleet, browser: webdriver.Chrome) -> None:
    # The head answers a page of what was asked for, with the count of all that match: a
    # search, a group, a sort, an offset; bad questions get a 400 that says what to ask.
    found = api(fleet, "cluster?q=host=two")
    assert [w["id"] for w in found["workers"]] == ["two"] and found["workers_matching"] == 1, found
    assert found["totals"]["workers"] == 2
    by_label = {g["key"]: g for g in api(fleet, "cluster?group=label")["groups"]}
    assert by_label["host=one"]["workers"] == 1 and by_label["host=one"]["search"] == "host=one", by_label
    paged = [api(fleet, f"cluster?limit=1&offset={n}")["workers"] for n in (0, 1, 2)]
    assert [[w["id"] for w in page] for page in paged] == [["one"], ["two"], []], paged
    for bad, says in (("cluster?group=rack", "one of host, label, model"), ("cluster?sort=age", "one of name"), ("tasks?q=" + "+w" * 9, "at most 8 words")):
        refused = httpx.get(f"{fleet.url}/ui/api/{bad}", headers=AUTH, timeout=10)
        assert refused.status_code == 400 and says in refused.json()["error"], (bad, refused.text)

    # 60 tasks to page through, one of them with a word to search for.
    needle = f"needle{secrets.token_hex(3)}"
    sent = [send(fleet, "callee", f"page me {n}" + (f" {needle}" if n == 7 else "")) for n in range(60)]
    wait_until(lambda: api(fleet, "tasks?agent=callee&state=completed&limit=1")["total"] >= 60, timeout=60)
    first = api(fleet, "tasks?agent=callee&limit=50")
    second = api(fleet, f"tasks?agent=callee&limit=50&after={first['next_after']}")
    ids = [t["id"] for t in first["tasks"] + second["tasks"]]
    assert len(ids) == len(set(ids)) and set(sent) <= set(ids), "pages overlap or miss tasks"
    assert [t["id"] for t in api(fleet, f"tasks?q={needle.upper()}")["tasks"]] == [sent[7]]
    on_one = api(fleet, "tasks?worker=one&limit=500")
    assert on_one["tasks"] and {t["worker"] for t in on_one["tasks"]} == {"one"}, on_one["tasks"][:3]

    # The cluster page: grouped by label, a group's button lists its workers.
    browser.get(fleet.url + "/ui/#/cluster")
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#workers tr[data-worker]"))
    Select(browser.find_element(By.ID, "worker-group")).select_by_value("label")
    wait(browser, lambda: {r.get_attribute("data-group") for r in browser.find_elements(By.CSS_SELECTOR, "#worker-groups tr[data-group]")} >= {"host=one", "host=two"})
    wait(browser, lambda: click(browser, '#worker-groups tr[data-group="host=two"] button'))
    wait(browser, lambda: {r.get_attribute("data-worker") for r in browser.find_elements(By.CSS_SELECTOR, "#workers tr[data-worker]")} == {"two"})
    assert browser.find_element(By.ID, "worker-search").get_attribute("value") == "host=two"
    assert "of 1 matching, of 2" in text(browser, "#workers-shown"), text(browser, "#workers-shown")
    assert "group=label" in browser.current_url and "q=host%3Dtwo" in browser.current_url
    shot(browser, "cluster-found")
    # Typing a search lists what it matches, once typing pauses.
    search = browser.find_element(By.ID, "worker-search")
    search.clear()
    search.send_keys("ONE")
    expected = {w["id"] for w in api(fleet, "cluster?q=ONE")["workers"]}
    assert "one" in expected, expected
    wait(browser, lambda: {r.get_attribute("data-worker") for r in browser.find_elements(By.CSS_SELECTOR, "#workers tr[data-worker]")} == expected)

    # The tasks page: 50 per page, older and back; a search finds the one task.
    browser.get(fleet.url + "/ui/#/tasks?agent=callee&limit=50")
    shown = lambda: [r.get_attribute("data-task") for r in browser.find_elements(By.CSS_SELECTOR, "#tasks tr[data-task]")]  # noqa: E731
    wait(browser, lambda: shown() == [t["id"] for t in api(fleet, "tasks?agent=callee&limit=50")["tasks"]])
    newest = shown()
    wait(browser, lambda: click(browser, "#tasks-older:not([disabled])"))
    wait(browser, lambda: shown() and not set(shown()) & set(newest))
    assert "after=" in browser.current_url
    shot(browser, "tasks-older")
    wait(browser, lambda: click(browser, "#tasks-newer:not([disabled])"))
    wait(browser, lambda: shown() == newest)
    box = browser.find_element(By.ID, "filter-search")
    box.send_keys(needle)
    wait(browser, lambda: shown() == [sent[7]])
    assert text(browser, "#tasks-total").startswith("1 task"), text(browser, "#tasks-total")
    shot(browser, "tasks-found")
    assert not console_errors(browser), console_errors(browser)
