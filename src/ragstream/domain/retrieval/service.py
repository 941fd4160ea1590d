"""Hybrid retrieval: HNSW cosine neighbours and full-text matches, fused by reciprocal rank."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ragstream.db.engine import AUTOCOMMIT
from ragstream.db.models import User
from ragstream.db.repositories.search import QueryTerm, SearchRepository, SearchResult
from ragstream.domain.errors import InvalidInput
from ragstream.domain.llm.embeddings import Embedder
from ragstream.settings import Settings

logger = logging.getLogger(__name__)

MAX_LIMIT = 50
MAX_QUERY_CHARS = 1_000
# The usual RRF constant: damps the weight of the very top ranks of either list.
RRF_K = 60


@dataclass(frozen=True)
class SearchTuning:
    """How hard retrieval works; the defaults are what the settings default to.

    ``candidates``: how many chunks each ranking (vector, full text) contributes to the fusion.
    ``scan``: how many candidates the HNSW scan hands over to be ordered by their exact
    distance, of which the vector ranking keeps the closest ``candidates``; more than are kept
    lets the scan's later rounds bring in neighbours its first round missed.
    ``ef_search``: HNSW candidate list per scan round; more is better recall, slower.
    ``max_scan_tuples``: how far an iterative HNSW scan may go to find enough readable chunks.
    ``common_term_share``: a query word held by more than this share of all chunks does not
    select chunks for the full-text ranking (it still counts in their rank), so a question
    made of everyday words does not rank most of the knowledge base.
    """

    candidates: int = 60
    scan: int = 400
    ef_search: int = 200
    max_scan_tuples: int = 20_000
    common_term_share: float = 0.05

    @classmethod
    def from_settings(cls, settings: Settings) -> SearchTuning:
        return cls(
            candidates=settings.search_candidates,
            scan=settings.search_scan,
            ef_search=settings.search_ef_search,
            max_scan_tuples=settings.search_max_scan_tuples,
            common_term_share=settings.search_common_term_share,
        )


@dataclass(frozen=True)
class TextQuery:
    """Which lexemes select chunks for the full-text ranking, and which rank them."""

    match: tuple[str, ...]
    match_all: bool
    rank: tuple[str, ...]


def text_query(terms: list[QueryTerm], common_share: float) -> TextQuery | None:
    """Select by the distinctive lexemes (any of them); when every lexeme is common, by all
    of them at once. Rank by every lexeme. None when the query has no searchable word."""
    if not terms:
        return None
    every = tuple(term.lexeme for term in terms)
    distinctive = tuple(
        term.lexeme for term in terms if term.share is None or term.share <= common_share
    )
    if distinctive:
        return TextQuery(match=distinctive, match_all=False, rank=every)
    return TextQuery(match=every, match_all=True, rank=every)


def fuse(rankings: list[list[uuid.UUID]], k: int = RRF_K) -> list[tuple[uuid.UUID, float]]:
    """Reciprocal rank fusion: sum of 1 / (k + rank) over the lists an item appears in."""
    scores: dict[uuid.UUID, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: (-pair[1], str(pair[0])))


class SideSessions:
    """Sessions in which the full-text half of a search runs beside the vector half.

    The two halves are independent statements: on a second connection the full-text
    ranking runs while PostgreSQL walks the HNSW graph, and a single search takes about as
    long as its slower half instead of both (under load both halves still cost the database
    the same CPU). The connections are a pool of their own (``sessionmaker``'s engine, of
    ``limit`` connections), never the requests' pool, and a search that finds all of them
    taken runs both halves in its own session, one after the other: a search never waits for
    a second connection. ``limit`` 0 (or no sessionmaker) turns this off.
    """

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession] | None = None, limit: int = 0
    ) -> None:
        self._sessionmaker = sessionmaker
        self._free = asyncio.Semaphore(limit) if sessionmaker is not None and limit > 0 else None

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession | None]:
        """A session for one search's full-text half (reads only, no transaction), or None."""
        free, sessionmaker = self._free, self._sessionmaker
        if free is None or sessionmaker is None or free.locked():
            yield None
            return
        async with free, sessionmaker() as session:
            await session.connection(execution_options=AUTOCOMMIT)
            yield session


async def search(
    session: AsyncSession,
    viewer: User,
    query: str,
    limit: int,
    embedder: Embedder,
    *,
    tuning: SearchTuning | None = None,
    own_transaction: bool = False,
    side: AsyncSession | None = None,
) -> list[SearchResult]:
    """The ``limit`` chunks most relevant to ``query`` among the documents the viewer may read
    (their own and shared ones), best first. ``score`` is the fused RRF score.

    ``own_transaction``: the session's transaction ends with the caller's reads, nothing
    else runs in it (see `SearchRepository`). ``side``: a session of its own for the
    full-text half, which then runs at the same time as the vector half (`SideSessions`).
    """
    tuning = tuning or SearchTuning()
    query = " ".join(query.split())
    if not query:
        raise InvalidInput("query must not be empty", field="query")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidInput(f"query must be at most {MAX_QUERY_CHARS} characters", field="query")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    pool = max(tuning.candidates, limit)
    [vector] = await embedder.embed([query])
    repo = SearchRepository(session, own_transaction=own_transaction)

    async def by_text(texts: SearchRepository) -> list[uuid.UUID]:
        words = text_query(await texts.query_terms(query), tuning.common_term_share)
        if words is None:
            return []
        return await texts.best_by_text(
            viewer, words.match, words.rank, pool, match_all=words.match_all
        )

    by_vector = repo.nearest_by_vector(
        viewer,
        vector,
        pool,
        scan=tuning.scan,
        ef_search=tuning.ef_search,
        max_scan_tuples=tuning.max_scan_tuples,
    )
    if side is None:
        vector_ranking = await by_vector
        text_ranking = await by_text(repo)
    else:
        text_half = asyncio.create_task(by_text(SearchRepository(side)))
        try:
            vector_ranking = await by_vector
        except BaseException:
            # The vector half's failure is the one raised; the full-text half is stopped and
            # waited for (its connection goes back to its pool), its own error only logged.
            text_half.cancel()
            await asyncio.wait([text_half])
            if not text_half.cancelled() and text_half.exception() is not None:
                logger.warning("the full-text half failed too", exc_info=text_half.exception())
            raise
        text_ranking = await text_half
    fused = fuse([vector_ranking, text_ranking])[:limit]
    hits = await repo.load(viewer, [chunk_id for chunk_id, _ in fused])
    vector_ranks = {chunk_id: rank for rank, chunk_id in enumerate(vector_ranking, start=1)}
    text_ranks = {chunk_id: rank for rank, chunk_id in enumerate(text_ranking, start=1)}
    results = []
    for chunk_id, score in fused:
        hit = hits.get(chunk_id)
        if hit is None:  # deleted between the ranking and the load
            continue
        results.append(
            replace(
                hit,
                score=score,
                vector_rank=vector_ranks.get(chunk_id),
                text_rank=text_ranks.get(chunk_id),
            )
        )
    return results


__all__ = [
    "SearchResult",
    "SearchTuning",
    "SideSessions",
    "TextQuery",
    "fuse",
    "search",
    "text_query",
]
