"""The chat provider, timed: first token, total time, tokens streamed and failures by code."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from ragstream.domain.llm.chat import ChatChunk, ChatProvider, ChatProviderError, ChatRequest
from ragstream.domain.text import estimate_tokens
from ragstream.observability.metrics import Metrics

INTERNAL_ERROR = "INTERNAL_ERROR"


@dataclass
class MeteredChatProvider:
    """Wraps a provider; the answer code sees the same chunks and the same exceptions."""

    inner: ChatProvider
    metrics: Metrics

    @property
    def model(self) -> str:
        return self.inner.model

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        metrics = self.metrics
        started = time.perf_counter()
        first_token: float | None = None
        pieces: list[str] = []
        reported: int | None = None
        outcome = "stopped"  # cancelled, or closed by its reader before the end
        metrics.generation_started()
        try:
            async with contextlib.aclosing(self.inner.stream(request)) as chunks:
                async for chunk in chunks:
                    if chunk.text:
                        if first_token is None:
                            first_token = time.perf_counter() - started
                        pieces.append(chunk.text)
                    if chunk.usage is not None:
                        reported = chunk.usage.completion_tokens
                    yield chunk
            outcome = "ok"
        except ChatProviderError as exc:
            outcome = "failed"
            metrics.provider_failure(exc.code)
            raise
        except Exception:
            outcome = "failed"
            metrics.provider_failure(INTERNAL_ERROR)
            raise
        finally:
            tokens = reported if reported is not None else estimate_tokens("".join(pieces))
            metrics.generation_ended(
                outcome=outcome,
                tokens=tokens,
                first_token=first_token,
                total=time.perf_counter() - started,
            )

    async def aclose(self) -> None:
        await self.inner.aclose()


def metered(provider: ChatProvider, metrics: Metrics) -> ChatProvider:
    return MeteredChatProvider(provider, metrics) if metrics.enabled else provider
