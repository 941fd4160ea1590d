"""Document status events on the broker: one topic per document, a JSON-shaped snapshot each."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Protocol

from ragstream.db.models.documents import Document
from ragstream.domain.documents.enums import DocumentStatus
from ragstream.domain.events import EventBroker


def document_topic(document_id: uuid.UUID) -> str:
    return f"document:{document_id}"


class HasStatus(Protocol):
    """A document row, or the status a write returned for one."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def status(self) -> DocumentStatus: ...
    @property
    def error(self) -> str | None: ...
    @property
    def chunk_count(self) -> int: ...
    @property
    def updated_at(self) -> datetime: ...


def status_snapshot(document: HasStatus) -> dict[str, Any]:
    return {
        "id": str(document.id),
        "status": document.status,
        "error": document.error,
        "chunkCount": document.chunk_count,
        "updatedAt": document.updated_at.isoformat(),
    }


async def publish_status(broker: EventBroker, document: HasStatus) -> None:
    await broker.publish(document_topic(document.id), status_snapshot(document))


def apply_snapshot(document: Document, payload: dict[str, Any]) -> None:
    """Bring a detached row up to date with an event (no database round trip)."""
    document.status = DocumentStatus(payload["status"])
    document.error = payload.get("error")
    document.chunk_count = int(payload.get("chunkCount") or 0)
    document.updated_at = datetime.fromisoformat(str(payload["updatedAt"]))
