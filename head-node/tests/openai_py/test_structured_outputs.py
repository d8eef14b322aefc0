"""Structured outputs on a local model (SmolLM2-135M-Instruct) through the official `openai`
client: 200 answers under a JSON schema all validate (`jsonschema`), `parse()` with a pydantic
model returns the model, `json_object` answers are objects (streamed too), and a schema the
grammar engine cannot follow is a 400 naming it while the server keeps serving."""

import asyncio
import json

import httpx
import jsonschema
import openai
import pydantic
import pytest
from conftest import SMOLLM2, Cluster

SYSTEM = "You are a careful assistant. Answer every question in the JSON format you are given, briefly."

VERDICT = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["yes", "no", "unsure"]},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        "reason": {"type": "string", "maxLength": 40},
    },
    "required": ["answer", "confidence", "reason"],
    "additionalProperties": False,
}

SUBJECTS = ["the sun", "water", "a cat", "the moon", "iron", "a tree", "the sea", "snow", "a bird", "glass"]
QUESTIONS = ["Is {} hot?", "Is {} alive?", "Can {} fly?", "Is {} heavy?", "Is {} blue?",
             "Does {} float?", "Is {} bigger than a house?", "Can you eat {}?", "Is {} old?", "Is {} loud?",
             "Does {} shine?", "Is {} soft?", "Can {} swim?", "Is {} rare?", "Is {} made by people?",
             "Does {} move?", "Is {} cold?", "Is {} dangerous?", "Is {} green?", "Can {} grow?"]


def test_200_answers_under_a_json_schema_validate(cluster: Cluster) -> None:
    prompts = [q.format(s) for q in QUESTIONS for s in SUBJECTS]
    assert len(prompts) == 200
    response_format = {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True, "schema": VERDICT}}

    async def ask_all() -> list[tuple[str, str | None]]:
        client = openai.AsyncOpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0, timeout=600)

        async def ask(i: int, prompt: str) -> tuple[str, str | None]:
            reply = await client.chat.completions.create(
                model=SMOLLM2,
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                response_format=response_format,  # type: ignore[arg-type]
                max_tokens=120,
                temperature=0.0 if i % 2 == 0 else 0.8,
                seed=i,
            )
            return reply.choices[0].finish_reason, reply.choices[0].message.content

        try:
            return await asyncio.gather(*(ask(i, p) for i, p in enumerate(prompts)))
        finally:
            await client.close()

    answers = asyncio.run(ask_all())
    for prompt, (finish, content) in zip(prompts, answers):
        assert finish == "stop" and content is not None, (prompt, finish, content)
        jsonschema.validate(json.loads(content), VERDICT)
    # Not all the same answer: the model answered the questions, the grammar only shaped them.
    assert len({json.loads(c)["answer"] for _, c in answers if c}) >= 2


class City(pydantic.BaseModel):
    name: str
    country: str
    is_capital: bool


def test_parse_with_a_pydantic_model(cluster: Cluster) -> None:
    client = cluster.client()
    parse = client.beta.chat.completions.parse if hasattr(client, "beta") and hasattr(client.beta, "chat") else client.chat.completions.parse
    reply = parse(
        model=SMOLLM2,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Describe Paris."}],
        response_format=City,
        max_tokens=80,
    )
    city = reply.choices[0].message.parsed
    assert isinstance(city, City), reply
    assert city.name and city.country


def test_json_object_answers_are_objects_streamed_or_not(cluster: Cluster) -> None:
    client = cluster.client()
    messages = [{"role": "user", "content": "Give the name and color of a fruit as JSON."}]
    reply = client.chat.completions.create(model=SMOLLM2, messages=messages, response_format={"type": "json_object"}, max_tokens=60)  # type: ignore[arg-type]
    assert reply.choices[0].finish_reason == "stop", reply
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    stream = client.chat.completions.create(model=SMOLLM2, messages=messages, response_format={"type": "json_object"}, max_tokens=60, stream=True)  # type: ignore[arg-type]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == reply.choices[0].message.content


def test_a_bad_schema_is_a_400_naming_it(cluster: Cluster) -> None:
    client = cluster.client()
    hi = [{"role": "user", "content": "hi"}]
    for schema in ({"type": "frobnicate"}, {"$ref": "#/$defs/missing"}):
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(
                model=SMOLLM2,
                messages=hi,  # type: ignore[arg-type]
                response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},  # type: ignore[typeddict-item]
            )
        assert bad.value.param == "response_format.json_schema.schema"
        assert "invalid output format" in str(bad.value.message)
    # builtin:echo follows no format: refused, with the reason.
    with pytest.raises(openai.BadRequestError) as echo:
        client.chat.completions.create(model="builtin:echo", messages=hi, response_format={"type": "json_object"})  # type: ignore[arg-type]
    assert "output format" in str(echo.value.message)
    reply = client.chat.completions.create(model="builtin:echo", messages=[{"role": "user", "content": "still here"}])
    assert reply.choices[0].message.content == "still here"


PLACE = {
    "type": "object",
    "required": ["city", "country"],
    "additionalProperties": False,
    "properties": {"city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30}},
}


def test_an_agent_with_an_output_schema_answers_a2a_with_a_data_part(cluster: Cluster) -> None:
    # `extractor` has the output schema in fleet.toml; A2A clients get its JSON as data.
    base = f"{cluster.url}/a2a/extractor"
    msg = {"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "I flew to Lisbon last spring."}]}}
    task = httpx.post(base + "/message:send", json=msg, timeout=60).json()["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED", task
    [part] = task["artifacts"][0]["parts"]
    jsonschema.validate(part["data"], PLACE)
    assert part["mediaType"] == "application/json"
    # Streamed: text chunks as they come, then the whole answer as data, replacing them.
    with httpx.stream("POST", base + "/message:stream", json=msg, timeout=60) as response:
        items = [json.loads(line.removeprefix("data:")) for line in response.iter_lines() if line.startswith("data:")]
    updates = [i["artifactUpdate"] for i in items if "artifactUpdate" in i]
    assert updates and all("text" in u["artifact"]["parts"][0] for u in updates[:-1])
    last = updates[-1]
    assert last["lastChunk"] and not last["append"]
    assert last["artifact"]["parts"][0]["data"] == part["data"]  # temperature 0: the same answer
    # A 0.3 client gets the 0.3 shape of the part.
    old = httpx.post(f"{cluster.url}/a2a/extractor", headers={"A2A-Version": "0.3"}, timeout=60,
                     json={"jsonrpc": "2.0", "id": 1, "method": "message/send",
                           "params": {"message": {"kind": "message", "messageId": "m2", "role": "user", "parts": [{"kind": "text", "text": "Paris is lovely."}]}}}).json()
    [old_part] = old["result"]["artifacts"][0]["parts"]
    assert old_part["kind"] == "data"
    jsonschema.validate(old_part["data"], PLACE)
