"""Python agents (`@af.agent`) on 2 Python workers, side by side with Ray actor calls, one run.

The issue's target: 10,000 tasks through a trivial Python agent on 2 Python workers at
>= 10x the tasks/s of the same work as Ray actor calls.

Ray is for this benchmark only (never in the project's venv, never in CI): a venv of its own
on the same interpreter, with the installed agentfleet package put on PYTHONPATH (nothing
is built):

    ~/.pyenv/versions/3.11.7/bin/python -m venv /tmp/rayvenv
    /tmp/rayvenv/bin/pip install "ray[default]==2.60.0"
    mkdir -p /tmp/af-pkg && ln -sfn \\
        ~/.cache/agentfleet/venv/lib/python3.11/site-packages/agentfleet /tmp/af-pkg/agentfleet
    PYTHONPATH=/tmp/af-pkg /tmp/rayvenv/bin/python benches/python/python_agents_vs_ray.py \\
        --rounds 5 --out python_agents_vs_ray.json

Without Ray: `python benches/python/python_agents_vs_ray.py --skip-ray` in any venv with
agentfleet.

The agent, written to a module in a temporary folder (the workers import it):

    @af.agent(name="py-echo")
    async def py_echo(task, ctx):
        yield task.input

Measurements (one warm-up, then the median of --rounds rounds; every round is kept):
  a. cluster: a `fleet-head` process (memory store) and 2 `python -m agentfleet worker
     --import MODULE` processes; this process connects by address and `map`s 10,000
     distinct inputs through the agent                                          -> tasks/s
     (beside it, for reference, the same on the same cluster through `builtin:echo`, an
     agent the Rust worker answers itself: what hosting the agent in Python adds)
  b. embedded: the same agent on `af.init(workers=2)` (head and workers in this process,
     the agent run on this process's event loop)                                -> tasks/s
     (beside it, for reference, `af.init(workers=2, data_dir=<a folder on /dev/shm>)`: the
     embedded head's default store is a file store in a temporary folder, which syncs to
     disk per write; on tmpfs that costs nothing)
  c. Ray: 2 actors whose method returns its input, 10,000 calls round-robin, `ray.get` of
     all; the same with 2 async actors (`async def`)                            -> calls/s
  d. 1,000 sequential round trips: `agent.submit(x).result()` on the cluster (and embedded);
     `ray.get(actor.echo.remote(x))`                                            -> p50 us
Each round also records the CPU seconds of each process involved (from /proc), to show
where the time goes, and those of the rest of the machine ("other": other work sharing it). Every process this script starts (head, workers, Ray) is stopped at
the end, on errors too.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

N_TASKS = 10_000
N_SEQ = 1_000
AGENT_MODULE = "af_bench_python_agents"
AGENT_SOURCE = '''"""The trivial Python agent of benches/python/python_agents_vs_ray.py."""
import agentfleet as af


@af.agent(name="py-echo")
async def py_echo(task, ctx):
    yield task.input
'''
TICKS = os.sysconf("SC_CLK_TCK")


def cast_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def rounds_of(fn, rounds):
    """One warm-up call, then `rounds` calls; their results."""
    fn()
    return [fn() for _ in range(rounds)]


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a live process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def descendants(pid: int) -> list[int]:
    """The live processes below `pid` (children, their children, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cpus), from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICKS


class CpuMeter:
    """CPU seconds spent by groups of processes between start() and stop(), and by the rest
    of the machine ("other": what else ran meanwhile; near 0 on a quiet machine)."""

    def __init__(self, groups: "dict[str, Callable[[], list[int]]]") -> None:
        self.groups = groups  # name -> function returning the pids of the group now

    def start(self) -> None:
        self.before = {name: {pid: cpu_s(pid) for pid in pids()} for name, pids in self.groups.items()}
        self.busy = busy_s()

    def stop(self) -> dict[str, float]:
        busy = busy_s() - self.busy
        out: dict[str, float] = {}
        for name, pids in self.groups.items():
            # Processes that started during the round count from 0.
            out[name] = round(sum(cpu_s(pid) - self.before[name].get(pid, 0.0) for pid in pids()), 3)
        out["other"] = round(max(0.0, busy - sum(out.values())), 3)
        return out


# ---- the processes of the cluster ----------------------------------------------------

_started: list[subprocess.Popen] = []


def spawn(argv: list[str], **kwargs) -> subprocess.Popen:
    # A session of its own: stop() ends the process and anything it started.
    proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
    _started.append(proc)
    return proc


