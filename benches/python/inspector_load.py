"""What an open inspector page costs (issue 17): a head holding 10,000 finished tasks and
100 streaming ones, a worker, and Debian's chromium (Selenium, the system chromedriver).

Reports, per page (cluster, the task list, a streaming task's page, the timeline of the
last 5 minutes and of every retained task, the live charts): the load time (from
navigation to the page showing its data, median of --loads) and the head's CPU with the page
open minus without it (from /proc, over --seconds each, alternating, median of --rounds), in
% of one core.

    python benches/python/inspector_load.py [--tasks 10000 --streaming 100]

Needs the release binaries (cargo build --release --bins) and `pip install selenium httpx`.
"""

import argparse
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "head-node" / "tests"))
from fleetproc import Fleet, clean_env  # noqa: E402

CONFIG = """
[[agent]]
name = "fast"
model = "builtin:echo"

[[agent]]
name = "stream"
model = "builtin:echo"
model_options = { token_delay_ms = 100 }
"""

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def head_cpu(pid: int, seconds: float) -> float:
    """The head's CPU over `seconds`, in % of one core."""
    start, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - start) / (time.monotonic() - t0)


def send(http: httpx.Client, agent: str, text: str) -> str:
    message = {"messageId": secrets.token_hex(8), "role": "ROLE_USER", "parts": [{"text": text}]}
    body = {"message": message, "configuration": {"returnImmediately": True}}
    r = http.post(f"/a2a/{agent}/message:send", json=body)
    r.raise_for_status()
    return str(r.json()["task"]["id"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--streaming", type=int, default=100)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--pages", default="", help="only these pages (comma-separated names)")
    args = parser.parse_args()

    fleet = Fleet(CONFIG, env=clean_env())
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(arg)
    os.environ["SE_OFFLINE"] = "true"
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        with httpx.Client(base_url=fleet.url, timeout=60) as http:
            t0 = time.monotonic()
            for n in range(args.tasks):
                send(http, "fast", f"finished task {n}")
            while http.get("/ui/api/tasks?state=completed&limit=1").json()["total"] < args.tasks:
                time.sleep(0.2)
            print(f"{args.tasks} tasks submitted and done in {time.monotonic() - t0:.1f} s", flush=True)
            words = " ".join(f"w{i}" for i in range(3000))  # 300 s of streaming each
            streaming = [send(http, "stream", words) for _ in range(args.streaming)]
        pages = {
            "cluster": ("/ui/#/cluster", "#workers tr[data-worker]"),
            "tasks": ("/ui/#/tasks", "#tasks tr[data-task]"),
            "task (streaming)": (f"/ui/#/tasks/{streaming[0]}", '#events li[data-kind="text"]'),
            "timeline (5 min)": ("/ui/#/timeline?window=300", "#timeline rect.bar, #timeline rect.cell"),
            "timeline (all)": ("/ui/#/timeline?window=0", "#timeline rect.bar, #timeline rect.cell"),
            "charts": ("/ui/#/charts", '#chart-levels polyline[data-series="running"]'),
        }
        if args.pages:
            pages = {name: page for name, page in pages.items() if name in args.pages.split(",")}
        blank = fleet.url + "/healthz"
        print(f"{'page':<18} {'load ms (median)':>17} {'head CPU open %':>16} {'closed %':>9} {'page %':>7}")
        for name, (path, ready) in pages.items():
            loads = []
            for _ in range(args.loads):
                browser.get(blank)
                t0 = time.monotonic()
                browser.get(fleet.url + path)
                while not browser.find_elements(By.CSS_SELECTOR, ready):
                    time.sleep(0.005)
                loads.append(1000 * (time.monotonic() - t0))
            opened, closed = [], []
            for _ in range(args.rounds):
                browser.get(fleet.url + path)
                opened.append(head_cpu(fleet.head.pid, args.seconds))
                browser.get(blank)
                closed.append(head_cpu(fleet.head.pid, args.seconds))
            o, c = statistics.median(opened), statistics.median(closed)
            print(f"{name:<18} {statistics.median(loads):>17.0f} {o:>16.1f} {c:>9.1f} {o - c:>7.1f}", flush=True)
    finally:
        browser.quit()
        fleet.stop()


if __name__ == "__main__":
    main()
