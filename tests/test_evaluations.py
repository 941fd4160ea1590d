"""Evaluations: create, read, update, delete; every domain rule; authorization by owner."""

from __future__ import annotations

from typing import Any

import pytest

from tests.evaluations_support import (
    ACME,
    CREATE,
    DELETE,
    GET,
    LIST,
    UPDATE,
    create_evaluation,
    db_count,
    db_row,
)
from tests.support import LiveServer


async def test_create_returns_the_evaluation_with_its_weighted_score(server: LiveServer) -> None:
    account = await server.register()

    created = await create_evaluation(server, account, **ACME)

    assert created["title"] == "ERP selection for ACME Manufacturing"
    assert created["companyName"] == "ACME Manufacturing"
    assert created["projectType"] == "NEW_ERP"
    assert created["status"] == "DRAFT"
    assert created["notes"] == "Shortlist of three vendors."
    assert created["criteria"] == [
        {"name": "Functional fit", "weight": 3.0, "score": 4.0, "notes": "Covers MRP"},
        {"name": "Total cost", "weight": 2.0, "score": 3.0, "notes": None},
        {"name": "Vendor viability", "weight": 1.0, "score": None, "notes": None},
    ]
    # Weighted mean of the scored criteria only: (3*4 + 2*3) / (3 + 2).
    assert created["overallScore"] == pytest.approx(3.6)
    assert created["owner"] == {"id": account.id, "email": account.email}
    assert created["createdAt"] == created["updatedAt"]
    row = await db_row(server, created["id"])
    assert row is not None
    assert row["overall_score"] == pytest.approx(3.6)
    assert str(row["owner_id"]) == account.id


async def test_create_defaults(server: LiveServer) -> None:
    account = await server.register()

    created = await create_evaluation(server, account, title="  Minimal   one ", companyName="Co")

    assert created["title"] == "Minimal one"
    assert created["projectType"] == "OTHER"
    assert created["status"] == "DRAFT"
    assert created["criteria"] == []
    assert created["notes"] is None
    assert created["overallScore"] is None


async def test_overall_score_is_null_when_no_criterion_is_scored(server: LiveServer) -> None:
    account = await server.register()

    created = await create_evaluation(
        server, account, criteria=[{"name": "Fit", "weight": 2}, {"name": "Cost", "weight": 1}]
    )

    assert created["overallScore"] is None
    assert [c["score"] for c in created["criteria"]] == [None, None]


async def test_get_returns_own_evaluation(server: LiveServer) -> None:
    account = await server.register()
    created = await create_evaluation(server, account, **ACME)

    fetched = (await server.execute(GET, {"id": created["id"]}, token=account.access_token)).ok()

    assert fetched["evaluation"] == created


def _criteria(count: int, **fields: Any) -> list[dict[str, Any]]:
    return [{"name": f"Criterion {i}", "weight": 1, "score": 3, **fields} for i in range(count)]


