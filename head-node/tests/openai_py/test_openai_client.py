"""The OpenAI-compatible API with the official `openai` package as the client: chat
(streaming and not) on builtin:echo and on an agent, models, embeddings on all-MiniLM-L6-v2,
and errors raised as the client's usual exceptions while the server keeps serving."""

import math
import struct
import threading

import httpx
import openai
import pytest
from conftest import MINILM, Cluster
from fleetproc import wait_until


def still_serving(cluster: Cluster) -> None:
    reply = cluster.client().chat.completions.create(model="builtin:echo", messages=[{"role": "user", "content": "still here"}])
    assert reply.choices[0].message.content == "still here"


def test_chat_completion(cluster: Cluster) -> None:
    reply = cluster.client().chat.completions.create(
        model="builtin:echo",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello big world"}],
        temperature=0.2,
        top_p=0.9,
        seed=1,
        stop=["never"],
    )
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == "builtin:echo"
    [choice] = reply.choices
    assert choice.message.role == "assistant" and choice.message.content == "hello big world"
    assert choice.finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (5, 3, 8)


def test_max_tokens_cuts_the_answer(cluster: Cluster) -> None:
    reply = cluster.client().chat.completions.create(
        model="builtin:echo", messages=[{"role": "user", "content": "one two three four"}], max_tokens=3
    )
    assert reply.choices[0].message.content == "one two three"
    assert reply.choices[0].finish_reason == "length"