def stop_all() -> None:
    """Stops every process spawn() started: SIGTERM to its group, SIGKILL after 5 s."""
    for proc in _started:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    for proc in _started:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    _started.clear()


def head_command(explicit: "str | None") -> list[str]:
    """The head to run: --head-bin, else `fleet-head` on PATH, else the one cargo builds under
    ~/.cache/agentfleet, else `python -m agentfleet head` (the same head, in a Python
    process)."""
    if explicit:
        return [explicit]
    for candidate in (shutil.which("fleet-head"), os.path.expanduser("~/.cache/agentfleet/target/release/fleet-head")):
        if candidate and os.access(candidate, os.X_OK):
            return [candidate]
    return [sys.executable, "-m", "agentfleet", "head"]


def agents_cluster(prefix: str, module: str, source: str, workers: int):
    """The agents in `source` written to `module` in a temporary folder and imported, and a
    file-store cluster of `workers` Python workers importing them: (the imported module,
    fleet handle, head, workers). Everything started is stopped at exit, then the folder
    removed (atexit runs the last registered first)."""
    import textwrap

    folder = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, folder, True)
    atexit.register(stop_all)
    with open(os.path.join(folder, module + ".py"), "w") as f:
        f.write(textwrap.dedent(source))
    sys.path.insert(0, folder)
    agents = __import__(module)
    env = dict(os.environ, RUST_LOG="warn", PYTHONPATH=folder)
    return (agents, *file_store_cluster(folder, module, workers, env))