INVALID_CREATES: list[tuple[str, dict[str, Any], str]] = [
    ("empty title", {"title": ""}, "title"),
    ("blank title", {"title": "   "}, "title"),
    ("long title", {"title": "t" * 201}, "title"),
    ("empty company", {"companyName": ""}, "companyName"),
    ("long company", {"companyName": "c" * 201}, "companyName"),
    ("long notes", {"notes": "n" * 20_001}, "notes"),
    ("51 criteria", {"criteria": _criteria(51)}, "criteria"),
    (
        "duplicate names ignoring case",
        {"criteria": [{"name": "Cost", "weight": 1}, {"name": " cost ", "weight": 2}]},
        "criteria[1].name",
    ),
    ("empty criterion name", {"criteria": [{"name": " ", "weight": 1}]}, "criteria[0].name"),
    ("long criterion name", {"criteria": [{"name": "x" * 101}]}, "criteria[0].name"),
    ("zero weight", {"criteria": [{"name": "A", "weight": 0}]}, "criteria[0].weight"),
    (
        "negative weight",
        {"criteria": [{"name": "A", "weight": 1}, {"name": "B", "weight": -1}]},
        "criteria[1].weight",
    ),
    ("huge weight", {"criteria": [{"name": "A", "weight": 1e7}]}, "criteria[0].weight"),
    ("negative score", {"criteria": [{"name": "A", "score": -0.5}]}, "criteria[0].score"),
    ("score above 5", {"criteria": [{"name": "A", "score": 5.01}]}, "criteria[0].score"),
    (
        "long criterion notes",
        {"criteria": [{"name": "A", "notes": "n" * 2_001}]},
        "criteria[0].notes",
    ),
    ("completed without criteria", {"status": "COMPLETED"}, "status"),
    (
        "completed with an unscored criterion",
        {"status": "COMPLETED", "criteria": [{"name": "A", "score": 4}, {"name": "B"}]},
        "status",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [(o, f) for _, o, f in INVALID_CREATES],
    ids=[name for name, _, _ in INVALID_CREATES],
)
async def test_create_rejects_rule_violations(
    server: LiveServer, overrides: dict[str, Any], field: str
) -> None:
    account = await server.register()
    values = {"title": "Valid", "companyName": "Valid", **overrides}

    result = await server.execute(CREATE, {"input": values}, token=account.access_token)

    assert result.code == "BAD_USER_INPUT"
    assert result.errors[0]["extensions"]["field"] == field
    assert result.data is None
    assert await db_count(server) == 0


async def test_create_accepts_the_boundaries(server: LiveServer) -> None:
    account = await server.register()

    created = await create_evaluation(
        server,
        account,
        title="t" * 200,
        companyName="c" * 200,
        status="COMPLETED",
        criteria=[
            *({"name": f"C{i}", "weight": 0.001, "score": 0} for i in range(49)),
            {"name": "Top", "weight": 1_000_000, "score": 5, "notes": "n" * 2_000},
        ],
    )

    assert len(created["criteria"]) == 50
    assert created["status"] == "COMPLETED"
    assert 4.99 < created["overallScore"] <= 5


async def test_enum_values_are_checked_by_the_schema(server: LiveServer) -> None:
    account = await server.register()

    result = await server.execute(
        CREATE,
        {"input": {"title": "A", "companyName": "B", "projectType": "MAINFRAME"}},
        token=account.access_token,
    )

    assert result.code == "BAD_USER_INPUT"
    assert "Did you mean" not in result.errors[0]["message"]
    assert await db_count(server) == 0


async def test_update_changes_only_the_given_fields(server: LiveServer) -> None:
    account = await server.register()
    created = await create_evaluation(server, account, **ACME)

    updated = (
        await server.execute(
            UPDATE,
            {"id": created["id"], "input": {"status": "IN_PROGRESS", "title": "ACME, round two"}},
            token=account.access_token,
        )
    ).ok()["updateEvaluation"]

    assert updated["title"] == "ACME, round two"
    assert updated["status"] == "IN_PROGRESS"
    for unchanged in ("companyName", "projectType", "notes", "criteria", "overallScore"):
        assert updated[unchanged] == created[unchanged]
    assert updated["updatedAt"] > created["updatedAt"]
    assert updated["createdAt"] == created["createdAt"]


async def test_update_replaces_criteria_and_recomputes_the_score(server: LiveServer) -> None:
    account = await server.register()
    created = await create_evaluation(server, account, **ACME)
    criteria = [
        {"name": "Support", "weight": 1, "score": 2},
        {"name": "Fit", "weight": 3, "score": 5},
    ]

    updated = (
        await server.execute(
            UPDATE,
            {"id": created["id"], "input": {"criteria": criteria, "notes": None}},
            token=account.access_token,
        )
    ).ok()["updateEvaluation"]

    assert [c["name"] for c in updated["criteria"]] == ["Support", "Fit"]
    assert updated["overallScore"] == pytest.approx((1 * 2 + 3 * 5) / 4)
    assert updated["notes"] is None
    row = await db_row(server, created["id"])
    assert row is not None
    assert row["overall_score"] == pytest.approx(4.25)
    assert [c["name"] for c in row["criteria"]] == ["Support", "Fit"]

    cleared = (
        await server.execute(
            UPDATE, {"id": created["id"], "input": {"criteria": []}}, token=account.access_token
        )
    ).ok()["updateEvaluation"]
    assert cleared["criteria"] == []
    assert cleared["overallScore"] is None


async def test_update_to_completed_when_every_criterion_is_scored(server: LiveServer) -> None:
    account = await server.register()
    created = await create_evaluation(
        server, account, criteria=[{"name": "A", "score": 1}, {"name": "B", "score": 0}]
    )

    updated = (
        await server.execute(
            UPDATE,
            {"id": created["id"], "input": {"status": "COMPLETED"}},
            token=account.access_token,
        )
    ).ok()["updateEvaluation"]

    assert updated["status"] == "COMPLETED"
    assert updated["overallScore"] == pytest.approx(0.5)


INVALID_UPDATES: list[tuple[str, dict[str, Any], str]] = [
    ("null title", {"title": None}, "title"),
    ("empty title", {"title": ""}, "title"),
    ("null company", {"companyName": None}, "companyName"),
    ("null project type", {"projectType": None}, "projectType"),
    ("null status", {"status": None}, "status"),
    ("null criteria", {"criteria": None}, "criteria"),
    ("completed with an unscored criterion", {"status": "COMPLETED"}, "status"),
    (
        "completed with new unscored criteria",
        {"status": "COMPLETED", "criteria": [{"name": "X", "score": None}]},
        "status",
    ),
    ("zero weight", {"criteria": [{"name": "X", "weight": 0}]}, "criteria[0].weight"),
    (
        "a valid field beside an invalid one",
        {"title": "Changed", "criteria": [{"name": "X"}, {"name": "x"}]},
        "criteria[1].name",
    ),
]


@pytest.mark.parametrize(
    ("changes", "field"),
    [(c, f) for _, c, f in INVALID_UPDATES],
    ids=[name for name, _, _ in INVALID_UPDATES],
)
async def test_update_rejects_rule_violations_and_changes_nothing(
    server: LiveServer, changes: dict[str, Any], field: str
) -> None:
    account = await server.register()
    created = await create_evaluation(server, account, **ACME)
    before = await db_row(server, created["id"])

    result = await server.execute(
        UPDATE, {"id": created["id"], "input": changes}, token=account.access_token
    )

    assert result.code == "BAD_USER_INPUT"
    assert result.errors[0]["extensions"]["field"] == field
    assert await db_row(server, created["id"]) == before


async def test_completed_evaluation_keeps_every_criterion_scored(server: LiveServer) -> None:
    account = await server.register()
    created = await create_evaluation(
        server, account, status="COMPLETED", criteria=[{"name": "A", "score": 4}]
    )
    before = await db_row(server, created["id"])

    unscored = await server.execute(
        UPDATE,
        {"id": created["id"], "input": {"criteria": [{"name": "A", "score": None}]}},
        token=account.access_token,
    )
    emptied = await server.execute(
        UPDATE,
        {"id": created["id"], "input": {"criteria": [], "status": "COMPLETED"}},
        token=account.access_token,
    )

    for result in (unscored, emptied):
        assert result.code == "BAD_USER_INPUT"
        assert result.errors[0]["extensions"]["field"] == "criteria"
    assert await db_row(server, created["id"]) == before


async def test_empty_update_changes_nothing(server: LiveServer) -> None:
    account = await server.register()
    created = await create_evaluation(server, account, **ACME)
    before = await db_row(server, created["id"])

    updated = (
        await server.execute(UPDATE, {"id": created["id"], "input": {}}, token=account.access_token)
    ).ok()["updateEvaluation"]

    assert updated == created
    assert await db_row(server, created["id"]) == before


async def test_delete_removes_the_evaluation(server: LiveServer) -> None:
    account = await server.register()
    created = await create_evaluation(server, account, **ACME)

    deleted = await server.execute(DELETE, {"id": created["id"]}, token=account.access_token)
    again = await server.execute(DELETE, {"id": created["id"]}, token=account.access_token)
    fetched = await server.execute(GET, {"id": created["id"]}, token=account.access_token)

    assert deleted.ok() == {"deleteEvaluation": created["id"]}
    assert again.code == "NOT_FOUND"
    assert fetched.code == "NOT_FOUND"
    assert await db_row(server, created["id"]) is None


async def test_other_users_evaluation_is_not_found_and_untouched(server: LiveServer) -> None:
    owner = await server.register()
    intruder = await server.register()
    created = await create_evaluation(server, owner, **ACME)
    before = await db_row(server, created["id"])
    missing = "00000000-0000-4000-8000-000000000000"

    results = {
        "get": await server.execute(GET, {"id": created["id"]}, token=intruder.access_token),
        "update": await server.execute(
            UPDATE,
            {"id": created["id"], "input": {"title": "Mine now", "criteria": []}},
            token=intruder.access_token,
        ),
        "delete": await server.execute(DELETE, {"id": created["id"]}, token=intruder.access_token),
    }
    missing_get = await server.execute(GET, {"id": missing}, token=intruder.access_token)

    for result in results.values():
        assert result.code == "NOT_FOUND"
        assert result.data is None
        # Indistinguishable from an id that does not exist at all.
        assert result.errors[0]["message"] == missing_get.errors[0]["message"]
    assert await db_row(server, created["id"]) == before
    listed = (await server.execute(LIST, token=intruder.access_token)).ok()["evaluations"]
    assert listed["totalCount"] == 0
    assert listed["edges"] == []


async def test_admin_reads_changes_and_deletes_anyones_evaluation(server: LiveServer) -> None:
    owner = await server.register()
    admin = await server.register()
    await server.make_admin(admin)
    created = await create_evaluation(server, owner, **ACME)

    fetched = (await server.execute(GET, {"id": created["id"]}, token=admin.access_token)).ok()
    updated = (
        await server.execute(
            UPDATE, {"id": created["id"], "input": {"status": "ARCHIVED"}}, token=admin.access_token
        )
    ).ok()
    deleted = await server.execute(DELETE, {"id": created["id"]}, token=admin.access_token)

    assert fetched["evaluation"]["owner"]["id"] == owner.id
    assert updated["updateEvaluation"]["status"] == "ARCHIVED"
    assert updated["updateEvaluation"]["owner"]["id"] == owner.id
    assert deleted.ok() == {"deleteEvaluation": created["id"]}
    assert await db_row(server, created["id"]) is None


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", "1", "' OR 1=1 --", "x" * 1000])
async def test_malformed_ids_are_not_found(server: LiveServer, bad_id: str) -> None:
    account = await server.register()
    created = await create_evaluation(server, account, **ACME)
    before = await db_row(server, created["id"])

    results = [
        await server.execute(GET, {"id": bad_id}, token=account.access_token),
        await server.execute(
            UPDATE, {"id": bad_id, "input": {"title": "X"}}, token=account.access_token
        ),
        await server.execute(DELETE, {"id": bad_id}, token=account.access_token),
    ]

    assert [r.code for r in results] == ["NOT_FOUND"] * 3
    assert await db_row(server, created["id"]) == before


async def test_every_field_needs_a_signed_in_account(server: LiveServer) -> None:
    account = await server.register()
    created = await create_evaluation(server, account, **ACME)
    before = await db_row(server, created["id"])

    results = [
        await server.execute(GET, {"id": created["id"]}),
        await server.execute(LIST),
        await server.execute(CREATE, {"input": {"title": "A", "companyName": "B"}}),
        await server.execute(UPDATE, {"id": created["id"], "input": {"title": "X"}}),
        await server.execute(DELETE, {"id": created["id"]}),
        await server.execute(GET, {"id": created["id"]}, token="garbage"),
    ]

    assert [r.code for r in results] == ["UNAUTHENTICATED"] * len(results)
    assert await db_count(server) == 1
    assert await db_row(server, created["id"]) == before