def test_streaming(cluster: Cluster) -> None:
    stream = cluster.client().chat.completions.create(
        model="builtin:echo",
        messages=[{"role": "user", "content": "streamed back word by word"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed back word by word"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.completion_tokens == 5


@pytest.mark.asyncio
async def test_async_client_streams(cluster: Cluster) -> None:
    client = openai.AsyncOpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0)
    async with client:
        stream = await client.chat.completions.create(model="builtin:echo", messages=[{"role": "user", "content": "a b c"}], stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "a b c"


def test_an_agent_as_the_model(cluster: Cluster) -> None:
    reply = cluster.client().chat.completions.create(model="terse", messages=[{"role": "user", "content": "one two three"}])
    assert reply.choices[0].message.content == "one two" and reply.choices[0].finish_reason == "length"


def test_an_agent_that_asks_its_user_hears_that_nobody_can_answer(cluster: Cluster) -> None:
    """The OpenAI API cannot ask its client: the question is declined and the task goes on
    (echo answers with its tool's result), over both the chat and the Responses API."""
    ask = '<tool_call>{"name": "ask_user", "arguments": {"question": "Which city?"}}</tool_call>'
    client = cluster.client()
    reply = client.chat.completions.create(model="asker", messages=[{"role": "user", "content": ask}])
    content = reply.choices[0].message.content or ""
    assert content.startswith("the user declined to answer: nobody can answer"), content
    stream = client.chat.completions.create(model="asker", messages=[{"role": "user", "content": ask}], stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == content
    response = client.responses.create(model="asker", input=ask)
    assert response.output_text == content


def test_models(cluster: Cluster) -> None:
    models = {m.id: m.owned_by for m in cluster.client().models.list()}
    assert models["builtin:echo"] == "agentfleet"
    assert models[MINILM] == "agentfleet"
    assert models["terse"] == "agentfleet-agent"
    assert not [m for m in models if m.startswith("model:")]
    assert cluster.client().models.retrieve("terse").id == "terse"


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def f32(vector: list[float]) -> list[float]:
    """JSON floats are the f32 values' shortest decimal forms: compare as f32."""
    return list(struct.unpack(f"{len(vector)}f", struct.pack(f"{len(vector)}f", *vector)))


def test_embeddings(cluster: Cluster) -> None:
    texts = ["The cat sits outside", "The dog plays in the garden"]
    # The client asks for base64 unless told otherwise, and decodes it.
    default = cluster.client().embeddings.create(model=MINILM, input=texts)
    floats = cluster.client().embeddings.create(model=MINILM, input=texts, encoding_format="float")
    for reply in (default, floats):
        assert reply.model == MINILM and [e.index for e in reply.data] == [0, 1]
        assert all(len(e.embedding) == 384 for e in reply.data)
        assert reply.usage.prompt_tokens > 0 and reply.usage.total_tokens == reply.usage.prompt_tokens
        # sentence-transformers gives 0.2838 for this pair.
        assert cosine(reply.data[0].embedding, reply.data[1].embedding) == pytest.approx(0.2838, abs=1e-3)
    assert default.data[0].embedding == f32(floats.data[0].embedding)
    one = cluster.client().embeddings.create(model=MINILM, input="The cat sits outside")
    assert one.data[0].embedding == default.data[0].embedding


def test_errors_are_the_clients_exceptions(cluster: Cluster) -> None:
    client = cluster.client()
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=hi)  # type: ignore[arg-type]
    assert not_found.value.code == "model_not_found" and not_found.value.param == "model"
    still_serving(cluster)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")
    still_serving(cluster)
    for bad in (-1, 0):
        with pytest.raises(openai.BadRequestError) as bad_request:
            client.chat.completions.create(model="builtin:echo", messages=hi, max_tokens=bad)  # type: ignore[arg-type]
        assert bad_request.value.param == "max_tokens"
        still_serving(cluster)
    with pytest.raises(openai.BadRequestError) as nine:
        client.chat.completions.create(model="builtin:echo", messages=hi, n=9)  # type: ignore[arg-type]
    assert nine.value.param == "n" and "from 1 to 8" in nine.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="builtin:echo", messages=hi, temperature=3)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):  # a chat model cannot embed
        client.embeddings.create(model="builtin:echo", input="x")
    with pytest.raises(openai.BadRequestError):  # an embedding model cannot chat
        client.chat.completions.create(model=MINILM, messages=hi)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MINILM, input="x", dimensions=128)
    with pytest.raises(openai.APIStatusError) as too_large:
        client.chat.completions.create(model="builtin:echo", messages=[{"role": "user", "content": "x" * (2 << 20)}])
    assert too_large.value.status_code == 413
    still_serving(cluster)
    malformed = httpx.post(cluster.url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["error"]["type"] == "invalid_request_error"
    still_serving(cluster)


def waiting_in_engines(cluster: Cluster) -> float:
    """Requests waiting for room in the workers' engines, as /metrics reports them."""
    text = httpx.get(cluster.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("agentfleet:num_requests_waiting{"))


def test_a_busy_model_is_a_429_the_client_can_retry(cluster: Cluster) -> None:
    """The worker's engine refuses a request past its waiting limit; the kind of that failure
    (busy) travels with the task's Failed event, and the OpenAI API answers 429
    rate_limit_exceeded (which OpenAI clients retry), not a 500."""
    client = cluster.client()
    # A string of at least 3,000 characters keeps the one sequence generating for seconds.
    long = {"type": "json_schema", "json_schema": {"name": "long", "schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "minLength": 3000}}}}}
    hi = [{"role": "user", "content": "Write a long story."}]
    running = client.chat.completions.create(model="one-at-a-time", messages=hi, stream=True, response_format=long)  # type: ignore[arg-type]
    # Text has come: the engine's one sequence is taken (the first chunk, the role, comes
    # before the model is even loaded).
    next(chunk for chunk in running if chunk.choices and chunk.choices[0].delta.content)
    waiting: dict[str, object] = {}

    def wait_behind() -> None:
        try:
            waiting["reply"] = cluster.client().chat.completions.create(model="one-at-a-time", messages=hi, max_tokens=3)  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            waiting["error"] = e

    behind = threading.Thread(target=wait_behind)
    behind.start()
    wait_until(lambda: waiting_in_engines(cluster) >= 1, what="the second request to wait in the engine")
    with pytest.raises(openai.RateLimitError) as busy:
        client.chat.completions.create(model="one-at-a-time", messages=hi, max_tokens=3)  # type: ignore[arg-type]
    assert busy.value.code == "rate_limit_exceeded" and "busy" in busy.value.message, busy.value
    # A Responses stream has begun when the refusal comes: its failure event says the same.
    events = list(client.responses.create(model="one-at-a-time", input="hi", max_output_tokens=3, stream=True))
    failed = [e for e in events if e.type == "response.failed"]
    assert failed and failed[0].response.error is not None, [e.type for e in events]
    assert failed[0].response.error.code == "rate_limit_exceeded", failed[0].response.error
    running.close()  # the client goes: its task is canceled, the waiting one gets the room
    behind.join(timeout=60)
    assert "reply" in waiting, waiting
    still_serving(cluster)


def test_the_api_key(keyed_cluster: Cluster) -> None:
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError):
        keyed_cluster.client("wrong").chat.completions.create(model="builtin:echo", messages=hi)  # type: ignore[arg-type]
    reply = keyed_cluster.client("k3y").chat.completions.create(model="builtin:echo", messages=hi)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "hi"
