"""The vocabulary of documents. A leaf module: the models, the constraints and the schema use it."""

from __future__ import annotations

from enum import StrEnum


class DocumentStatus(StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    READY = "READY"
    FAILED = "FAILED"


class Visibility(StrEnum):
    PRIVATE = "PRIVATE"
    SHARED = "SHARED"


# Ingestion is queued or running; reprocessing such a document does nothing.
UNFINISHED_STATUSES = (DocumentStatus.PENDING, DocumentStatus.PROCESSING)
# Status events end here.
TERMINAL_STATUSES = frozenset({DocumentStatus.READY, DocumentStatus.FAILED})
