"""Validation of connection arguments, shared by every list in the API."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ragstream.db.pagination import InvalidCursor, PageRequest
from ragstream.domain.errors import InvalidInput

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def page_request(first: int | None, after: str | None, *, count: bool = True) -> PageRequest:
    """``count=False`` when the list's total is not asked for."""
    size = DEFAULT_PAGE_SIZE if first is None else first
    if size < 0 or size > MAX_PAGE_SIZE:
        raise InvalidInput(f"first must be between 0 and {MAX_PAGE_SIZE}", field="first")
    return PageRequest(first=size, after=after or None, count=count)


@contextlib.contextmanager
def cursor_errors() -> Iterator[None]:
    """Report a malformed `after` cursor as the client's mistake, not a server error."""
    try:
        yield
    except InvalidCursor as exc:
        raise InvalidInput("after is not a valid cursor", field="after") from exc
