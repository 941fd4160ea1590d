from __future__ import annotations

import uuid

from ragstream.domain.errors import NotFound, not_found


def parse_id(value: str, kind: str) -> uuid.UUID:
    """A malformed id names nothing that exists: the same NOT_FOUND as a missing one."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise not_found(kind) from None


__all__ = ["NotFound", "parse_id"]
