"""A thinking model's reasoning through the official `openai` client, apart from its answer:
`reasoning_content` on the chat message and on stream deltas, `reasoning_effort="none"`
turning it off, and the Responses API's `reasoning` item (whole and as typed stream events).
The model is a tiny Qwen3 planted to answer `<think>plan</think>42` (the Rust fixture
`write_thinking_model`, which `cargo test` builds as an example), served by a real worker."""

from collections.abc import Iterator

import openai
import pytest
from conftest import openai_client
from fleetproc import ThinkingFleet

MODEL = "thinker"
REASONING, ANSWER = "plan", "42"


class ThinkingCluster(ThinkingFleet):
    """The planted thinking model, asked by its name over the OpenAI API."""

    def __init__(self) -> None:
        super().__init__("", REASONING, ANSWER)

    def client(self) -> openai.OpenAI:
        return openai_client(self.url)


@pytest.fixture(scope="module")
def thinking() -> Iterator[ThinkingCluster]:
    c = ThinkingCluster()
    yield c
    c.stop()


@pytest.fixture
def client(thinking: ThinkingCluster) -> Iterator[openai.OpenAI]:
    with thinking.client() as c:
        yield c


def ask(client: openai.OpenAI, **extra: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is six times seven?"}], max_tokens=16, **extra  # type: ignore[arg-type]
    )


def test_chat_gives_reasoning_content_apart_from_the_answer(client: openai.OpenAI) -> None:
    r = ask(client)
    message = r.choices[0].message
    assert message.content == ANSWER, message
    assert getattr(message, "reasoning_content", None) == REASONING, message
    assert r.choices[0].finish_reason == "stop"
    # <think>, the reasoning's tokens and </think> of the completion's tokens ("4", "2", the end).
    assert r.usage is not None and r.usage.completion_tokens_details is not None
    reasoning_tokens = r.usage.completion_tokens_details.reasoning_tokens
    assert reasoning_tokens is not None and reasoning_tokens >= 3, r.usage
    assert r.usage.completion_tokens == reasoning_tokens + 3, r.usage


def test_streamed_deltas_carry_reasoning_then_content(client: openai.OpenAI) -> None:
    reasoning, content, order = "", "", []
    with client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is six times seven?"}], max_tokens=16, stream=True
    ) as stream:
        for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            if getattr(delta, "reasoning_content", None):
                reasoning += delta.reasoning_content  # type: ignore[attr-defined]
                order.append("reasoning")
            if delta.content:
                content += delta.content
                order.append("content")
    assert (reasoning, content) == (REASONING, ANSWER)
    assert order.index("content") > max(i for i, kind in enumerate(order) if kind == "reasoning"), order


def test_reasoning_effort_none_turns_the_reasoning_off(client: openai.OpenAI) -> None:
    message = ask(client, reasoning_effort="none").choices[0].message
    assert getattr(message, "reasoning_content", None) in (None, ""), message
    assert "<think>" not in (message.content or ""), message


def test_responses_api_gives_a_reasoning_item_before_the_message(client: openai.OpenAI) -> None:
    r = client.responses.create(model=MODEL, input="What is six times seven?", max_output_tokens=16)
    kinds = [item.type for item in r.output]
    assert kinds == ["reasoning", "message"], r.output
    reasoning = r.output[0]
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert "".join(part.text for part in reasoning.content) == REASONING
    assert r.output_text == ANSWER
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens >= 3, r.usage
    assert r.usage.output_tokens == r.usage.output_tokens_details.reasoning_tokens + 3, r.usage


def test_responses_stream_types_the_reasoning_events(client: openai.OpenAI) -> None:
    deltas, text, done = "", "", None
    with client.responses.stream(model=MODEL, input="What is six times seven?", max_output_tokens=16) as stream:
        for event in stream:
            if event.type == "response.reasoning_text.delta":
                deltas += event.delta
            elif event.type == "response.reasoning_text.done":
                done = event.text
            elif event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert (deltas, done, text) == (REASONING, REASONING, ANSWER)
    assert [item.type for item in final.output] == ["reasoning", "message"]
