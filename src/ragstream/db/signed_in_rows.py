"""A read and the viewer check in one statement: one round trip for a request's first read.

`signed_in_rows` wraps a read written for either kind of viewer (its rules, `readable_by`,
decide by the viewer's role) into one statement: first the row of `SIGNED_IN_WITH_FLAGS` (none
when the token's account or sign-in session is not live), then the read's rows for that
account. Each part fills its own columns and leaves the other's null, so the viewer's columns
travel once, not with every row. Which rule applies is known only once the viewer's row is
read: the read is written once for each kind of viewer, and each runs only for its kind (a
condition on the viewer's row alone, decided before any row of the read is scanned).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import CompoundSelect, Select, literal, null, select, true, type_coerce, union_all

from ragstream.db.models.users import User
from ragstream.db.repositories.flags import SIGNED_IN_WITH_FLAGS, signed_in_from_row
from ragstream.domain.users.enums import Role

# The columns of the viewer's part of a row (after the part number).
VIEWER_WIDTH = len(SIGNED_IN_WITH_FLAGS.selected_columns)


def signed_in_rows(
    read: Callable[[bool, Any], Select[Any]],
    ordering: Callable[[Any], Sequence[Any]],
) -> CompoundSelect[Any]:
    """``read(is_admin, viewer_id)``: the read for that kind of viewer, its id a column;
    ``ordering(columns)``: the read's order, over its columns named ``p_<name>``."""
    # Materialized: inlined, its flags subquery would run again for every row of the read.
    viewer = SIGNED_IN_WITH_FLAGS.cte("viewer").prefix_with("MATERIALIZED")
    admin = viewer.c.role == Role.ADMIN
    parts = [
        read(is_admin, viewer.c.id).where(admin if is_admin else ~admin)
        for is_admin in (True, False)
    ]
    page = union_all(*parts).lateral("page")

    def columns(of: Any, prefix: str, filled: bool) -> list[Any]:
        # Typed nulls: the result's types (and so its conversions) are the first part's.
        return [
            (column if filled else type_coerce(null(), column.type)).label(prefix + column.key)
            for column in of.c
        ]

    viewer_row = select(
        literal(0).label("part"), *columns(viewer, "v_", True), *columns(page, "p_", False)
    )
    read_rows = select(
        literal(1), *columns(viewer, "v_", False), *columns(page, "p_", True)
    ).select_from(viewer.join(page, true()))
    selected = viewer_row.selected_columns
    return union_all(viewer_row, read_rows).order_by(selected.part, *ordering(selected))


def split_signed_in(
    rows: Sequence[Sequence[Any]],
) -> tuple[tuple[User, str], list[Sequence[Any]]] | None:
    """The viewer (the account and its flags) and the read's rows, each from its first column
    on; None when no live account signed in."""
    if not rows:
        return None
    viewer = signed_in_from_row(rows[0][1 : 1 + VIEWER_WIDTH])
    return viewer, [row[1 + VIEWER_WIDTH :] for row in rows[1:]]
