"""What a Python agent's model call costs beside the model: `ctx.chat`, `af.openai_client()`
(OpenAI's API answered in process, whole and streamed), and the alternative it replaces, an
OpenAI client over HTTP to the head's `/v1` (a task of its own, placed on a worker).

An embedded cluster (`af.init(workers=1)`), one Python agent that makes --calls sequential
calls of each kind to `builtin:echo` (no weights: the call's cost is all there is) with a
one-word prompt, timing each; the median per kind over --rounds rounds, and its ratio to
`ctx.chat`'s.

    python benches/python/model_calls.py --rounds 5 --calls 200
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
from typing import Any

import openai

import agentfleet as af

MODEL = "builtin:echo"
MESSAGES = [{"role": "user", "content": "hello"}]


def timed_agent(calls: int, head: str, token: str) -> Any:
    @af.agent(name="model-calls")
    async def model_calls(task: af.AgentTask, ctx: af.AgentContext) -> str:
        in_process = af.openai_client()
        over_http = openai.AsyncOpenAI(base_url=f"{head}/v1", api_key=token, max_retries=0)
        kinds: dict[str, Any] = {
            "ctx.chat": lambda: ctx.chat(MESSAGES, model=MODEL),
            "openai_client": lambda: in_process.chat.completions.create(model=MODEL, messages=MESSAGES),
            "openai_client, streamed": lambda: drain(in_process, MESSAGES),
            "HTTP to the head's /v1": lambda: over_http.chat.completions.create(model=MODEL, messages=MESSAGES),
        }
        medians = {}
        for kind, call in kinds.items():
            await call()  # warm: the model loaded, the connection open
            seconds = []
            for _ in range(calls):
                start = time.perf_counter()
                await call()
                seconds.append(time.perf_counter() - start)
            medians[kind] = statistics.median(seconds)
        await over_http.close()
        return json.dumps(medians)

    return model_calls


async def drain(client: Any, messages: Any) -> None:
    stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    async for _ in stream:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    token = secrets.token_hex(16)
    with af.init(workers=1, token=token) as fleet:
        agent = fleet.agent(timed_agent(args.calls, fleet.address, token))
        rounds = [json.loads(agent.submit("go").result(timeout=600)) for _ in range(args.rounds)]
    kinds = list(rounds[0])
    base = statistics.median(r["ctx.chat"] for r in rounds)
    print(f"{'call':<28}{'median µs':>12}{'× ctx.chat':>12}")
    for kind in kinds:
        median = statistics.median(r[kind] for r in rounds)
        print(f"{kind:<28}{median * 1e6:>12.0f}{median / base:>12.2f}")


if __name__ == "__main__":
    main()
