"""OpenAI clients for the worker's models, inside a Python agent's task.

``openai_client()`` is an ``openai.AsyncOpenAI`` whose HTTP transport never leaves the
process: a ``POST /v1/chat/completions`` goes to the native host, which reads the body as
the head's OpenAI door does and answers it from the models of the worker running the task
(local files, ``builtin:``, ``openai:``), streamed or whole, with tools under the model
family's grammar. The task is found at request time (``agents.current``), so one client
serves every task of the process; outside a task a request gets a 400 saying so.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import httpx2
import openai

from agentfleet import agents

#: The base URL the clients are given; no request to it leaves the process.
BASE_URL = "http://agentfleet.worker/v1"

#: The key the clients are given: the transport needs none (the OpenAI client wants one).
API_KEY = "agentfleet-in-process"


class _Transport(httpx2.AsyncBaseTransport):
    """Answers OpenAI's chat completions API from the current task's worker."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        ctx = agents.current.get(None)
        if ctx is None:
            return _error(
                400,
                "af.openai_client() answers inside a Python agent's task only (the worker "
                "running the task serves the models): call it from the agent's code",
            )
        if request.method != "POST" or not request.url.path.endswith("/chat/completions"):
            return _error(
                404,
                f"{request.method} {request.url.path}: the in-process API answers POST "
                "/v1/chat/completions only",
            )
        body = await request.aread()
        status, answer, chunks = await ctx._native.openai_chat(ctx._run, body)
        if chunks is None:
            return httpx2.Response(status, headers={"content-type": "application/json"}, content=answer)
        return httpx2.Response(status, headers={"content-type": "text/event-stream"}, stream=_Events(chunks))


class _Events(httpx2.AsyncByteStream):
    """A streamed completion's server-sent events, as the native host makes them."""

    def __init__(self, chunks: Any) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self._chunks.next()) is not None:
            yield bytes(chunk)

    async def aclose(self) -> None:
        # Closed before its end (the reader stopped): the generation stops too.
        self._chunks.close()


def _error(status: int, message: str) -> httpx2.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return httpx2.Response(status, headers={"content-type": "application/json"}, content=json.dumps(body).encode())


def http_client() -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` (the HTTP client openai 3 is built on) that answers
    OpenAI's chat completions API from the current task's worker: for OpenAI-compatible
    clients that take one (LangChain's ``ChatOpenAI`` as ``http_async_client``), with
    ``BASE_URL``."""
    return httpx2.AsyncClient(transport=_Transport(), base_url=BASE_URL, timeout=None)


def openai_client() -> openai.AsyncOpenAI:
    """An ``openai.AsyncOpenAI`` whose chat completions the current task's worker answers
    (``model``: a model id of the worker)."""
    # No retries: a refusal is the request's, and a busy model answers 429 after a wait.
    return openai.AsyncOpenAI(base_url=BASE_URL, api_key=API_KEY, http_client=http_client(), max_retries=0)
