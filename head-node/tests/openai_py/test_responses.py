"""The Responses API (`client.responses.create/parse/stream`, what current OpenAI SDK code
calls) on SmolLM2-135M-Instruct and an echo agent through the official `openai` client:
text answers with instructions, structured output parsed into a pydantic model, function
calls under `tool_choice="required"` whose results are answered, the typed event stream
(text and calls), logprobs when included, cut-off answers as `incomplete`, and bad input as
400s naming the Responses field while the server keeps serving."""

import json

import jsonschema
import openai
import pytest
from conftest import SMOLLM2, Cluster
from pydantic import BaseModel
from test_tools import ADD as CHAT_ADD

# The chat tests' function in the Responses API's flat shape.
ADD = {"type": "function", **CHAT_ADD["function"], "strict": True}  # type: ignore[dict-item]


class Place(BaseModel):
    city: str
    country: str


def test_text_answers_with_instructions_and_usage(cluster: Cluster) -> None:
    client = cluster.client()
    r = client.responses.create(
        model=SMOLLM2, instructions="You are a helpful assistant.", input="Say hello to Ada.", max_output_tokens=30,
        temperature=0.0,
    )
    assert r.id.startswith("resp_") and r.object == "response" and r.model == SMOLLM2
    assert r.output_text.strip(), r
    [item] = r.output
    assert item.type == "message" and item.role == "assistant" and item.content[0].type == "output_text"
    assert r.usage is not None and r.usage.input_tokens > 10 and 0 < r.usage.output_tokens <= 30
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "You are a helpful assistant." and r.tools == [] and r.tool_choice == "auto"
    # The same conversation as input items, an earlier answer among them, is answered too.
    again = client.responses.create(
        model=SMOLLM2, max_output_tokens=20, temperature=0.0,
        input=[
            {"role": "developer", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "input_text", "text": "Say hello to Ada."}]},
            *[o.model_dump() for o in r.output],
            {"role": "user", "content": "Now say goodbye."},
        ],
    )
    assert again.status in ("completed", "incomplete") and again.output_text.strip()


def test_a_cut_off_answer_is_incomplete(cluster: Cluster) -> None:
    # The "terse" agent echoes at most two tokens.
    r = cluster.client().responses.create(model="terse", input="one two three four")
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].status == "incomplete" and r.output_text == "one two"


def test_structured_output_parses_into_a_pydantic_model(cluster: Cluster) -> None:
    r = cluster.client().responses.parse(
        model=SMOLLM2, instructions="Extract the city and the country the sentence is about.",
        input="Last summer I flew to Lisbon, the capital of Portugal.", text_format=Place, max_output_tokens=60,
        temperature=0.0,
    )
    assert isinstance(r.output_parsed, Place), r
    assert r.output_parsed.city and r.output_parsed.country


def test_function_calls_parse_and_their_results_are_answered(cluster: Cluster) -> None:
    client = cluster.client()
    question = {"role": "user", "content": "What is 2 plus 40?"}
    r = client.responses.create(
        model=SMOLLM2, input=[question], tools=[ADD], tool_choice="required", max_output_tokens=60,  # type: ignore[list-item]
    )
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and r.status == "completed", r
    for call in calls:
        assert call.name == "add" and call.call_id and call.id == "fc_" + call.call_id
        jsonschema.validate(json.loads(call.arguments), ADD["parameters"])
    results = [{"type": "function_call_output", "call_id": c.call_id, "output": "42"} for c in calls]
    answer = client.responses.create(
        model=SMOLLM2, input=[question, *[c.model_dump() for c in calls], *results], tools=[ADD],  # type: ignore[list-item]
        max_output_tokens=40, temperature=0.0,
    )
    assert answer.status in ("completed", "incomplete") and answer.output, answer
    # A named function is called whatever the question.
    named = client.responses.create(
        model=SMOLLM2, input="Tell me a joke.", tools=[ADD], tool_choice={"type": "function", "name": "add"},  # type: ignore[list-item]
        max_output_tokens=60,
    )
    assert [o.name for o in named.output if o.type == "function_call"] == ["add"]


def test_text_streams_as_typed_events(cluster: Cluster) -> None:
    client = cluster.client()
    # A question SmolLM2 answers in one short sentence (an open one like "Name three
    # colors." can ramble past max_output_tokens, which ends in response.incomplete).
    ask = dict(instructions="You are a helpful assistant.", input="What is the capital of France?")
    with client.responses.stream(model=SMOLLM2, max_output_tokens=200, temperature=0.0, **ask) as stream:  # type: ignore[arg-type]
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"], kinds
    assert kinds[-1] == "response.completed" and "response.output_text.done" in kinds, kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas and deltas == final.output_text and "Paris" in deltas
    # The same request without streaming gives the same greedy answer.
    whole = client.responses.create(model=SMOLLM2, max_output_tokens=200, temperature=0.0, **ask)  # type: ignore[arg-type]
    assert whole.output_text == final.output_text
    # A cut-off answer ends with response.incomplete.
    cut = list(client.responses.create(model="terse", input="one two three", stream=True))
    assert cut[-1].type == "response.incomplete" and cut[-1].response.output_text == "one two"  # type: ignore[union-attr]


def test_calls_stream_as_function_call_items(cluster: Cluster) -> None:
    stream = cluster.client().responses.create(
        model=SMOLLM2, input="What is 5 plus 6?", tools=[ADD], tool_choice="required", max_output_tokens=60,  # type: ignore[list-item]
        stream=True,
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed", kinds
    added = next(e for e in events if e.type == "response.output_item.added")
    assert added.item.type == "function_call" and added.item.arguments == ""
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    jsonschema.validate(json.loads(done.arguments), ADD["parameters"])
    final = events[-1].response  # type: ignore[union-attr]
    assert [o.type for o in final.output] == ["function_call"] * len(final.output)


def test_logprobs_come_when_included(cluster: Cluster) -> None:
    r = cluster.client().responses.create(
        model=SMOLLM2, input="Say yes.", max_output_tokens=8, temperature=0.0,
        include=["message.output_text.logprobs"], top_logprobs=2,
    )
    part = r.output[0].content[0]  # type: ignore[union-attr]
    assert part.logprobs and len(part.logprobs) <= 8
    assert "".join(lp.token for lp in part.logprobs) == part.text
    for lp in part.logprobs:
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 2
        # Greedy: the chosen token is the most likely one.
        assert lp.top_logprobs[0].token == lp.token


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_x"}, "previous_response_id"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]},
         "input[0].content[0].type"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "frobnicate"}}}},
         "text.format.schema"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"input": [{"type": "function_call", "name": "add"}]}, "input[0].call_id"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(cluster: Cluster, extra: dict, param: str) -> None:
    client = cluster.client()
    body = {"model": SMOLLM2, "input": "hi", **extra}
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(**body)
    assert e.value.param == param, e.value
    # The server keeps serving.
    assert client.responses.create(model="terse", input="still here").output_text == "still here"
