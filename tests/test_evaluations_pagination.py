"""Evaluation lists: keyset cursors, every order and filter, page-size and cursor errors."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from ragstream.db.pagination import encode_cursor
from tests.evaluations_support import DELETE, LIST, UPDATE, create_evaluation
from tests.support import Account, LiveServer

# title, companyName, projectType, status, scores of the criteria
SEED: list[tuple[str, str, str, str, list[float | None]]] = [
    ("delta", "Acme Corp", "NEW_ERP", "DRAFT", [3.0]),
    ("Alpha", "Globex", "ERP_MIGRATION", "IN_PROGRESS", [None]),
    ("charlie", "Initech", "ERP_UPGRADE", "COMPLETED", [5.0, 4.0]),
    ("Echo", "Umbrella", "OTHER", "ARCHIVED", [1.0]),
    ("bravo", "ACME Ltd", "NEW_ERP", "DRAFT", []),
    ("foxtrot", "Hooli", "ERP_MIGRATION", "IN_PROGRESS", [3.0]),
    ("golf 100%_done", "Stark", "NEW_ERP", "DRAFT", [0.0, None]),
]


async def seed(server: LiveServer, account: Account) -> list[dict[str, Any]]:
    created = []
    for title, company, project_type, status, scores in SEED:
        criteria = [{"name": f"C{i}", "weight": i + 1, "score": s} for i, s in enumerate(scores)]
        created.append(
            await create_evaluation(
                server,
                account,
                title=title,
                companyName=company,
                projectType=project_type,
                status=status,
                criteria=criteria,
            )
        )
    return created


async def list_page(server: LiveServer, account: Account, **variables: Any) -> dict[str, Any]:
    result = await server.execute(LIST, variables, token=account.access_token)
    page: dict[str, Any] = result.ok()["evaluations"]
    return page


async def collect(
    server: LiveServer,
    account: Account,
    *,
    first: int = 2,
    after: str | None = None,
    **variables: Any,
) -> list[dict[str, Any]]:
    """Walk every page with `after`, checking the page flags on the way."""
    nodes: list[dict[str, Any]] = []
    total = None
    while True:
        page = await list_page(server, account, first=first, after=after, **variables)
        total = page["totalCount"] if total is None else total
        assert page["totalCount"] == total
        assert page["pageInfo"]["hasPreviousPage"] is (after is not None)
        nodes.extend(edge["node"] for edge in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            break
        assert len(page["edges"]) == first
        assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
        after = page["pageInfo"]["endCursor"]
    return nodes


def titles(nodes: list[dict[str, Any]]) -> list[str]:
    return [n["title"] for n in nodes]


def by_time(field: str) -> Any:
    return lambda n: (datetime.fromisoformat(n[field]), uuid.UUID(n["id"]))


async def test_default_order_is_newest_first(server: LiveServer) -> None:
    account = await server.register()
    created = await seed(server, account)

    nodes = await collect(server, account)

    assert titles(nodes) == [c["title"] for c in reversed(created)]


@pytest.mark.parametrize("direction", ["ASC", "DESC"])
async def test_order_by_created_at(server: LiveServer, direction: str) -> None:
    account = await server.register()
    created = await seed(server, account)

    nodes = await collect(server, account, orderBy={"field": "CREATED_AT", "direction": direction})

    expected = sorted(created, key=by_time("createdAt"), reverse=direction == "DESC")
    assert titles(nodes) == titles(expected)


@pytest.mark.parametrize("direction", ["ASC", "DESC"])
async def test_order_by_updated_at(server: LiveServer, direction: str) -> None:
    account = await server.register()
    created = await seed(server, account)
    for index in (3, 0):
        await server.execute(
            UPDATE,
            {"id": created[index]["id"], "input": {"notes": "touched"}},
            token=account.access_token,
        )

    nodes = await collect(server, account, orderBy={"field": "UPDATED_AT", "direction": direction})

    expected = sorted(nodes, key=by_time("updatedAt"), reverse=direction == "DESC")
    assert titles(nodes) == titles(expected)
    touched_last = ["Echo", "delta"]
    if direction == "DESC":
        assert titles(nodes)[:2] == touched_last[::-1]
    else:
        assert titles(nodes)[-2:] == touched_last


@pytest.mark.parametrize("direction", ["ASC", "DESC"])
async def test_order_by_title_ignores_case(server: LiveServer, direction: str) -> None:
    account = await server.register()
    await seed(server, account)

    nodes = await collect(server, account, orderBy={"field": "TITLE", "direction": direction})

    expected = ["Alpha", "bravo", "charlie", "delta", "Echo", "foxtrot", "golf 100%_done"]
    assert titles(nodes) == (expected if direction == "ASC" else expected[::-1])


@pytest.mark.parametrize("direction", ["ASC", "DESC"])
async def test_order_by_overall_score_puts_unscored_last(
    server: LiveServer, direction: str
) -> None:
    account = await server.register()
    await seed(server, account)

    nodes = await collect(
        server, account, orderBy={"field": "OVERALL_SCORE", "direction": direction}
    )

    scores = [n["overallScore"] for n in nodes]
    scored = [s for s in scores if s is not None]
    assert scores == [*scored, None, None]  # Alpha and bravo have no scored criterion
    assert scored == sorted(scored, reverse=direction == "DESC")
    # Equal keys (two 3.0 scores, two nulls) are ordered by id in the same direction.
    for value in (3.0, None):
        ids = [uuid.UUID(n["id"]) for n in nodes if n["overallScore"] == value]
        assert len(ids) == 2
        assert ids == sorted(ids, reverse=direction == "DESC")


async def test_every_order_field_pages_one_row_at_a_time(server: LiveServer) -> None:
    account = await server.register()
    await seed(server, account)

    for field in ("CREATED_AT", "UPDATED_AT", "TITLE", "OVERALL_SCORE"):
        for direction in ("ASC", "DESC"):
            order = {"field": field, "direction": direction}
            single = await collect(server, account, first=1, orderBy=order)
            whole = (await list_page(server, account, first=100, orderBy=order))["edges"]
            assert titles(single) == [e["node"]["title"] for e in whole], order


async def test_pages_are_stable_under_inserts_and_deletes(server: LiveServer) -> None:
    account = await server.register()
    created = await seed(server, account)
    newest_first = [c["title"] for c in reversed(created)]

    first_page = await list_page(server, account, first=3)
    cursor = first_page["pageInfo"]["endCursor"]
    # New rows sort before the cursor; the row the cursor points at disappears.
    for i in range(3):
        await create_evaluation(server, account, title=f"late {i}")
    await server.execute(
        DELETE, {"id": first_page["edges"][-1]["node"]["id"]}, token=account.access_token
    )
    second_page = await list_page(server, account, first=3, after=cursor)
    third_page = await list_page(
        server, account, first=3, after=second_page["pageInfo"]["endCursor"]
    )

    assert titles([e["node"] for e in first_page["edges"]]) == newest_first[:3]
    assert titles([e["node"] for e in second_page["edges"]]) == newest_first[3:6]
    assert titles([e["node"] for e in third_page["edges"]]) == newest_first[6:]
    assert third_page["pageInfo"]["hasNextPage"] is False
    assert third_page["totalCount"] == len(SEED) + 3 - 1


async def test_ascending_pages_see_inserts_at_the_end_without_repeats(
    server: LiveServer,
) -> None:
    account = await server.register()
    created = await seed(server, account)
    order = {"field": "CREATED_AT", "direction": "ASC"}

    first_page = await list_page(server, account, first=4, orderBy=order)
    for i in range(2):
        await create_evaluation(server, account, title=f"late {i}")
    rest = await collect(
        server, account, first=2, orderBy=order, after=first_page["pageInfo"]["endCursor"]
    )

    seen = titles([e["node"] for e in first_page["edges"]]) + titles(rest)
    assert seen == [c["title"] for c in created] + ["late 0", "late 1"]


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({"status": "DRAFT"}, {"delta", "bravo", "golf 100%_done"}),
        ({"status": "COMPLETED"}, {"charlie"}),
        ({"projectType": "ERP_MIGRATION"}, {"Alpha", "foxtrot"}),
        ({"projectType": "ERP_UPGRADE"}, {"charlie"}),
        ({"search": "acme"}, {"delta", "bravo"}),  # company names, any case
        ({"search": "  ECH "}, {"Echo", "charlie"}),  # title Echo, company Initech; trimmed
        ({"search": "%"}, {"golf 100%_done"}),  # LIKE wildcards are literal
        ({"search": "%_"}, {"golf 100%_done"}),
        ({"search": "1_0"}, set()),  # would match "100" if _ were a wildcard
        ({"search": "nothing like it"}, set()),
        ({"search": "   "}, {t for t, *_ in SEED}),  # blank: no filter
        ({"status": "DRAFT", "projectType": "NEW_ERP", "search": "acme"}, {"delta", "bravo"}),
        ({"status": "ARCHIVED", "projectType": "NEW_ERP"}, set()),
    ],
)
async def test_filters(server: LiveServer, filter: dict[str, Any], expected: set[str]) -> None:
    account = await server.register()
    await seed(server, account)

    page = await list_page(server, account, first=100, filter=filter)

    assert {e["node"]["title"] for e in page["edges"]} == expected
    assert page["totalCount"] == len(expected)


async def test_users_list_only_their_own_and_admins_list_everyones(server: LiveServer) -> None:
    alice = await server.register()
    bob = await server.register()
    admin = await server.register()
    await server.make_admin(admin)
    await create_evaluation(server, alice, title="alice 1")
    await create_evaluation(server, alice, title="alice 2")
    await create_evaluation(server, bob, title="bob 1")

    alices = await list_page(server, alice, first=100)
    bobs = await list_page(server, bob, first=100)
    everyone = await list_page(server, admin, first=100)
    only_bob = await list_page(server, admin, first=100, filter={"ownerId": bob.id})

    assert titles([e["node"] for e in alices["edges"]]) == ["alice 2", "alice 1"]
    assert {e["node"]["owner"]["id"] for e in alices["edges"]} == {alice.id}
    assert titles([e["node"] for e in bobs["edges"]]) == ["bob 1"]
    assert everyone["totalCount"] == 3
    assert titles([e["node"] for e in only_bob["edges"]]) == ["bob 1"]
    assert only_bob["totalCount"] == 1


async def test_owner_filter_is_for_admins_only(server: LiveServer) -> None:
    alice = await server.register()
    admin = await server.register()
    await server.make_admin(admin)

    own = await server.execute(LIST, {"filter": {"ownerId": alice.id}}, token=alice.access_token)
    other = await server.execute(LIST, {"filter": {"ownerId": admin.id}}, token=alice.access_token)
    malformed = await server.execute(
        LIST, {"filter": {"ownerId": "not-a-uuid"}}, token=admin.access_token
    )

    for result in (own, other):
        assert result.code == "FORBIDDEN"
        assert result.errors[0]["extensions"]["field"] == "filter.ownerId"
    assert malformed.code == "BAD_USER_INPUT"
    assert malformed.errors[0]["extensions"]["field"] == "filter.ownerId"


async def test_long_search_is_rejected(server: LiveServer) -> None:
    account = await server.register()

    result = await server.execute(
        LIST, {"filter": {"search": "s" * 201}}, token=account.access_token
    )

    assert result.code == "BAD_USER_INPUT"
    assert result.errors[0]["extensions"]["field"] == "filter.search"


async def test_page_size_limits(server: LiveServer) -> None:
    account = await server.register()
    await seed(server, account)

    too_many = await server.execute(LIST, {"first": 101}, token=account.access_token)
    huge = await server.execute(LIST, {"first": 100_000}, token=account.access_token)
    negative = await server.execute(LIST, {"first": -1}, token=account.access_token)
    most = await list_page(server, account, first=100)
    empty = await list_page(server, account, first=0)
    default = await list_page(server, account)

    for result in (too_many, huge, negative):
        assert result.code == "BAD_USER_INPUT"
        assert result.errors[0]["extensions"]["field"] == "first"
        assert result.errors[0]["message"] == "first must be between 0 and 100"
    assert len(most["edges"]) == len(SEED)
    assert empty["edges"] == []
    assert empty["totalCount"] == len(SEED)
    assert empty["pageInfo"]["hasNextPage"] is True
    assert len(default["edges"]) == len(SEED)  # default page size 20


def _b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!",
        "Zm9v",  # base64 of "foo"
        _b64({"not": "a list"}),
        _b64(["2026-01-01T00:00:00+00:00"]),  # one value short
        _b64(["yesterday", "5f0c6f1e-4e8a-4c52-9d7e-3b8a2f1c9d40"]),
        _b64(["2026-01-01T00:00:00+00:00", "not-a-uuid"]),
        _b64([1, 2, 3]),
    ],
)
async def test_malformed_cursor_is_bad_user_input(server: LiveServer, cursor: str) -> None:
    account = await server.register()
    await seed(server, account)

    result = await server.execute(LIST, {"after": cursor}, token=account.access_token)

    assert result.code == "BAD_USER_INPUT"
    assert result.errors[0]["extensions"]["field"] == "after"


async def test_cursor_of_another_order_is_bad_user_input(server: LiveServer) -> None:
    account = await server.register()
    await seed(server, account)
    by_title = await list_page(server, account, first=2, orderBy={"field": "TITLE"})

    for field in ("CREATED_AT", "OVERALL_SCORE"):
        result = await server.execute(
            LIST,
            {"after": by_title["pageInfo"]["endCursor"], "orderBy": {"field": field}},
            token=account.access_token,
        )
        assert result.code == "BAD_USER_INPUT"
        assert result.errors[0]["extensions"]["field"] == "after"


MY_EVALUATIONS = """query($first: Int, $after: String) {
  me { evaluations(first: $first, after: $after) {
    totalCount pageInfo { hasNextPage hasPreviousPage endCursor }
    edges { cursor node { title owner { id } } }
  } }
}"""


async def test_user_evaluations_pages_newest_first(server: LiveServer) -> None:
    account = await server.register()
    other = await server.register()
    created = await seed(server, account)
    await create_evaluation(server, other, title="not mine")

    seen: list[str] = []
    after = None
    while True:
        result = await server.execute(
            MY_EVALUATIONS, {"first": 3, "after": after}, token=account.access_token
        )
        connection = result.ok()["me"]["evaluations"]
        assert connection["totalCount"] == len(SEED)
        assert connection["pageInfo"]["hasPreviousPage"] is (after is not None)
        assert {e["node"]["owner"]["id"] for e in connection["edges"]} <= {account.id}
        seen.extend(e["node"]["title"] for e in connection["edges"])
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]

    assert seen == [c["title"] for c in reversed(created)]


async def test_user_evaluations_argument_errors(server: LiveServer) -> None:
    account = await server.register()

    too_many = await server.execute(MY_EVALUATIONS, {"first": 101}, token=account.access_token)
    bad_cursor = await server.execute(
        MY_EVALUATIONS, {"after": "garbage!"}, token=account.access_token
    )

    assert too_many.code == "BAD_USER_INPUT"
    assert too_many.errors[0]["extensions"]["field"] == "first"
    assert bad_cursor.code == "BAD_USER_INPUT"
    assert bad_cursor.errors[0]["extensions"]["field"] == "after"


@pytest.mark.parametrize(
    "values",
    [
        [datetime(2026, 11, 30, 14, 5, 9, 123456, tzinfo=UTC), uuid.UUID(int=7)],
        [datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5, minutes=-30)))],
        [datetime(2026, 1, 2, 3, 4, 5), uuid.UUID(int=2**128 - 1)],
        [4.25, uuid.UUID(int=1)],
        [-1.0, uuid.UUID(int=1)],
        ['ä "quoted" \\ title', uuid.UUID(int=3)],
        [None, uuid.UUID(int=3)],
    ],
    ids=["utc", "offset", "naive", "score", "unscored", "title", "null"],
)
def test_cursors_are_base64_of_their_keys_json(values: list[Any]) -> None:
    expected_json = json.dumps(
        [
            v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, uuid.UUID) else v
            for v in values
        ],
        separators=(",", ":"),
    )
    cursor = encode_cursor(values)
    assert base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode() == expected_json
    assert "=" not in cursor
