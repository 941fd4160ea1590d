"""How an answer ends: the message statuses, the failure codes and what a client is told."""

from __future__ import annotations

from ragstream.domain.chat.views import MessageView
from ragstream.domain.llm.chat import PROVIDER_ERROR, PROVIDER_TIMEOUT, PROVIDER_UNAVAILABLE

STREAMING = "STREAMING"
COMPLETE = "COMPLETE"
CANCELLED = "CANCELLED"
FAILED = "FAILED"
INTERRUPTED = "INTERRUPTED"

# Failure codes besides the provider's (domain/llm/chat.py).
RETRIEVAL_FAILED = "RETRIEVAL_FAILED"
INTERNAL_ERROR = "INTERNAL_SERVER_ERROR"
CONVERSATION_DELETED = "CONVERSATION_DELETED"

FAILURE_MESSAGES = {
    PROVIDER_UNAVAILABLE: "The language model could not be reached. Please try again.",
    PROVIDER_ERROR: "The language model stopped with an error. Please try again.",
    PROVIDER_TIMEOUT: "The language model took too long to answer. Please try again.",
    RETRIEVAL_FAILED: "The knowledge base could not be searched. Please try again.",
    INTERRUPTED: "The answer was interrupted by a server restart.",
    CONVERSATION_DELETED: "The conversation was deleted.",
    INTERNAL_ERROR: "The answer failed because of an internal error.",
}


def failure_message(code: str) -> str:
    return FAILURE_MESSAGES.get(code, FAILURE_MESSAGES[INTERNAL_ERROR])


def ending_code(view: MessageView) -> str | None:
    """None for an answer that completed or was cancelled, else why it did not complete.

    An answer still STREAMING that nothing generates any more (its end could not be stored)
    counts as interrupted, as it will be at the next start-up.
    """
    if view.status in (COMPLETE, CANCELLED):
        return None
    return view.error_code or INTERRUPTED
