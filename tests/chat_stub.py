"""Streamed chat completions for the OpenAI stub server (``POST /v1/chat/completions``).

`ChatStub` is the `OpenAIStub` (embeddings, recorded requests, `fail`/`hold` faults) plus the
chat endpoint speaking the real SSE wire format: a role chunk, content chunks, a finish chunk,
the usage chunk when ``stream_options.include_usage`` is set, then ``[DONE]``. A `ChatScript`
decides what the next answers look like: the tokens, their pace, and faults (an error event or
a dropped connection mid-stream, a stall). The stub counts started, finished and abandoned
streams, so tests can see that a cancel really stopped the provider call.

Run as a program (``python -m tests.chat_stub``; it prints its port) it serves a steady token
stream for benchmarks; every token is then the emission time in microseconds, so a client can
measure how far behind the provider it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from tests.openai_stub import OpenAIStub

CHAT_COMPLETIONS = "/v1/chat/completions"
STAMP_WIDTH = 16  # "%015d " : microseconds modulo 10**15, then a space


@dataclass
class ChatScript:
    """What the stub streams for each chat completion request."""

    tokens: Sequence[str] = ("Hello", " from", " the", " stub", ".")
    delay: float = 0.0  # seconds before each token
    include_usage: bool = True  # send the usage chunk when the client asks for it
    error_after: int | None = None  # after this many tokens, send an error event
    error_message: str = "upstream exploded: secret-provider-detail-42"
    drop_after: int | None = None  # after this many tokens, drop the connection
    stall_after: int | None = None  # after this many tokens, send nothing more (keep open)
    # After this many tokens, wait until `resume` is set (the test decides when the rest comes).
    hold_after: int | None = None
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    # Benchmark mode: `count` tokens at `rate` per second, each its own emission time.
    stamp: bool = False
    count: int = 0
    rate: float = 0.0


@dataclass
class StreamRecord:
    """One streamed answer as the stub saw it."""

    emitted: int = 0
    finished: bool = False
    abandoned: bool = False  # the client went away before the end
    progress: asyncio.Event = field(default_factory=asyncio.Event)


def stamp_token() -> str:
    return f"{int(time.time() * 1_000_000) % 10**15:015d} "


def parse_stamps(text: str) -> list[float]:
    """Emission times (seconds, modulo 10**9) of the stamp tokens in ``text``."""
    stamps = []
    for i in range(0, len(text) - STAMP_WIDTH + 1, STAMP_WIDTH):
        token = text[i : i + STAMP_WIDTH - 1]
        if token.isdigit():
            stamps.append(int(token) / 1_000_000)
    return stamps


class ChatStub(OpenAIStub):
    def __init__(self, *, extra_routes: Sequence[BaseRoute] = ()) -> None:
        super().__init__(extra_routes=extra_routes)
        self.script = ChatScript()
        self.streams: list[StreamRecord] = []
        self._stream_started = asyncio.Event()

    def routes(self) -> list[BaseRoute]:
        return [*super().routes(), Route(CHAT_COMPLETIONS, self.chat_completions, methods=["POST"])]

    # --- observation -------------------------------------------------------------------------

    @property
    def abandoned(self) -> int:
        return sum(1 for s in self.streams if s.abandoned)

    async def wait_for_tokens(self, count: int, stream: int = -1) -> StreamRecord:
        """Waits until the given stream (default: the latest) has emitted ``count`` tokens."""
        while not self.streams:
            self._stream_started.clear()
            await self._stream_started.wait()
        record = self.streams[stream]
        while record.emitted < count and not record.finished and not record.abandoned:
            record.progress.clear()
            await record.progress.wait()
        return record

    def last_messages(self) -> list[dict[str, Any]]:
        """The prompt of the latest chat request."""
        messages: list[dict[str, Any]] = self.requests_to(CHAT_COMPLETIONS)[-1].body["messages"]
        return messages

    # --- the endpoint ------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        body, early = await self.gate(request)
        if early is not None:
            return early
        if not body.get("stream"):
            return Response("this stub only streams", status_code=400)
        script = self.script
        record = StreamRecord()
        self.streams.append(record)
        self._stream_started.set()
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        model = str(body.get("model", "stub"))
        return StreamingResponse(
            self._events(script, record, model, usage, prompt_chars),
            media_type="text/event-stream",
        )

    async def _events(
        self, script: ChatScript, record: StreamRecord, model: str, usage: bool, prompt_chars: int
    ) -> AsyncIterator[bytes]:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            payload = {
                "id": "chatcmpl-stub",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(payload)}\n\n".encode()

        try:
            yield chunk({"role": "assistant", "content": ""})
            total = script.count if script.stamp else len(script.tokens)
            start = time.monotonic()
            for i in range(total):
                if script.error_after is not None and i == script.error_after:
                    error = {"error": {"message": script.error_message, "type": "server_error"}}
                    yield f"data: {json.dumps(error)}\n\n".encode()
                    record.finished = True
                    return
                if script.drop_after is not None and i == script.drop_after:
                    raise ConnectionAbortedError("stub drops the connection")
                if script.stall_after is not None and i == script.stall_after:
                    await asyncio.Event().wait()  # until the client gives up
                if script.hold_after is not None and i == script.hold_after:
                    await script.resume.wait()
                if script.stamp:
                    await asyncio.sleep(max(0.0, start + i / script.rate - time.monotonic()))
                    token = stamp_token()
                else:
                    if script.delay:
                        await asyncio.sleep(script.delay)
                    token = script.tokens[i]
                yield chunk({"content": token})
                record.emitted += 1
                record.progress.set()
            yield chunk({}, finish="stop")
            if usage and script.include_usage:
                payload = {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": math.ceil(prompt_chars / 4),
                        "completion_tokens": record.emitted,
                        "total_tokens": math.ceil(prompt_chars / 4) + record.emitted,
                    },
                }
                yield f"data: {json.dumps(payload)}\n\n".encode()
            yield b"data: [DONE]\n\n"
            record.finished = True
        finally:
            if not record.finished:
                record.abandoned = True
            record.progress.set()


async def _serve(count: int, rate: float) -> None:
    stub = ChatStub()
    stub.script = ChatScript(stamp=True, count=count, rate=rate)
    # Benchmarks keep no request log: it would grow with every answer.
    stub.requests = _NoLog()
    async with stub:
        print(stub.port, flush=True)
        await asyncio.Event().wait()


class _NoLog(list[Any]):
    def append(self, item: Any) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description="Stand-alone OpenAI chat stub for benchmarks.")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per answer")
    parser.add_argument("--rate", type=float, default=20.0, help="tokens per second per answer")
    args = parser.parse_args()
    asyncio.run(_serve(args.tokens, args.rate))


if __name__ == "__main__":
    main()
