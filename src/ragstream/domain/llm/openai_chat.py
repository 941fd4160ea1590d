"""Chat completions from any OpenAI-compatible endpoint, streamed, with usage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import openai
import orjson
from openai.types.chat import ChatCompletionMessageParam

from ragstream.domain.llm.chat import (
    PROVIDER_ERROR,
    PROVIDER_TIMEOUT,
    PROVIDER_UNAVAILABLE,
    ChatChunk,
    ChatProviderError,
    ChatRequest,
    PromptMessage,
    TokenUsage,
)
from ragstream.domain.llm.openai_client import openai_client
from ragstream.domain.llm.streaming_http import StreamingTransport
from ragstream.settings import Settings

logger = logging.getLogger(__name__)


def _message_param(message: PromptMessage) -> ChatCompletionMessageParam:
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.role == "assistant":
        return {"role": "assistant", "content": message.content}
    return {"role": "user", "content": message.content}


def _classify(exc: Exception) -> ChatProviderError:
    if isinstance(exc, ChatProviderError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return ChatProviderError(PROVIDER_TIMEOUT, str(exc), retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return ChatProviderError(PROVIDER_UNAVAILABLE, str(exc), retryable=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 429 or status >= 500 or status == 408:
            return ChatProviderError(PROVIDER_UNAVAILABLE, f"{status}: {exc}", retryable=True)
        return ChatProviderError(PROVIDER_ERROR, f"{status}: {exc}", retryable=False)
    if isinstance(exc, openai.APIError):  # an error event inside the stream
        return ChatProviderError(PROVIDER_ERROR, str(exc), retryable=True)
    return ChatProviderError(PROVIDER_ERROR, f"{type(exc).__name__}: {exc}", retryable=False)


async def _close_iterator(iterator: AsyncIterator[bytes]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


class SSEDecoder:
    """Server-sent events: returns the data of each complete event."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._pending = b""

    def feed_bytes(self, chunk: bytes) -> list[str]:
        """The data of every event completed by ``chunk`` (events may span reads).

        Whole events are cut out of the bytes at their blank line; an event that is one
        ``data:`` line, as a provider's chunks are, is taken without looking at its lines.
        """
        buffer = self._pending + chunk if self._pending else chunk
        if b"\r" in buffer:
            # CRLF and CR end lines too. A CR last may be the first half of a CRLF: kept.
            held = b"\r" if buffer.endswith(b"\r") else b""
            buffer = buffer[: len(buffer) - len(held)]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + held
        *events, self._pending = buffer.split(b"\n\n")
        found = []
        for event in events:
            if event.startswith(b"data: ") and b"\n" not in event:
                found.append(event[6:].decode("utf-8", errors="replace"))
                continue
            for line in event.split(b"\n"):
                self.feed(line.decode("utf-8", errors="replace"))
            data = self.feed("")
            if data is not None:
                found.append(data)
        return found

    def feed(self, line: str) -> str | None:
        """One line; the event's data when ``line`` is the blank line that ends it."""
        if not line:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        if line.startswith("data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(" ") else value)
        # Comments (":"), "event:", "id:" and "retry:" lines carry nothing we use.
        return None


def _storable(text: str) -> str:
    """``text`` with any lone UTF-16 surrogate (JSON can carry half of a pair, e.g. a character
    split across two events) as U+FFFD: such text can be neither stored nor sent on."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def parse_chunk(data: str) -> ChatChunk:
    """One streamed chat completion chunk: its text delta and, in the last one, the usage."""
    text, usage = _parse_chunk(data)
    return ChatChunk(text=text, usage=usage)


def _parse_chunk(data: str) -> tuple[str, TokenUsage | None]:
    """`parse_chunk` as a pair: the stream joins a read's deltas into one chunk of its own."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:  # half of a surrogate pair, which orjson refuses and the text may still carry
            payload = json.loads(data)
        except ValueError:
            raise ChatProviderError(
                PROVIDER_ERROR, "malformed stream event", retryable=True
            ) from None
    if not isinstance(payload, dict):
        raise ChatProviderError(PROVIDER_ERROR, "malformed stream event", retryable=True)
    if payload.get("error"):
        # The provider's message is kept for the log only.
        raise ChatProviderError(PROVIDER_ERROR, str(payload["error"]), retryable=True)
    text = ""
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            text = delta["content"]
            if not text.isascii():
                text = _storable(text)
    usage = None
    reported = payload.get("usage")
    if isinstance(reported, dict):
        usage = TokenUsage(
            prompt_tokens=int(reported.get("prompt_tokens") or 0),
            completion_tokens=int(reported.get("completion_tokens") or 0),
        )
    return text, usage


class _Watchdog:
    """The first-token and stall limits of one streamed response, for its reads only.

    One timer cancels the reading task if the deadline passed while it waits for a read (the
    time the caller spends between chunks is not the provider's; a paced read's wait for its
    tick, at most a coalescing window, is counted as reading). Moving the deadline later is
    an assignment, and the timer is re-armed only when it fires; an `asyncio.timeout` around
    each read would cost about 10 µs per token.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._reading = False
        self._fired = False
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(deadline, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if self._reading and now >= self.deadline and self._task is not None:
            self._fired = True
            self._timer = None
            self._task.cancel()
            return
        # Not reading now: look again once the caller had a moment to come back for more.
        self._timer = self._loop.call_at(max(self.deadline, now + 0.05), self._check)

    def move(self, deadline: float) -> None:
        self.deadline = deadline
        if self._timer is not None and deadline < self._timer.when():
            self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._check)

    async def read(self, reads: AsyncIterator[bytes]) -> bytes:
        self._reading = True
        try:
            return await anext(reads)
        finally:
            self._reading = False

    def fired(self) -> bool:
        """Whether the cancellation being handled is this watchdog's (and only its)."""
        return self._fired and self._task is not None and self._task.uncancel() == 0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@dataclass
class OpenAIChatProvider:
    """Chat completions streamed with usage, from any OpenAI-compatible base URL.

    Retries (with jittered exponential backoff) happen only while nothing has been emitted:
    once a token reached the caller, a retry would repeat or contradict it.
    """

    client: openai.AsyncOpenAI
    model: str
    max_output_tokens: int | None = None
    temperature: float | None = None
    first_token_timeout: float = 60.0
    stall_timeout: float = 30.0
    max_retries: int = 2
    backoff: float = 0.5
    _rng: random.Random = field(default_factory=random.Random, repr=False)
    buffers_unread = True  # what the endpoint sends meanwhile waits in the connection

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIChatProvider:
        client = openai_client(
            settings,
            max_retries=0,  # retried here, and only before the first token
            timeout=openai.Timeout(
                settings.chat_timeout_seconds,
                connect=10.0,
                # A backstop only: first-token and stall limits are enforced per read below.
                read=max(
                    settings.chat_first_token_timeout_seconds,
                    settings.chat_stall_timeout_seconds,
                )
                + 5.0,
            ),
            transport=StreamingTransport(),
        )
        return cls(
            client=client,
            model=settings.chat_model,
            max_output_tokens=settings.chat_max_output_tokens,
            temperature=settings.chat_temperature,
            first_token_timeout=settings.chat_first_token_timeout_seconds,
            stall_timeout=settings.chat_stall_timeout_seconds,
            max_retries=settings.chat_max_retries,
            backoff=settings.chat_retry_backoff_seconds,
        )

    def model_for(self, requested: str) -> str:
        return requested

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        attempt = 0
        while True:
            emitted = False
            try:
                async with contextlib.aclosing(self._attempt(request)) as chunks:
                    async for chunk in chunks:
                        emitted = emitted or bool(chunk.text)
                        yield chunk
                return
            except ChatProviderError as exc:
                if emitted or not exc.retryable or attempt >= self.max_retries:
                    raise
                delay = self.backoff * (2**attempt) * (0.5 + self._rng.random())
                logger.info("chat provider attempt %d failed (%s); retrying", attempt + 1, exc)
                attempt += 1
                await asyncio.sleep(delay)

    async def _attempt(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.first_token_timeout
        messages = [_message_param(m) for m in request.messages]
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.timeout_at(deadline):
                    # The raw event stream of the same request: the client's typed chunks cost
                    # about 175 µs each to build, reading the three fields we need about 4 µs.
                    response = await stack.enter_async_context(
                        self.client.chat.completions.with_streaming_response.create(
                            model=request.model or self.model,
                            # The messages go in the body as they are: plain role and text
                            # pairs, which the client's transform of its typed parameters
                            # (~0.65 ms a request for a prompt of a few KB) returns unchanged.
                            messages=[],
                            extra_body={"messages": messages},
                            stream=True,
                            stream_options={"include_usage": True},
                            max_tokens=(
                                request.max_output_tokens or self.max_output_tokens or openai.omit
                            ),
                            temperature=openai.omit
                            if self.temperature is None
                            else self.temperature,
                        )
                    )
            except TimeoutError:
                raise ChatProviderError(
                    PROVIDER_TIMEOUT, "no response before the first-token timeout", retryable=True
                ) from None
            except Exception as exc:
                raise _classify(exc) from exc
            # Closing the byte iterator and the response (on exit) stops the provider call.
            # Bytes rather than lines: under load one read holds several events, and they
            # are handled (and passed on) together.
            reads = response.iter_bytes()
            stack.push_async_callback(_close_iterator, reads)
            watchdog = _Watchdog(deadline)
            stack.callback(watchdog.close)
            events = SSEDecoder()
            while True:
                try:
                    data = await watchdog.read(reads)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if watchdog.fired():
                        raise ChatProviderError(
                            PROVIDER_TIMEOUT, "the stream stalled", retryable=True
                        ) from None
                    raise
                except Exception as exc:  # the connection broke while reading the body
                    raise ChatProviderError(
                        PROVIDER_UNAVAILABLE, f"{type(exc).__name__}: {exc}", retryable=True
                    ) from exc
                # Every complete event of the read, passed on as one chunk.
                text: list[str] = []
                usage: TokenUsage | None = None
                done = False
                failure: ChatProviderError | None = None
                for event in events.feed_bytes(data):
                    if event == "[DONE]":
                        done = True
                        break
                    try:
                        delta, reported = _parse_chunk(event)
                    except ChatProviderError as exc:
                        failure = exc  # after the text that came before it
                        break
                    if delta:
                        text.append(delta)
                    usage = reported or usage
                if text:
                    watchdog.move(loop.time() + self.stall_timeout)
                if text or usage:
                    yield ChatChunk(text="".join(text), usage=usage)
                if failure is not None:
                    raise failure
                if done:
                    return

    async def aclose(self) -> None:
        await self.client.close()
