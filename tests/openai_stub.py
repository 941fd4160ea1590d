"""A local server speaking the OpenAI HTTP protocol, for tests of the `openai` providers.

It answers ``POST /v1/embeddings`` with deterministic vectors and records every request. Faults
are injected per endpoint: ``fail(path, times, status)`` answers errors, ``hold(path)`` parks
requests until ``release(path)``. More endpoints (e.g. streamed ``/v1/chat/completions``) are
added by subclassing and extending ``routes()``, or by passing ``extra_routes``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ragstream.domain.llm.embeddings import HashingEmbedder

EMBEDDINGS = "/v1/embeddings"


@dataclass
class RecordedRequest:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class _Fault:
    times: int
    status: int
    message: str


@dataclass
class _Gate:
    event: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0


class OpenAIStub:
    """Start with ``async with OpenAIStub() as stub``; point the client at ``stub.base_url``."""

    def __init__(self, *, extra_routes: Sequence[BaseRoute] = ()) -> None:
        self.requests: list[RecordedRequest] = []
        self._faults: dict[str, _Fault] = {}
        self._gates: dict[str, _Gate] = {}
        self._embedders: dict[int, HashingEmbedder] = {}
        self._extra_routes = list(extra_routes)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    # --- fault injection -------------------------------------------------------------------

    def fail(
        self, path: str, times: int = 1, status: int = 503, message: str = "overloaded"
    ) -> None:
        """Answer the next ``times`` requests to ``path`` with an error (-1: until cleared)."""
        self._faults[path] = _Fault(times, status, message)

    def clear_faults(self) -> None:
        self._faults.clear()

    def hold(self, path: str) -> None:
        """Park requests to ``path`` (they wait, unanswered) until ``release``."""
        self._gates[path] = _Gate()

    def release(self, path: str) -> None:
        gate = self._gates.pop(path, None)
        if gate is not None:
            gate.event.set()

    def waiting(self, path: str) -> int:
        gate = self._gates.get(path)
        return gate.waiting if gate else 0

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    async def gate(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        """Record the request and apply faults and holds; a returned response ends it."""
        body = json.loads(await request.body() or b"{}")
        path = request.url.path
        self.requests.append(RecordedRequest(path, body, dict(request.headers)))
        gate = self._gates.get(path)
        if gate is not None:
            gate.waiting += 1
            try:
                await gate.event.wait()
            finally:
                gate.waiting -= 1
        fault = self._faults.get(path)
        if fault is not None and fault.times != 0:
            if fault.times > 0:
                fault.times -= 1
            return body, error_response(fault.status, fault.message)
        return body, None

    # --- endpoints ---------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [Route(EMBEDDINGS, self.embeddings, methods=["POST"]), *self._extra_routes]

    def vector(self, text: str, dimensions: int) -> list[float]:
        embedder = self._embedders.setdefault(dimensions, HashingEmbedder(dimensions))
        return embedder.embed_one(text)

    async def embeddings(self, request: Request) -> Response:
        body, early = await self.gate(request)
        if early is not None:
            return early
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(i, str) for i in inputs)
        ):
            return error_response(400, "input must be a string or a list of strings")
        dimensions = int(body.get("dimensions") or 1536)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vector = self.vector(text, dimensions)
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(text.split()) for text in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "stub"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = Starlette(routes=self.routes())
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for path in list(self._gates):
            self.release(path)
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    async def __aenter__(self) -> OpenAIStub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def error_response(status: int, message: str) -> Response:
    kind = "rate_limit_exceeded" if status == 429 else "server_error"
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": None}},
        status_code=status,
        # Keeps the client's own retries quick in tests.
        headers={"retry-after-ms": "10"},
    )


@contextlib.asynccontextmanager
async def running_stub(stub: OpenAIStub | None = None) -> AsyncIterator[OpenAIStub]:
    stub = stub or OpenAIStub()
    async with stub:
        yield stub
