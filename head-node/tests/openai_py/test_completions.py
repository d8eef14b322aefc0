"""The legacy completions API (`client.completions.create`) through the official `openai`
client: raw text continued without a chat template on SmolLM2-135M-Instruct, several
prompts and choices, legacy logprobs, echo, streaming (the same text as not streaming),
and the refusals: an agent, suffix, best_of; and Gemma 3 270M continuing prompts as
llama.cpp does."""

import json
from pathlib import Path

import openai
import pytest
from conftest import GEMMA3, SMOLLM2

# llama.cpp's greedy continuations of Gemma 3 270M (inference/tests/gemma3/make_reference.py).
GEMMA3_REFERENCE = Path(__file__).resolve().parents[3] / "inference/tests/gemma3/reference.json"


def test_raw_text_is_continued_without_a_template(client: openai.OpenAI) -> None:
    c = client.completions.create(model=SMOLLM2, prompt="1, 2, 3, 4, 5,", max_tokens=8, temperature=0)
    assert c.object == "text_completion" and c.id.startswith("cmpl-")
    [choice] = c.choices
    assert "6" in choice.text, choice
    # The prompt as it is (its digits and commas are 14 tokens), not a chat template around it.
    chat = client.chat.completions.create(model=SMOLLM2, messages=[{"role": "user", "content": "1, 2, 3, 4, 5,"}], max_tokens=1)
    assert c.usage is not None and chat.usage is not None
    assert c.usage.prompt_tokens == 14 and chat.usage.prompt_tokens > 14 + 10, (c.usage, chat.usage)
    assert choice.finish_reason in ("length", "stop")
    # The default length is OpenAI's 16 tokens.
    default = client.completions.create(model=SMOLLM2, prompt="Once upon a time", temperature=0)
    assert default.usage is not None and default.usage.completion_tokens <= 16


def test_gemma3_continues_prompts_as_llama_cpp_does(client: openai.OpenAI) -> None:
    """At temperature 0 each prompt goes on with llama.cpp's tokens up to its first near tie
    (two top logits under 0.6 apart, where two quantized implementations may differ)."""
    prompts = [p for p in json.loads(GEMMA3_REFERENCE.read_text())["prompts"] if p["clear_steps"] >= 3]
    assert len(prompts) >= 3, [p["clear_steps"] for p in prompts]
    for prompt in prompts:
        c = client.completions.create(
            model=GEMMA3, prompt=prompt["text"], max_tokens=prompt["clear_steps"], temperature=0,
        )
        assert c.choices[0].text == prompt["clear_text"], (prompt["text"][:40], c.choices[0].text)
        # The prompt's ids are llama.cpp's, <bos> first.
        assert c.usage is not None and c.usage.prompt_tokens == len(prompt["ids"])


def test_prompts_choices_and_usage(client: openai.OpenAI) -> None:
    c = client.completions.create(
        model="builtin:echo", prompt=["one two three", "four five"], n=2, max_tokens=2,
    )
    assert [(ch.index, ch.text) for ch in c.choices] == [(0, "one two"), (1, "one two"), (2, "four five"), (3, "four five")]
    assert c.choices[0].finish_reason == "length" and c.choices[2].finish_reason == "stop"
    # Each prompt counted once.
    assert c.usage is not None and c.usage.prompt_tokens == 5 and c.usage.completion_tokens == 8


def test_logprobs_and_echo(client: openai.OpenAI) -> None:
    c = client.completions.create(model=SMOLLM2, prompt="The sky is", max_tokens=6, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert lp is not None and lp.tokens and "".join(lp.tokens) == c.choices[0].text
    assert lp.token_logprobs is not None and all(x <= 0 for x in lp.token_logprobs)
    assert lp.top_logprobs is not None and all(1 <= len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    echoed = client.completions.create(model=SMOLLM2, prompt="The sky is", max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == "The sky is" + c.choices[0].text


def test_streaming_gives_the_same_text(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=SMOLLM2, prompt="Roses are red,", max_tokens=12, temperature=0)
    chunks = list(client.completions.create(
        model=SMOLLM2, prompt="Roses are red,", max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == whole.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "terse", "prompt": "x"}, "model"),
        ({"model": SMOLLM2, "prompt": "x", "suffix": "y"}, "suffix"),
        ({"model": SMOLLM2, "prompt": "x", "best_of": 2}, "best_of"),
        ({"model": SMOLLM2, "prompt": [1, 2, 3]}, "prompt"),
    ],
)
def test_refusals_name_the_field(client: openai.OpenAI, body: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**body)
    assert e.value.param == param
