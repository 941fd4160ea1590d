"""Chat providers: what they are given and what they return, and the configured one.

The providers themselves live beside this module (`openai_chat`, `extractive`) and are imported
only when configured: the OpenAI client library alone takes about half a second to import.

A provider turns a prompt into a stream of text deltas followed by the token usage. Failures are
raised as `ChatProviderError` with a stable code; the provider's own message is for the log only.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from ragstream.domain.chat.enums import FailureCode

Role = Literal["system", "user", "assistant"]

# Codes reported in GenerationFailed.code and stored on the failed message.
PROVIDER_UNAVAILABLE = FailureCode.PROVIDER_UNAVAILABLE
PROVIDER_ERROR = FailureCode.PROVIDER_ERROR
PROVIDER_TIMEOUT = FailureCode.PROVIDER_TIMEOUT


@dataclass(frozen=True)
class PromptMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class Passage:
    """A numbered source as the provider sees it."""

    index: int
    title: str
    content: str
    heading_path: tuple[str, ...] = ()  # the headings the passage stands under, outermost first


@dataclass(frozen=True)
class CriterionContext:
    name: str
    weight: float | None
    score: float | None
    notes: str | None


@dataclass(frozen=True)
class EvaluationContext:
    """The evaluation a conversation is linked to, as the provider sees it."""

    title: str
    company_name: str
    project_type: str
    status: str
    overall_score: float | None
    criteria: Sequence[CriterionContext]


@dataclass(frozen=True)
class ChatRequest:
    messages: Sequence[PromptMessage]  # the rendered prompt, for language models
    question: str  # the user's message, for answerers that work on passages directly
    passages: Sequence[Passage] = ()
    evaluation: EvaluationContext | None = None  # also rendered into ``messages``
    # Per request (from the asker's chat feature); None: the provider's configured ones.
    model: str | None = None
    max_output_tokens: int | None = None


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ChatChunk:
    text: str = ""
    usage: TokenUsage | None = None


class ChatProviderError(Exception):
    """A provider failure. ``detail`` is logged, never shown to a client."""

    def __init__(self, code: FailureCode, detail: str, *, retryable: bool) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.retryable = retryable


class ChatProvider(Protocol):
    @property
    def model(self) -> str:
        """The configured model."""
        ...

    @property
    def buffers_unread(self) -> bool:
        """Whether what it streams while nobody reads is kept for the next read (a network
        stream waits in its connection), so reading less often costs no time. A generator
        that makes its text only when asked for it does not."""
        ...

    def model_for(self, requested: str) -> str:
        """The model that answers a request for ``requested`` (stored with the answer)."""
        ...

    def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        """Text deltas in order, then (when known) one chunk carrying the usage.

        Raises ChatProviderError. Closing the iterator early stops the provider call.
        """
        ...

    async def aclose(self) -> None: ...
