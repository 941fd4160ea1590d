"""Helpers shared by the evaluation tests: GraphQL documents, seeding and database peeks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event, text

from ragstream.observability.logs import REQUEST_ID
from tests.support import Account, LiveServer

EVALUATION_FIELDS = """
  id title companyName projectType status notes overallScore createdAt updatedAt
  criteria { name weight score notes }
  owner { id email }
"""

CREATE = f"""mutation($input: CreateEvaluationInput!) {{
  createEvaluation(input: $input) {{ {EVALUATION_FIELDS} }}
}}"""

UPDATE = f"""mutation($id: ID!, $input: UpdateEvaluationInput!) {{
  updateEvaluation(id: $id, input: $input) {{ {EVALUATION_FIELDS} }}
}}"""

DELETE = "mutation($id: ID!) { deleteEvaluation(id: $id) }"

GET = f"query($id: ID!) {{ evaluation(id: $id) {{ {EVALUATION_FIELDS} }} }}"

LIST = """query($first: Int, $after: String, $filter: EvaluationFilter, $orderBy: EvaluationOrder) {
  evaluations(first: $first, after: $after, filter: $filter, orderBy: $orderBy) {
    totalCount
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    edges { cursor node { id title companyName status projectType overallScore
                          createdAt updatedAt owner { id } } }
  }
}"""

ACME = {
    "title": "ERP selection for ACME Manufacturing",
    "companyName": "ACME Manufacturing",
    "projectType": "NEW_ERP",
    "notes": "Shortlist of three vendors.",
    "criteria": [
        {"name": "Functional fit", "weight": 3, "score": 4, "notes": "Covers MRP"},
        {"name": "Total cost", "weight": 2, "score": 3},
        {"name": "Vendor viability", "weight": 1, "score": None},
    ],
}


async def create_evaluation(
    server: LiveServer, account: Account, **overrides: Any
) -> dict[str, Any]:
    values = {"title": "Evaluation", "companyName": "Company", **overrides}
    result = await server.execute(CREATE, {"input": values}, token=account.access_token)
    created: dict[str, Any] = result.ok()["createEvaluation"]
    return created


async def db_row(server: LiveServer, evaluation_id: str) -> dict[str, Any] | None:
    """The stored row, read behind the API's back."""
    async with server.state.sessionmaker() as session:
        row = (
            (
                await session.execute(
                    text("SELECT * FROM evaluations WHERE id = CAST(:id AS uuid)"),
                    {"id": evaluation_id},
                )
            )
            .mappings()
            .first()
        )
    return dict(row) if row is not None else None


async def db_count(server: LiveServer) -> int:
    async with server.state.sessionmaker() as session:
        return int(await session.scalar(text("SELECT count(*) FROM evaluations")) or 0)


@contextlib.contextmanager
def count_statements(server: LiveServer, *, requests_only: bool = False) -> Iterator[list[str]]:
    """Every SQL statement the server sends while the block runs; with ``requests_only``, only
    those sent on behalf of a request (not by the server's own background work, such as the
    lease renewal and its sweep of answers left running, which may fall inside the block)."""
    statements: list[str] = []

    def record(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        if not requests_only or REQUEST_ID.get() is not None:
            statements.append(statement)

    engine = server.state.engine
    assert engine is not None
    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
