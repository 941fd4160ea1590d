"""The vocabulary of chat. A leaf module: the models, the constraints and the schema use it."""

from __future__ import annotations

from enum import StrEnum


class MessageRole(StrEnum):
    USER = "USER"
    ASSISTANT = "ASSISTANT"


class MessageStatus(StrEnum):
    STREAMING = "STREAMING"
    COMPLETE = "COMPLETE"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"


class FailureCode(StrEnum):
    """Why an answer FAILED or was INTERRUPTED: stored on the message, never provider text."""

    PROVIDER_UNAVAILABLE = "PROVIDER_UNAVAILABLE"  # could not reach it, overloaded, 5xx, 429
    PROVIDER_ERROR = "PROVIDER_ERROR"  # refused the request, or broke off mid-answer
    PROVIDER_TIMEOUT = "PROVIDER_TIMEOUT"  # no first token or a stall longer than the limit
    RETRIEVAL_FAILED = "RETRIEVAL_FAILED"
    INTERRUPTED = "INTERRUPTED"
    CONVERSATION_DELETED = "CONVERSATION_DELETED"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"


_REASONS = {
    FailureCode.PROVIDER_UNAVAILABLE: "The language model could not be reached. Please try again.",
    FailureCode.PROVIDER_ERROR: "The language model stopped with an error. Please try again.",
    FailureCode.PROVIDER_TIMEOUT: "The language model took too long to answer. Please try again.",
    FailureCode.RETRIEVAL_FAILED: "The knowledge base could not be searched. Please try again.",
    FailureCode.INTERRUPTED: "The answer was interrupted by a server restart.",
    FailureCode.CONVERSATION_DELETED: "The conversation was deleted.",
    FailureCode.INTERNAL_SERVER_ERROR: "The answer failed because of an internal error.",
}


def failure_code(code: str) -> FailureCode:
    """A stored code as the enum; an unknown one (an older server's) reads as an internal error."""
    try:
        return FailureCode(code)
    except ValueError:
        return FailureCode.INTERNAL_SERVER_ERROR


def failure_reason(code: str) -> str:
    """A readable explanation of a failure code, for people (never provider text)."""
    return _REASONS[failure_code(code)]