def file_store_cluster(folder: str, module: str, workers: int, env: dict):
    """A `fleet-head` keeping its default file store under `folder` and `workers` Python
    workers importing `module`, on 127.0.0.1, all joined: (fleet handle, head, workers)."""
    import agentfleet as af

    head = spawn(
        [*head_command(None), "--listen", "127.0.0.1:0", "--print-address", "--data-dir", os.path.join(folder, "head"),
         "--token", "bench", "--join-token", "bench-join"],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    assert head.stdout is not None
    line = head.stdout.readline()
    if not line.startswith("listening on "):
        raise RuntimeError(f"the head did not start: {line!r}")
    address = "http://" + line.removeprefix("listening on ").strip()
    procs = [
        spawn([sys.executable, "-m", "agentfleet", "worker", "--head", address, "--join-token", "bench-join",
               "--import", module], env=env)
        for _ in range(workers)
    ]
    fleet = af.init(address, token="bench")
    deadline = time.monotonic() + 60
    while len(fleet.status()["workers"]) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError("the workers did not join")
        time.sleep(0.02)
    return fleet, head, procs


def start_cluster(module_dir: str, head_cmd: list[str], slots: "int | None", log: str):
    env = dict(os.environ, RUST_LOG=log, FLEET_MESH_LISTEN="/ip4/127.0.0.1/tcp/0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (module_dir, os.environ.get("PYTHONPATH")) if p)
    started = time.perf_counter()
    head = spawn(
        [*head_cmd, "--listen", "127.0.0.1:0", "--print-address", "--store", "memory",
         "--token", "bench", "--join-token", "bench-join"],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    assert head.stdout is not None
    line = head.stdout.readline()
    if not line.startswith("listening on "):
        raise RuntimeError(f"the head did not start: {line!r} (exit {head.poll()})")
    address = "http://" + line.removeprefix("listening on ").strip()
    worker_argv = [sys.executable, "-m", "agentfleet", "worker", "--head", address,
                   "--join-token", "bench-join", "--import", AGENT_MODULE]
    if slots:
        worker_argv += ["--slots", str(slots)]
    workers = [spawn(worker_argv, cwd=module_dir, env=env) for _ in range(2)]
    return head, workers, address, started


# ---- agentfleet ----------------------------------------------------------------------


def measure_agent(agent, rounds: int, meter: CpuMeter, round_trips: bool) -> dict:
    inputs = [f"x{i}" for i in range(N_TASKS)]
    cpu = []

    def tasks():
        meter.start()
        started = time.perf_counter()
        out = agent.map(inputs, progress=False)
        took = time.perf_counter() - started
        cpu.append(meter.stop())
        assert out == inputs, f"wrong answers: {out[:3]}..."
        return N_TASKS / took

    def trips():
        times = []
        for i in range(N_SEQ):
            started = time.perf_counter()
            agent.submit(f"y{i}").result()
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e6

    result = {"tasks_per_s": rounds_of(tasks, rounds), "cpu_s": cpu[1:]}
    if round_trips:
        result["round_trip_p50_us"] = rounds_of(trips, rounds)
    return result


def agentfleet_cluster(rounds: int, module_dir: str, head_cmd: list[str], slots: "int | None", log: str) -> dict:
    import agentfleet as af

    agents = __import__(AGENT_MODULE)
    head, workers, address, started = start_cluster(module_dir, head_cmd, slots, log)
    fleet = None
    try:
        fleet = af.init(address, token="bench")
        deadline = time.monotonic() + 60
        while len(cast_list(fleet.status()["workers"])) < 2:
            for proc in workers:
                if proc.poll() is not None:
                    raise RuntimeError(f"a worker exited ({proc.returncode}) before joining")
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not join in 60 s")
            time.sleep(0.02)
        ready_s = time.perf_counter() - started
        me = os.getpid()
        meter = CpuMeter({
            "client": lambda: [me],
            "head": lambda: [head.pid],
            "workers": lambda: [w.pid for w in workers],
        })
        py_echo = fleet.agent(agents.py_echo)
        assert py_echo.name == "py-echo"
        result = {
            "head": " ".join(head_cmd),
            "ready_s": ready_s,
            "python_agent": measure_agent(py_echo, rounds, meter, round_trips=True),
        }
        builtin = fleet.agent("bench-builtin-echo", model="builtin:echo")
        result["builtin_echo"] = measure_agent(builtin, rounds, meter, round_trips=False)
        return result
    finally:
        if fleet is not None:
            fleet.shutdown()
        stop_all()


def agentfleet_embedded(rounds: int, data_dir: "str | None" = None) -> dict:
    """`af.init(workers=2)`: by default the head's store is a file store in a temporary
    folder; `data_dir` puts it elsewhere (the tmpfs row: the same without fsync costs)."""
    import agentfleet as af

    agents = __import__(AGENT_MODULE)
    fleet = af.init(workers=2, data_dir=data_dir)
    try:
        me = os.getpid()
        meter = CpuMeter({"process": lambda: [me]})
        return {"python_agent": measure_agent(fleet.agent(agents.py_echo), rounds, meter, round_trips=True)}
    finally:
        fleet.shutdown()


# ---- Ray -----------------------------------------------------------------------------


def ray_bench(rounds: int) -> dict:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    @ray.remote(num_cpus=0)
    class Echo:
        def echo(self, x):
            return x

        def pid(self):
            return os.getpid()

    @ray.remote(num_cpus=0)
    class AsyncEcho:
        async def echo(self, x):
            return x

        def pid(self):
            return os.getpid()

    ray.init(include_dashboard=False, logging_level="ERROR")
    try:
        me = os.getpid()
        inputs = [f"x{i}" for i in range(N_TASKS)]

        def run(cls) -> dict:
            actors = [cls.remote() for _ in range(2)]
            actor_pids = ray.get([a.pid.remote() for a in actors])
            meter = CpuMeter({
                "driver": lambda: [me],
                "actors": lambda: actor_pids,
                "ray_system": lambda: [p for p in descendants(me) if p not in actor_pids],
            })
            cpu = []

            def calls():
                meter.start()
                started = time.perf_counter()
                refs = [actors[i % 2].echo.remote(x) for i, x in enumerate(inputs)]
                out = ray.get(refs)
                took = time.perf_counter() - started
                cpu.append(meter.stop())
                assert out == inputs
                return N_TASKS / took

            def trips():
                times = []
                for i in range(N_SEQ):
                    started = time.perf_counter()
                    ray.get(actors[0].echo.remote(f"y{i}"))
                    times.append(time.perf_counter() - started)
                return statistics.median(times) * 1e6

            result = {
                "tasks_per_s": rounds_of(calls, rounds),
                "cpu_s": cpu[1:],
                "round_trip_p50_us": rounds_of(trips, rounds),
            }
            for a in actors:
                ray.kill(a)
            return result

        return {"version": ray.__version__, "actors": run(Echo), "async_actors": run(AsyncEcho)}
    finally:
        ray.shutdown()


# ---- report --------------------------------------------------------------------------


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def cpu_per_1k(cpu_rounds: list[dict]) -> str:
    """Median CPU seconds per 1,000 tasks of each process group, as text."""
    if not cpu_rounds:
        return "-"
    return ", ".join(
        f"{name} {med([r[name] for r in cpu_rounds]) * 1000 / N_TASKS * 1e3:.0f} ms" for name in cpu_rounds[0]
    )


def report(results: dict) -> None:
    rows = []
    cluster = results["agentfleet_cluster"]
    rows.append(("agentfleet cluster, Python agent (head + 2 Python workers)", cluster["python_agent"]))
    rows.append(("agentfleet cluster, `builtin:echo` (reference)", cluster["builtin_echo"]))
    rows.append(("agentfleet embedded, Python agent (`af.init(workers=2)`)", results["agentfleet_embedded"]["python_agent"]))
    if "agentfleet_embedded_tmpfs" in results:
        rows.append(("agentfleet embedded, head's store on tmpfs (reference: no fsync)", results["agentfleet_embedded_tmpfs"]["python_agent"]))
    ray = results.get("ray")
    if ray:
        rows.append((f"Ray {ray['version']}, 2 actors", ray["actors"]))
        rows.append((f"Ray {ray['version']}, 2 async actors", ray["async_actors"]))

    fmt_rounds = lambda xs: "[" + ", ".join(f"{x:,.0f}" for x in xs) + "]"  # noqa: E731
    print()
    print(f"{N_TASKS:,} tasks (calls) and {N_SEQ:,} sequential round trips; median of {len(cluster['python_agent']['tasks_per_s'])} rounds")
    print()
    print("| case | tasks/s | all rounds | round trip p50 (µs) | all rounds | CPU per 1,000 tasks |")
    print("|---|---|---|---|---|---|")
    for label, r in rows:
        trips = r.get("round_trip_p50_us")
        print(
            f"| {label} | {med(r['tasks_per_s']):,.0f} | {fmt_rounds(r['tasks_per_s'])} | "
            + (f"{med(trips):,.0f} | {fmt_rounds(trips)}" if trips else "– | –")
            + f" | {cpu_per_1k(r['cpu_s'])} |"
        )
    if ray:
        ours = cluster["python_agent"]
        print()
        for name in ("actors", "async_actors"):
            theirs = ray[name]
            print(
                f"cluster Python agent vs Ray {name.replace('_', ' ')}: "
                f"{med(ours['tasks_per_s']) / med(theirs['tasks_per_s']):.1f}x the tasks/s (target >= 10x), "
                f"round trip {med(theirs['round_trip_p50_us']) / med(ours['round_trip_p50_us']):.1f}x shorter"
            )
        emb = results["agentfleet_embedded"]["python_agent"]
        print(f"embedded Python agent vs Ray actors: {med(emb['tasks_per_s']) / med(ray['actors']['tasks_per_s']):.1f}x the tasks/s")
    print(f"cluster ready (head + 2 workers joined) in {cluster['ready_s']:.2f} s; head: {cluster['head']}")
    print(f"{results['machine']}; load average before {results['load_avg_before'][0]:.2f}, after {results['load_avg_after'][0]:.2f}")


def machine() -> str:
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cpus, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--out", default=None, help="write all rounds as JSON here")
    parser.add_argument("--head-bin", default=None, help="the fleet-head binary (default: PATH, then ~/.cache/agentfleet/target/release, then `python -m agentfleet head`)")
    parser.add_argument("--slots", type=int, default=None, help="the workers' --slots (default: theirs, 256)")
    parser.add_argument("--log", default="error", help="RUST_LOG of the head and workers")
    args = parser.parse_args()

    # A SIGTERM unwinds like Ctrl-C, so the `finally`s stop the head, workers and Ray.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    atexit.register(stop_all)

    module_dir = tempfile.mkdtemp(prefix="af-bench-agents-")
    try:
        with open(os.path.join(module_dir, AGENT_MODULE + ".py"), "w") as f:
            f.write(AGENT_SOURCE)
        sys.path.insert(0, module_dir)

        results: dict = {
            "machine": machine(),
            "load_avg_before": os.getloadavg(),
            "n_tasks": N_TASKS,
            "n_sequential": N_SEQ,
        }
        print("agentfleet cluster ...", flush=True)
        results["agentfleet_cluster"] = agentfleet_cluster(args.rounds, module_dir, head_command(args.head_bin), args.slots, args.log)
        print("agentfleet embedded ...", flush=True)
        results["agentfleet_embedded"] = agentfleet_embedded(args.rounds)
        if os.path.isdir("/dev/shm"):
            print("agentfleet embedded, store on tmpfs ...", flush=True)
            shm = tempfile.mkdtemp(prefix="af-bench-store-", dir="/dev/shm")
            try:
                results["agentfleet_embedded_tmpfs"] = agentfleet_embedded(args.rounds, shm)
            finally:
                shutil.rmtree(shm, ignore_errors=True)
        if not args.skip_ray:
            print("Ray ...", flush=True)
            results["ray"] = ray_bench(args.rounds)
        results["load_avg_after"] = os.getloadavg()
        report(results)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        stop_all()
        shutil.rmtree(module_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
