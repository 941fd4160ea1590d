"""The floor `bench/peers.py` measures against: ragstream's three bench reads with nothing else.

Plain Starlette + asyncpg + orjson: the access token is decoded as ragstream decodes it, the
viewer reloaded with ragstream's statement (active, live sign-in session), then the page and
its children read with one statement each. No GraphQL: the operation is picked by its first
field. Configured by BENCH_FLOOR_DSN and BENCH_FLOOR_JWT_SECRET; run with uvicorn.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import jwt
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

VIEWER = """SELECT u.id, u.role = 'ADMIN' AS admin FROM users u WHERE u.id = $1 AND u.is_active
  AND EXISTS (SELECT 1 FROM refresh_tokens t
              WHERE t.family_id = $2 AND t.user_id = u.id AND t.revoked_at IS NULL)"""
EVALUATIONS = """SELECT id::text, title, company_name, status, overall_score, created_at, owner_id
  FROM evaluations WHERE $1 OR owner_id = $2 ORDER BY created_at DESC, id DESC LIMIT 20"""
OWNERS = "SELECT id, display_name FROM users WHERE id = ANY($1::uuid[])"
CONVERSATIONS = """SELECT id, title FROM conversations WHERE owner_id = $1
  ORDER BY created_at DESC, id DESC LIMIT 20"""
MESSAGES = """SELECT c.id, m.content FROM unnest($1::uuid[]) AS c(id) CROSS JOIN LATERAL
  (SELECT content FROM messages WHERE conversation_id = c.id ORDER BY created_at, id LIMIT 5) m"""


async def evaluations(conn: Any, viewer: Any) -> dict[str, Any]:
    rows = await conn.fetch(EVALUATIONS, viewer["admin"], viewer["id"])
    owners = dict(await conn.fetch(OWNERS, list({row["owner_id"] for row in rows})))
    edges = [
        {
            "node": {
                "id": r[0],
                "title": r[1],
                "companyName": r[2],
                "status": r[3],
                "overallScore": r[4],
                "createdAt": r[5],
                "owner": {"displayName": owners[r[6]]},
            }
        }
        for r in rows
    ]
    return {"evaluations": {"edges": edges}}


async def conversations(conn: Any, viewer: Any) -> dict[str, Any]:
    parents = await conn.fetch(CONVERSATIONS, viewer["id"])
    children: dict[Any, list[dict[str, Any]]] = {row["id"]: [] for row in parents}
    for parent, content in await conn.fetch(MESSAGES, list(children)):
        children[parent].append({"node": {"content": content}})
    edges = [
        {"node": {"title": r["title"], "messages": {"edges": children[r["id"]]}}} for r in parents
    ]
    return {"conversations": {"edges": edges}}


async def me(conn: Any, viewer: Any) -> dict[str, Any]:
    return {"me": {"id": str(viewer["id"])}}


OPERATIONS = {"evaluations": evaluations, "conversations": conversations, "me": me}
SECRET = os.environ.get("BENCH_FLOOR_JWT_SECRET", "")
state: dict[str, Any] = {}


async def graphql(request: Request) -> Response:
    first_field = re.search(r"\{\s*(\w+)", orjson.loads(await request.body())["query"])
    operation = OPERATIONS[first_field[1] if first_field else ""]
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    try:
        claims = jwt.decode(
            token, SECRET, algorithms=["HS256"], options={"require": ["exp", "iat", "sub", "sid"]}
        )
    except jwt.InvalidTokenError:
        return Response(b'{"errors":[{"message":"unauthenticated"}]}', 401)
    async with state["pool"].acquire() as conn:
        viewer = await conn.fetchrow(VIEWER, claims["sub"], claims["sid"])
        if viewer is None:
            return Response(b'{"errors":[{"message":"unauthenticated"}]}', 401)
        data = await operation(conn, viewer)
    return Response(orjson.dumps({"data": data}), media_type="application/json")


async def _keep_session(conn: Any) -> None:
    return None


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # No reset on release: the floor sets no session state, and asyncpg's reset is 4 statements.
    async with asyncpg.create_pool(
        os.environ["BENCH_FLOOR_DSN"], max_size=10, reset=_keep_session
    ) as pool:
        state["pool"] = pool
        yield


app = Starlette(routes=[Route("/graphql", graphql, methods=["POST"])], lifespan=lifespan)
