"""Chat logprobs and OpenAI's penalties on SmolLM2-135M-Instruct through the official
`openai` client: each generated token's logprob and its alternatives (the same streamed
and not, the greedy token first among them), and presence/frequency penalties that change
what a greedy model repeats."""

from collections import Counter

import openai
import pytest
from conftest import SMOLLM2, Cluster

QUESTION = [{"role": "user", "content": "List the days of the week."}]


def test_logprobs_and_top_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=SMOLLM2, messages=QUESTION, logprobs=True, top_logprobs=3, max_tokens=12, temperature=0.0,  # type: ignore[arg-type]
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content, reply
    tokens = choice.logprobs.content
    assert reply.usage is not None and len(tokens) == reply.usage.completion_tokens == 12
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert t.logprob <= 0 and bytes(t.bytes or []) == t.token.encode()
        assert len(t.top_logprobs) == 3
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        # Greedy: the chosen token is the most likely one, with its logprob.
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
    # Streamed, each chunk carries the logprobs of its text's tokens: the same tokens. (The
    # stream is closed with its block: a socket left open fails the test.)
    with client.chat.completions.create(
        model=SMOLLM2, messages=QUESTION, logprobs=True, top_logprobs=3, max_tokens=12, temperature=0.0, stream=True,  # type: ignore[arg-type]
    ) as stream:
        streamed = [t for chunk in stream if chunk.choices and chunk.choices[0].logprobs
                    for t in chunk.choices[0].logprobs.content or []]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in tokens]
    # Without logprobs asked, none come.
    plain = client.chat.completions.create(model=SMOLLM2, messages=QUESTION, max_tokens=4)
    assert plain.choices[0].logprobs is None


def test_top_logprobs_without_logprobs_is_a_400(cluster: Cluster) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        cluster.client().chat.completions.create(model=SMOLLM2, messages=QUESTION, top_logprobs=2)  # type: ignore[arg-type]
    assert e.value.param == "top_logprobs"


def repeats(client: openai.OpenAI, **penalties: float) -> tuple[str, int]:
    """A greedy answer to a question that invites repetition, and how often its most
    common token appears."""
    reply = client.chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": "Write the word cat twenty times."}],  # type: ignore[list-item]
        max_tokens=40, temperature=0.0, logprobs=True, **penalties,  # type: ignore[arg-type]
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    counts = Counter(t.token for t in choice.logprobs.content)
    return choice.message.content or "", counts.most_common(1)[0][1]


def test_penalties_discourage_repeats(cluster: Cluster) -> None:
    client = cluster.client()
    free, free_most = repeats(client)
    frequency, frequency_most = repeats(client, frequency_penalty=2.0)
    presence, presence_most = repeats(client, presence_penalty=2.0)
    assert frequency != free and presence != free, (free, frequency, presence)
    assert frequency_most < free_most and presence_most < free_most, (free, frequency, presence)
