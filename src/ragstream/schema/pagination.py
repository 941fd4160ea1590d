from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Generic, TypeVar

import strawberry

from ragstream.db.pagination import Page
from ragstream.domain.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

NodeT = TypeVar("NodeT")
RowT = TypeVar("RowT")

# The arguments of every connection field: `first: FirstArg = None, after: AfterArg = None`.
FirstArg = Annotated[
    int | None,
    strawberry.argument(
        description=f"Page size, at most {MAX_PAGE_SIZE} (default {DEFAULT_PAGE_SIZE})."
    ),
]
AfterArg = Annotated[
    str | None,
    strawberry.argument(description="Cursor to continue after (a page's endCursor)."),
]


@strawberry.type(description="Where a page sits in its list (Relay cursor connections).")
class PageInfo:
    has_next_page: bool = strawberry.field(description="More items follow this page.")
    has_previous_page: bool = strawberry.field(description="Items precede this page.")
    start_cursor: str | None = strawberry.field(description="Cursor of the first item.")
    end_cursor: str | None = strawberry.field(
        description="Cursor of the last item; pass it as `after` for the next page."
    )


@strawberry.type(description="One item of a connection with its cursor.")
class Edge(Generic[NodeT]):
    cursor: str = strawberry.field(description="Opaque position of this item.")
    node: NodeT = strawberry.field(description="The item.")


@strawberry.type(description="A page of items with cursors (Relay connection).")
class Connection(Generic[NodeT]):
    edges: list[Edge[NodeT]] = strawberry.field(description="The items of this page.")
    page_info: PageInfo = strawberry.field(description="Cursors and whether more pages exist.")
    counted: strawberry.Private[int | None]

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry leaves it untyped
        description="Number of items in the whole list."
    )
    def total_count(self) -> int:
        if self.counted is None:
            # The resolver reads `selects(info, "totalCount")` before deciding not to count.
            raise RuntimeError("the list was not counted")
        return self.counted


def to_connection(page: Page[RowT], convert: Callable[[RowT], NodeT]) -> Connection[NodeT]:
    return Connection(
        edges=[
            Edge(cursor=cursor, node=convert(item))
            for item, cursor in zip(page.items, page.cursors, strict=True)
        ],
        page_info=PageInfo(
            has_next_page=page.has_next_page,
            has_previous_page=page.has_previous_page,
            start_cursor=page.cursors[0] if page.cursors else None,
            end_cursor=page.cursors[-1] if page.cursors else None,
        ),
        counted=page.total_count,
    )
