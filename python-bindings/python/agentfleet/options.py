"""Grouped options of an agent: how its model samples (``Sampling``) and what a worker must
have free to run its tasks (``Resources``).

    agent = fleet.agent(
        "writer", "SmolLM2-135M-Instruct.Q4_1.gguf",
        sampling=af.Sampling(temperature=0.7, max_tokens=256),
        resources=af.Resources(num_cpus=1, memory=2 * 1024**3),
    )
    precise = agent.options(sampling=af.Sampling(temperature=0.0))  # per call, as Ray's

Both are frozen: ``dataclasses.replace(s, seed=7)`` makes a variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

__all__ = ["Resources", "Sampling"]


@dataclass(frozen=True, init=False)
class Sampling:
    """How the agent's model picks tokens. Every field left ``None`` keeps the model's (or,
    in ``agent.options``, the agent's) default.

    - ``temperature``: 0 picks the likeliest token (greedy); higher is more varied.
    - ``top_p``: sample only from the likeliest tokens whose probabilities add up to this.
    - ``max_tokens``: at most this many tokens in the answer.
    - ``seed``: the same seed, prompt and model give the same answer.
    - ``stop``: texts that end the answer where they appear (not included).
    - ``presence_penalty``, ``frequency_penalty``: OpenAI's, from -2 to 2.
    - ``thinking``: for a thinking model, whether it reasons before answering.
    """

    temperature: Optional[float]
    top_p: Optional[float]
    max_tokens: Optional[int]
    seed: Optional[int]
    stop: Tuple[str, ...]
    presence_penalty: Optional[float]
    frequency_penalty: Optional[float]
    thinking: Optional[bool]

    def __init__(
        self,
        *,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        max_tokens: Optional[int] = None,
        seed: Optional[int] = None,
        stop: Sequence[str] = (),
        presence_penalty: Optional[float] = None,
        frequency_penalty: Optional[float] = None,
        thinking: Optional[bool] = None,
    ) -> None:
        if temperature is not None and not (_finite(temperature) and temperature >= 0):
            raise ValueError(f"temperature is 0 or more, not {temperature!r}")
        if top_p is not None and not (_finite(top_p) and 0 < top_p <= 1):
            raise ValueError(f"top_p is more than 0 and at most 1, not {top_p!r}")
        if max_tokens is not None and not (_integer(max_tokens) and max_tokens >= 1):
            raise ValueError(f"max_tokens is a whole number of at least 1, not {max_tokens!r}")
        if seed is not None and not (_integer(seed) and seed >= 0):
            raise ValueError(f"seed is a whole number of 0 or more, not {seed!r}")
        if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop is a list of non-empty texts, not {stop!r}")
        for name, penalty in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
            if penalty is not None and not (_finite(penalty) and -2 <= penalty <= 2):
                raise ValueError(f"{name} is from -2 to 2, not {penalty!r}")
        if thinking is not None and not isinstance(thinking, bool):
            raise ValueError(f"thinking is True, False or None, not {thinking!r}")
        set_ = object.__setattr__
        set_(self, "temperature", temperature)
        set_(self, "top_p", top_p)
        set_(self, "max_tokens", max_tokens)
        set_(self, "seed", seed)
        set_(self, "stop", tuple(stop))
        set_(self, "presence_penalty", presence_penalty)
        set_(self, "frequency_penalty", frequency_penalty)
        set_(self, "thinking", thinking)


@dataclass(frozen=True, init=False)
class Resources:
    """What a worker must have free to run one of the agent's tasks, named as Ray names
    them: ``num_cpus`` (fractions allowed), ``num_gpus`` and ``memory`` in bytes. The
    scheduler places a task only on a worker with that much free, and holds it while the
    task runs. 0 (the default) asks for none."""

    num_cpus: float
    num_gpus: int
    memory: int

    def __init__(self, *, num_cpus: float = 0, num_gpus: int = 0, memory: int = 0) -> None:
        if not (_finite(num_cpus) and num_cpus >= 0):
            raise ValueError(f"num_cpus is 0 or more, not {num_cpus!r}")
        if not (_integer(num_gpus) and num_gpus >= 0):
            raise ValueError(f"num_gpus is a whole number of 0 or more, not {num_gpus!r}")
        if not (_integer(memory) and memory >= 0):
            raise ValueError(f"memory is in bytes, a whole number of 0 or more, not {memory!r}")
        object.__setattr__(self, "num_cpus", float(num_cpus))
        object.__setattr__(self, "num_gpus", int(num_gpus))
        object.__setattr__(self, "memory", int(memory))


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
