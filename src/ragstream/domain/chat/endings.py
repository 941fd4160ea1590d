"""How an answer ends: the message statuses and failure codes the generation parts use."""

from __future__ import annotations

from ragstream.domain.chat.enums import FailureCode, MessageStatus
from ragstream.domain.chat.views import MessageView

STREAMING = MessageStatus.STREAMING
COMPLETE = MessageStatus.COMPLETE
CANCELLED = MessageStatus.CANCELLED
FAILED = MessageStatus.FAILED
INTERRUPTED = MessageStatus.INTERRUPTED

# Failure codes besides the provider's (domain/llm/chat.py); their texts: enums.failure_reason.
RETRIEVAL_FAILED = FailureCode.RETRIEVAL_FAILED
INTERNAL_ERROR = FailureCode.INTERNAL_SERVER_ERROR
CONVERSATION_DELETED = FailureCode.CONVERSATION_DELETED


def ending_code(view: MessageView) -> str | None:
    """None for an answer that completed or was cancelled, else why it did not complete.

    An answer still STREAMING that nothing generates any more (its end could not be stored)
    counts as interrupted, as it will be at the next start-up.
    """
    if view.status in (COMPLETE, CANCELLED):
        return None
    return view.error_code or INTERRUPTED
