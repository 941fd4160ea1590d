"""The floors `bench/stream.py` measures ragstream's chat streaming against.

Both speak just enough graphql-transport-ws for the benchmark's client (connection_init, ack,
one subscribe, next messages, complete) and send each token as the same small JSON frame
ragstream sends for the benchmark's selection. No GraphQL, no database, no coalescing.

- ``proxy``: for each subscription, the stub's chat completion read over SSE with httpx, every
  content delta forwarded as its own frame (what any streaming proxy has to do at least).
- ``timer``: the same frames made by a timer, stamped as the stub stamps its tokens; no upstream.

Configured by BENCH_FLOOR_MODE, BENCH_STUB_URL, BENCH_TOKENS and BENCH_RATE; run with uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

STAMP_WIDTH = 16
STAMP_MODULO = 10**15


def frame(operation_id: str, event: dict[str, Any]) -> str:
    return json.dumps(
        {"id": operation_id, "type": "next", "payload": {"data": {"chat": event}}},
        separators=(",", ":"),
    )


async def proxied(client: httpx.AsyncClient, url: str) -> AsyncIterator[str]:
    """The content deltas of one streamed chat completion from the stub."""
    body = {"model": "bench", "messages": [{"role": "user", "content": "Stream please"}]}
    async with client.stream("POST", f"{url}/chat/completions", json={**body, "stream": True}) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            choices = json.loads(data).get("choices") or []
            text = choices[0].get("delta", {}).get("content") if choices else None
            if text:
                yield text


async def timed(tokens: int, rate: float) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(tokens):
        await asyncio.sleep(max(start + (i + 1) / rate - loop.time(), 0))
        yield f"{int(time.time() * 1_000_000) % STAMP_MODULO:0{STAMP_WIDTH - 1}d} "


def build_app() -> Starlette:
    mode = os.environ["BENCH_FLOOR_MODE"]
    url = os.environ.get("BENCH_STUB_URL", "")
    tokens = int(os.environ.get("BENCH_TOKENS", "200"))
    rate = float(os.environ.get("BENCH_RATE", "20"))
    client = httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=None))

    async def subscription(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol="graphql-transport-ws")
        with contextlib.suppress(WebSocketDisconnect):
            await websocket.receive_text()  # connection_init
            await websocket.send_text('{"type":"connection_ack"}')
            message = json.loads(await websocket.receive_text())
            operation_id = message["id"]
            offset = 0
            source = proxied(client, url) if mode == "proxy" else timed(tokens, rate)
            async for text in source:
                event = {"__typename": "TokenDelta", "offset": offset, "delta": text}
                await websocket.send_text(frame(operation_id, event))
                offset += len(text)
            done = {"__typename": "GenerationCompleted", "message": {"status": "COMPLETE"}}
            await websocket.send_text(frame(operation_id, done))
            await websocket.send_text(json.dumps({"id": operation_id, "type": "complete"}))
            await websocket.receive_text()

    async def healthz(_: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with client:
            yield

    return Starlette(
        routes=[Route("/healthz", healthz), WebSocketRoute("/graphql", subscription)],
        lifespan=lifespan,
    )
