"""`GET /metrics`: the Prometheus text exposition, behind a bearer token when one is set."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ragstream.db.repositories.jobs import JobRepository

if TYPE_CHECKING:
    from ragstream.state import AppState

logger = logging.getLogger(__name__)


def _authorized(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


async def metrics_endpoint(request: Request) -> Response:
    state: AppState = request.app.state.ragstream
    token = state.settings.metrics_token
    if token is not None and not _authorized(request, token.get_secret_value()):
        return JSONResponse(
            {"error": "a bearer token is required for /metrics"},
            status_code=401,
            headers={"www-authenticate": 'Bearer realm="metrics"'},
        )
    try:
        # The queue is shared by every process: read from the database, not counted here.
        async with asyncio.timeout(2), state.sessionmaker() as session:
            state.metrics.ingestion_queue(await JobRepository(session).counts_by_state())
    except Exception:  # the rest of the metrics are still worth having
        logger.warning("could not read the ingestion queue for /metrics", exc_info=True)
    body, content_type = state.metrics.exposition()
    return Response(body, headers={"content-type": content_type})
