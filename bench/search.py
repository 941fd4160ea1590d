"""Search latency through the API and HNSW recall, at growing knowledge-base sizes.

Usage: python -m bench.search [--sizes 10000 100000] [--queries 100] [--ef-search 40 100 160]
                              [--m 16] [--ef-construction 64]
Chunks are synthetic passages embedded with the offline hashing embedder and loaded with
COPY; half belong to the searching user, half to another user (so the visibility filter
works for its living). Loopback only, throwaway embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import time
import uuid
from dataclasses import dataclass

import asyncpg
import httpx
import numpy as np
from pgvector.asyncpg import register_vector
from rich.console import Console
from rich.table import Table

from bench.common import bench_settings, embedded_database, graphql, live_app, percentile, register
from ragstream.app import AppState
from ragstream.db.models.users import User
from ragstream.db.repositories.documents import CHUNK_COPY_COLUMNS, HnswOptions
from ragstream.db.repositories.search import SearchRepository
from ragstream.domain.documents.reindex import BUILD_MEMORY
from ragstream.domain.llm.embeddings import HashingEmbedder

SEARCH = "query($q: String!) { search(query: $q, limit: 10) { score chunk { id } } }"
CHUNKS_PER_DOCUMENT = 100


class UniformCorpus:
    """Every passage an independent bag of Zipf-distributed words from 13 syllables.

    A worst case for any nearest-neighbour index: passages have no topics, the most frequent
    words share most of their character n-grams, so every passage is about as far from a
    query as from any other passage and the "true" 10 nearest differ from the next ones by
    noise.
    """

    name = "uniform"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "si", "de", "pa", "go", "hu", "ze"]
        words: set[str] = set()
        while len(words) < 4000:
            words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
        self.words = sorted(words)
        self.weights = [1.0 / (rank + 1) for rank in range(len(self.words))]  # Zipf-like

    def document(self, chunks: int) -> list[str]:
        return [
            " ".join(self.rng.choices(self.words, self.weights, k=self.rng.randint(30, 60))) + "."
            for _ in range(chunks)
        ]

    def question(self) -> str:
        return " ".join(self.rng.choices(self.words, self.weights, k=self.rng.randint(3, 6)))


class TopicalCorpus:
    """Documents about topics, as in a knowledge base: each document has a topic, and its
    passages mix that topic's words with everyday (Zipf-distributed) ones. Questions are a
    few words about the topic of some document. Words are built from 70 syllables and their
    frequency does not follow their spelling.
    """

    name = "topical"
    TOPICS = 200
    TOPIC_WORDS = 40
    TOPIC_SHARE_PASSAGE = 0.35
    TOPIC_SHARE_QUESTION = 0.7

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
        words: set[str] = set()
        while len(words) < 20_000:
            words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))))
        self.words = sorted(words)
        rng.shuffle(self.words)
        self.weights = [1.0 / (rank + 1) for rank in range(len(self.words))]
        content = self.words[300:]  # topic words are not among the everyday ones
        self.topics = [rng.sample(content, self.TOPIC_WORDS) for _ in range(self.TOPICS)]
        self.used: list[int] = []  # topics of the documents made so far

    def _text(self, topic: int, length: int, share: float) -> str:
        everyday = self.rng.choices(self.words, self.weights, k=length)
        return " ".join(
            self.rng.choice(self.topics[topic]) if self.rng.random() < share else word
            for word in everyday
        )

    def document(self, chunks: int) -> list[str]:
        topic = self.rng.randrange(self.TOPICS)
        self.used.append(topic)
        return [
            self._text(topic, self.rng.randint(30, 60), self.TOPIC_SHARE_PASSAGE) + "."
            for _ in range(chunks)
        ]

    def question(self) -> str:
        topic = self.rng.choice(self.used)
        return self._text(topic, self.rng.randint(3, 6), self.TOPIC_SHARE_QUESTION)


Corpus = UniformCorpus | TopicalCorpus
CORPORA: dict[str, type[Corpus]] = {"topical": TopicalCorpus, "uniform": UniformCorpus}


async def seed(
    conn: asyncpg.Connection,
    embedder: HashingEmbedder,
    owners: list[uuid.UUID],
    count: int,
    corpus: Corpus,
    index: HnswOptions,
) -> tuple[float, float]:
    """Add ``count`` chunks; returns (embed seconds, copy + index seconds)."""
    texts = [
        passage
        for start in range(0, count, CHUNKS_PER_DOCUMENT)
        for passage in corpus.document(min(CHUNKS_PER_DOCUMENT, count - start))
    ]
    started = time.perf_counter()
    vectors = await asyncio.to_thread(embedder.embed_sync, texts)
    embedded = time.perf_counter() - started
    started = time.perf_counter()
    documents: list[tuple[object, ...]] = []
    chunks: list[tuple[object, ...]] = []
    for start in range(0, count, CHUNKS_PER_DOCUMENT):
        document_id = uuid.uuid4()
        owner = owners[(start // CHUNKS_PER_DOCUMENT) % len(owners)]
        batch = texts[start : start + CHUNKS_PER_DOCUMENT]
        documents.append(
            (
                document_id,
                owner,
                f"Synthetic {document_id.hex[:8]}",
                "synthetic.txt",
                "text/plain",
                sum(len(t) for t in batch),
                hashlib.sha256(document_id.bytes).hexdigest(),
                "PRIVATE",
                "READY",
                len(batch),
            )
        )
        for ordinal, content in enumerate(batch):
            chunks.append(
                (
                    uuid.uuid4(),
                    document_id,
                    ordinal,
                    content,
                    [],
                    "",
                    None,
                    len(content) // 4,
                    np.asarray(vectors[start + ordinal], dtype=np.float32),
                )
            )
    await conn.execute("DROP INDEX IF EXISTS ix_chunks_embedding_hnsw")
    await conn.copy_records_to_table(
        "documents",
        records=documents,
        columns=[
            "id",
            "owner_id",
            "title",
            "filename",
            "mime_type",
            "size_bytes",
            "content_sha256",
            "visibility",
            "status",
            "chunk_count",
        ],
    )
    await conn.copy_records_to_table("chunks", records=chunks, columns=CHUNK_COPY_COLUMNS)
    # Built as `ragstream reindex --index-only` builds it (the migration's index has
    # pgvector's defaults, m 16 and ef_construction 64), with the same build memory.
    await conn.execute(f"SET maintenance_work_mem = '{BUILD_MEMORY}'")
    await conn.execute(
        "CREATE INDEX ix_chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops)"
        f" WITH (m = {index.m}, ef_construction = {index.ef_construction})"
    )
    await conn.execute("ANALYZE chunks; ANALYZE documents")
    return embedded, time.perf_counter() - started


@dataclass
class Row:
    chunks: int
    embed_s: float
    load_s: float
    load_avg: tuple[float, float]  # 1-minute load average before and after the timed part
    p50: float
    p95: float
    recall: Recall


@dataclass
class Recall:
    configuration: str  # "default": the statement search runs; "k=10": HNSW asked for 10 rows
    ef_search: int
    recall: float  # |approximate ∩ exact| / k, averaged over the queries
    gap_percent: float  # how much farther the approximate k-th neighbour is than the exact one
    hnsw_ms: float  # p50 of the HNSW statement (the bare statement, no API around it)
    exact_ms: float  # p50 of the exact statement


async def recall_at(
    state: AppState,
    conn: asyncpg.Connection,
    me: str,
    vectors: list[list[float]],
    ef_values: list[int],
    k: int = 10,
) -> list[Recall]:
    """Recall@k of the HNSW path against exact search, per ef_search value.

    Both sides run the same repository statement (same visibility filter, same cosine
    operator, k rows); only the index use differs. Misses that are near-ties show in the
    distance gap of the k-th neighbour.
    """

    async def kth_distance(vector: list[float], ids: list[uuid.UUID]) -> float:
        distances = await conn.fetch(
            "SELECT embedding <=> $1 FROM chunks WHERE id = ANY($2)",
            np.asarray(vector, dtype=np.float32),
            ids,
        )
        return float(max(row[0] for row in distances))

    results = []
    async with state.sessionmaker() as session:
        viewer = await session.get(User, uuid.UUID(me))
        assert viewer is not None
        repo = SearchRepository(session)
        exact: list[list[uuid.UUID]] = []
        exact_ms = []
        for vector in vectors:
            started = time.perf_counter()
            exact.append(await repo.exact_nearest_by_vector(viewer, vector, k))
            exact_ms.append((time.perf_counter() - started) * 1000)
        # First the default configuration: the statement search runs (its candidate pool,
        # the configured ef_search), whose first k rows are the vector side's top k.
        pool = max(state.settings.search_candidates, k)
        runs = [("default", state.settings.search_ef_search, pool)]
        runs += [("k=10", ef, k) for ef in ef_values]
        for configuration, ef, fetch in runs:
            recalls = []
            gaps = []
            hnsw_ms = []
            for vector, truth in zip(vectors, exact, strict=True):
                started = time.perf_counter()
                fetched = await repo.nearest_by_vector(
                    viewer,
                    vector,
                    fetch,
                    ef_search=ef,
                    max_scan_tuples=state.settings.search_max_scan_tuples,
                )
                hnsw_ms.append((time.perf_counter() - started) * 1000)
                approx = fetched[:k]
                recalls.append(len(set(approx) & set(truth)) / k)
                assert len(approx) == len(truth) == k
                exact_kth = await kth_distance(vector, truth)
                gaps.append((await kth_distance(vector, approx) / exact_kth - 1) * 100)
            results.append(
                Recall(
                    configuration=configuration
                    if configuration != "default"
                    else f"default ({fetch} rows)",
                    ef_search=ef,
                    recall=sum(recalls) / len(recalls),
                    gap_percent=sum(gaps) / len(gaps),
                    hnsw_ms=percentile(hnsw_ms, 50),
                    exact_ms=percentile(exact_ms, 50),
                )
            )
    return results


async def run(
    sizes: list[int], queries: int, ef_values: list[int], corpus_name: str, index: HnswOptions
) -> None:
    corpus = CORPORA[corpus_name](random.Random(11))
    embedder = HashingEmbedder(384)
    rows: list[Row] = []
    async with embedded_database() as (database, name, data_dir):
        settings = bench_settings(database.url(name), data_dir, ingestion_worker=False)
        async with live_app(settings) as (url, state), httpx.AsyncClient(timeout=60) as client:
            me, token = await register(client, url)
            other, _ = await register(client, url)
            conn = await asyncpg.connect(database.libpq_uri(name))
            await register_vector(conn)
            owners = [uuid.UUID(me), uuid.UUID(other)]
            total = 0
            try:
                for size in sizes:
                    embed_s, load_s = await seed(
                        conn, embedder, owners, size - total, corpus, index
                    )
                    total = size
                    questions = [corpus.question() for _ in range(queries)]
                    for q in questions[:5]:  # warm-up
                        await graphql(client, url, SEARCH, {"q": q}, token)
                    load_before = os.getloadavg()[0]
                    latencies = []
                    for q in questions:
                        started = time.perf_counter()
                        await graphql(client, url, SEARCH, {"q": q}, token)
                        latencies.append((time.perf_counter() - started) * 1000)
                    vectors = await embedder.embed(questions[:50])
                    measured = await recall_at(state, conn, me, vectors, ef_values)
                    load_after = os.getloadavg()[0]
                    for recall in measured:
                        rows.append(
                            Row(
                                chunks=size,
                                embed_s=embed_s,
                                load_s=load_s,
                                load_avg=(load_before, load_after),
                                p50=percentile(latencies, 50),
                                p95=percentile(latencies, 95),
                                recall=recall,
                            )
                        )
            finally:
                await conn.close()
    table = Table(
        title=f"ragstream search ({corpus.name} corpus; HNSW m={index.m}, "
        f"ef_construction={index.ef_construction}; API, limit 10, hybrid; viewer owns half "
        f"the chunks; {os.cpu_count()} CPUs)"
    )
    for column in (
        "chunks",
        "embed s",
        "COPY+HNSW s",
        "load avg",
        "API p50 ms",
        "API p95 ms",
        "vector side",
        "ef_search",
        "recall@10",
        "10th dist. +%",
        "statement ms",
        "exact k=10 ms",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row.chunks:,}",
            f"{row.embed_s:.0f}",
            f"{row.load_s:.0f}",
            f"{row.load_avg[0]:.1f}-{row.load_avg[1]:.1f}",
            f"{row.p50:.1f}",
            f"{row.p95:.1f}",
            row.recall.configuration,
            str(row.recall.ef_search),
            f"{row.recall.recall:.3f}",
            f"{row.recall.gap_percent:.2f}",
            f"{row.recall.hnsw_ms:.1f}",
            f"{row.recall.exact_ms:.1f}",
        )
    # Wide enough for every column when the output is not a terminal (a log file).
    console = Console(width=max(Console().width, 170))
    console.print(table)
    console.print(
        "The first row of each size is the default configuration: the HNSW statement search "
        "runs (its candidate pool, the configured ef_search) and the recall of its first 10 "
        "rows; API latency is always that configuration. k=10 rows ask HNSW for 10 rows at "
        "other ef_search values. statement ms: p50 of the bare statement. "
        "10th dist. +%: how much farther the approximate 10th neighbour is "
        "than the exact one (near-ties are cheap misses). load avg: 1-minute load average "
        "before and after the timed part."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument(
        "--ef-search",
        type=int,
        nargs="*",
        default=[],
        help="more ef_search values to measure recall at with k=10 (pgvector allows 1-1000)",
    )
    parser.add_argument(
        "--corpus",
        choices=sorted(CORPORA),
        default="topical",
        help="synthetic passages: documents with topics, or topic-free bags of words",
    )
    parser.add_argument("--m", type=int, default=HnswOptions.m, help="HNSW links per node")
    parser.add_argument(
        "--ef-construction",
        type=int,
        default=HnswOptions.ef_construction,
        help="HNSW candidate list while building",
    )
    args = parser.parse_args()
    if any(not 1 <= ef <= 1000 for ef in args.ef_search):
        parser.error("pgvector's hnsw.ef_search is between 1 and 1000")
    index = HnswOptions(m=args.m, ef_construction=args.ef_construction)
    asyncio.run(run(sorted(args.sizes), args.queries, args.ef_search, args.corpus, index))


if __name__ == "__main__":
    main()
