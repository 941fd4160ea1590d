"""Search latency through the API and HNSW recall, at growing knowledge-base sizes.

Usage: python -m bench.search [--sizes 10000 100000] [--queries 100] [--compare 10:40 10:200]
                              [--m M] [--ef-construction N]
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
from pathlib import Path

import asyncpg
import httpx
import numpy as np
from pgvector.asyncpg import register_vector
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from bench.common import bench_settings, embedded_database, graphql, live_app, percentile, register
from ragstream.app import AppState
from ragstream.db.models.users import User
from ragstream.db.repositories.documents import CHUNK_COPY_COLUMNS, HnswOptions, IndexBuild
from ragstream.db.repositories.search import SearchRepository
from ragstream.domain.llm.embeddings import HashingEmbedder
from ragstream.domain.retrieval.service import SideSessions

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


def synthetic_rows(
    vectors: list[list[float]], texts: list[str], owners: list[uuid.UUID]
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Document and chunk rows for COPY: ``CHUNKS_PER_DOCUMENT`` passages per document, the
    documents owned in turn by ``owners``."""
    documents: list[tuple[object, ...]] = []
    chunks: list[tuple[object, ...]] = []
    for start in range(0, len(texts), CHUNKS_PER_DOCUMENT):
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
    return documents, chunks


async def copy_rows(
    conn: asyncpg.Connection,
    documents: list[tuple[object, ...]],
    chunks: list[tuple[object, ...]],
) -> None:
    await conn.copy_records_to_table("documents", records=documents, columns=DOCUMENT_COLUMNS)
    await conn.copy_records_to_table("chunks", records=chunks, columns=CHUNK_COPY_COLUMNS)


DOCUMENT_COLUMNS = [
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
]


@dataclass
class Seeded:
    embed_s: float
    copy_s: float  # COPY of the new rows, without the HNSW index
    build_s: float  # the HNSW index over every chunk
    insert_ms: float  # per chunk, COPY into the indexed table (what ingestion pays)


@dataclass(frozen=True)
class Build:
    """How the bench builds the HNSW index: graph parameters and build resources."""

    index: HnswOptions
    resources: IndexBuild


SEED_BATCH = 20_000  # chunks generated, embedded and copied at a time (bounds the bench's memory)


async def load_chunks(
    conn: asyncpg.Connection,
    embedder: HashingEmbedder,
    owners: list[uuid.UUID],
    count: int,
    corpus: Corpus,
) -> tuple[float, float]:
    """Generate, embed and COPY ``count`` chunks, ``SEED_BATCH`` at a time; returns the
    seconds spent embedding and copying."""
    embedded = copied = 0.0
    for offset in range(0, count, SEED_BATCH):
        size = min(SEED_BATCH, count - offset)
        texts = [
            passage
            for start in range(0, size, CHUNKS_PER_DOCUMENT)
            for passage in corpus.document(min(CHUNKS_PER_DOCUMENT, size - start))
        ]
        started = time.perf_counter()
        vectors = await asyncio.to_thread(embedder.embed_sync, texts)
        embedded += time.perf_counter() - started
        documents, chunks = synthetic_rows(vectors, texts, owners)
        started = time.perf_counter()
        await copy_rows(conn, documents, chunks)
        copied += time.perf_counter() - started
    return embedded, copied


async def seed(
    conn: asyncpg.Connection,
    embedder: HashingEmbedder,
    owners: list[uuid.UUID],
    count: int,
    corpus: Corpus,
    build: Build,
) -> Seeded:
    """Add ``count`` chunks with COPY and build the HNSW index over all of them."""
    await conn.execute("DROP INDEX IF EXISTS ix_chunks_embedding_hnsw")
    embedded, copied = await load_chunks(conn, embedder, owners, count, corpus)
    # Built as `ragstream reindex --index-only` builds it, with the given build memory.
    started = time.perf_counter()
    await conn.execute(f"SET maintenance_work_mem = '{build.resources.memory}'")
    if build.resources.workers is not None:
        workers = int(build.resources.workers)
        await conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
    await conn.execute(
        "CREATE INDEX ix_chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops)"
        f" WITH (m = {build.index.m}, ef_construction = {build.index.ef_construction})"
    )
    built = time.perf_counter() - started
    await conn.execute("ANALYZE chunks; ANALYZE documents")
    return Seeded(embedded, copied, built, await insert_cost(conn, embedder, owners, corpus))


async def insert_cost(
    conn: asyncpg.Connection, embedder: HashingEmbedder, owners: list[uuid.UUID], corpus: Corpus
) -> float:
    """Milliseconds per chunk of COPYing ten more documents into the indexed table (rolled
    back): what each ingested chunk pays for the table and its indexes."""
    texts = [passage for _ in range(10) for passage in corpus.document(CHUNKS_PER_DOCUMENT)]
    documents, chunks = synthetic_rows(embedder.embed_sync(texts), texts, owners)
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.copy_records_to_table("documents", records=documents, columns=DOCUMENT_COLUMNS)
        started = time.perf_counter()
        await conn.copy_records_to_table("chunks", records=chunks, columns=CHUNK_COPY_COLUMNS)
        return (time.perf_counter() - started) * 1000 / len(chunks)
    finally:
        await transaction.rollback()


@dataclass
class Configuration:
    name: str
    scan: int  # candidates the HNSW scan hands over, ordered exactly
    ef_search: int


@dataclass
class Measured:
    configuration: Configuration
    recall: float  # |approximate ∩ exact| / k, averaged over the queries
    gap_percent: float  # how much farther the approximate k-th neighbour is than the exact one
    statement_ms: float  # p50 of the bare vector statement (no API around it)
    statement_cpu_ms: float  # mean CPU time the PostgreSQL backend spent on the statement
    api_p50: float | None = None  # through the API (the default configuration only)
    api_p95: float | None = None
    # The same questions through the API with both halves in one session, one after the other
    # (search_side_connections 0), asked in the same rounds.
    in_turn_p50: float | None = None


@dataclass
class Row:
    chunks: int
    seeded: Seeded
    load_avg: tuple[float, float]  # 1-minute load average before and after the timed part
    exact_ms: float
    measured: Measured


class Probe:
    """The vector statement for one configuration, timed, and its recall@k against the exact
    statement (same visibility filter, same cosine operator; only the index use differs).
    Misses that are near-ties show in the distance gap of the k-th neighbour."""

    def __init__(
        self, repo: SearchRepository, conn: asyncpg.Connection, viewer: User, backend: int
    ) -> None:
        self.repo = repo
        self.conn = conn
        self.viewer = viewer
        self.backend = backend  # process id of the repository session's PostgreSQL backend

    async def kth_distance(self, vector: list[float], ids: list[uuid.UUID]) -> float:
        distances = await self.conn.fetch(
            "SELECT embedding <=> $1 FROM chunks WHERE id = ANY($2)",
            np.asarray(vector, dtype=np.float32),
            ids,
        )
        return float(max(row[0] for row in distances))

    async def exact(self, vector: list[float], k: int) -> tuple[list[uuid.UUID], float]:
        started = time.perf_counter()
        ids = await self.repo.exact_nearest_by_vector(self.viewer, vector, k)
        return ids, (time.perf_counter() - started) * 1000

    async def approximate(
        self, vector: list[float], fetch: int, configuration: Configuration, max_scan_tuples: int
    ) -> tuple[list[uuid.UUID], float, float]:
        """The ids, the wall-clock milliseconds and the backend's CPU milliseconds."""
        cpu = backend_cpu_ms(self.backend)
        started = time.perf_counter()
        ids = await self.repo.nearest_by_vector(
            self.viewer,
            vector,
            fetch,
            scan=configuration.scan,
            ef_search=configuration.ef_search,
            max_scan_tuples=max_scan_tuples,
        )
        elapsed = (time.perf_counter() - started) * 1000
        return ids, elapsed, backend_cpu_ms(self.backend) - cpu


def backend_cpu_ms(pid: int) -> float:
    """User and system CPU time a local process has used so far (Linux /proc, in ticks of
    usually 10 ms: only a mean over many statements says something). Unlike wall-clock time
    it hardly grows when other processes compete for the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


async def measure(
    state: AppState,
    client: httpx.AsyncClient,
    url: str,
    token: str,
    conn: asyncpg.Connection,
    me: str,
    questions: list[str],
    configurations: list[Configuration],
    k: int = 10,
) -> tuple[list[Measured], float]:
    """Every configuration over the same questions, the default one first. For the default,
    each question goes through the API and then through the bare statement, alternately, so
    both see the same machine. Returns the measurements and the exact statement's p50."""
    vectors = [(await state.embedder.embed([question]))[0] for question in questions]
    pool = max(state.settings.search_candidates, k)
    results: list[Measured] = []
    async with state.sessionmaker() as session:
        viewer = await session.get(User, uuid.UUID(me))
        assert viewer is not None
        backend = int(await session.scalar(text("SELECT pg_backend_pid()")) or 0)
        probe = Probe(SearchRepository(session), conn, viewer, backend)
        exact: list[list[uuid.UUID]] = []
        exact_ms: list[float] = []
        for vector in vectors:
            ids, ms = await probe.exact(vector, k)
            exact.append(ids)
            exact_ms.append(ms)
        for index, configuration in enumerate(configurations):
            default = index == 0
            # The default is the statement search runs (its candidate pool); the others ask
            # for k rows.
            fetch = pool if default else k
            for vector in vectors[:3]:  # warm-up
                await probe.approximate(
                    vector, fetch, configuration, state.settings.search_max_scan_tuples
                )
            recalls, gaps, statement_ms, statement_cpu = [], [], [], []
            api_ms: list[float] = []
            in_turn_ms: list[float] = []
            sides = state.search_sides
            for n, (question, vector, truth) in enumerate(
                zip(questions, vectors, exact, strict=True)
            ):
                if default:
                    # Both ways in turn, each first every other question.
                    ways = [(sides, api_ms), (SideSessions(), in_turn_ms)]
                    try:
                        for way, times in ways if n % 2 == 0 else ways[::-1]:
                            state.search_sides = way
                            started = time.perf_counter()
                            await graphql(client, url, SEARCH, {"q": question}, token)
                            times.append((time.perf_counter() - started) * 1000)
                    finally:
                        state.search_sides = sides
                fetched, ms, cpu = await probe.approximate(
                    vector, fetch, configuration, state.settings.search_max_scan_tuples
                )
                statement_ms.append(ms)
                statement_cpu.append(cpu)
                approx = fetched[:k]
                assert len(approx) == len(truth) == k
                recalls.append(len(set(approx) & set(truth)) / k)
                exact_kth = await probe.kth_distance(vector, truth)
                gaps.append((await probe.kth_distance(vector, approx) / exact_kth - 1) * 100)
            results.append(
                Measured(
                    configuration=configuration,
                    recall=sum(recalls) / len(recalls),
                    gap_percent=sum(gaps) / len(gaps),
                    statement_ms=percentile(statement_ms, 50),
                    statement_cpu_ms=sum(statement_cpu) / len(statement_cpu),
                    api_p50=percentile(api_ms, 50) if api_ms else None,
                    api_p95=percentile(api_ms, 95) if api_ms else None,
                    in_turn_p50=percentile(in_turn_ms, 50) if in_turn_ms else None,
                )
            )
    return results, percentile(exact_ms, 50)


async def run(
    sizes: list[int],
    queries: int,
    others: list[Configuration],
    corpus_name: str,
    build: Build,
    server: dict[str, str],
) -> None:
    corpus = CORPORA[corpus_name](random.Random(11))
    embedder = HashingEmbedder(384)
    rows: list[Row] = []
    async with embedded_database(server) as (database, name, data_dir):
        settings = bench_settings(database.url(name), data_dir, ingestion_worker=False)
        default = Configuration(
            f"default ({settings.search_candidates} of {settings.search_scan})",
            settings.search_scan,
            settings.search_ef_search,
        )
        async with live_app(settings) as (url, state), httpx.AsyncClient(timeout=60) as client:
            me, token = await register(client, url)
            other, _ = await register(client, url)
            conn = await asyncpg.connect(database.libpq_uri(name))
            await register_vector(conn)
            owners = [uuid.UUID(me), uuid.UUID(other)]
            memory = await conn.fetchrow(
                "SELECT current_setting('shared_buffers'), current_setting('effective_cache_size')"
            )
            total = 0
            try:
                for size in sizes:
                    seeded = await seed(conn, embedder, owners, size - total, corpus, build)
                    total = size
                    print(
                        f"{size:,} chunks: embedded in {seeded.embed_s:.0f} s, copied in "
                        f"{seeded.copy_s:.0f} s, HNSW built in {seeded.build_s:.0f} s "
                        f"(load average {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
                    questions = [corpus.question() for _ in range(queries)]
                    for q in questions[:5]:  # warm-up
                        await graphql(client, url, SEARCH, {"q": q}, token)
                    load_before = os.getloadavg()[0]
                    measured, exact_ms = await measure(
                        state, client, url, token, conn, me, questions, [default, *others]
                    )
                    load_after = os.getloadavg()[0]
                    rows.extend(
                        Row(size, seeded, (load_before, load_after), exact_ms, m) for m in measured
                    )
            finally:
                await conn.close()
    print_table(
        rows, corpus.name, build, f"shared_buffers {memory[0]}, effective_cache_size {memory[1]}"
    )


def print_table(rows: list[Row], corpus: str, build: Build, server: str) -> None:
    resources = build.resources
    workers = "the server's" if resources.workers is None else str(resources.workers)
    table = Table(
        title=f"ragstream search ({corpus} corpus; HNSW m={build.index.m}, "
        f"ef_construction={build.index.ef_construction}, built with {resources.memory} and "
        f"{workers} parallel workers; server: {server}; API: limit 10, hybrid; viewer owns "
        f"half the chunks; {os.cpu_count()} CPUs)"
    )
    for column in (
        "chunks",
        "embed s",
        "COPY s",
        "HNSW build s",
        "insert ms/chunk",
        "load avg",
        "vector side",
        "ef_search",
        "recall@10",
        "10th dist. +%",
        "statement ms",
        "backend CPU ms",
        "API p50 ms",
        "API p95 ms",
        "API / statement",
        "API, halves in turn, p50 ms",
        "exact ms",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        m = row.measured
        table.add_row(
            f"{row.chunks:,}",
            f"{row.seeded.embed_s:.0f}",
            f"{row.seeded.copy_s:.0f}",
            f"{row.seeded.build_s:.0f}",
            f"{row.seeded.insert_ms:.2f}",
            f"{row.load_avg[0]:.1f}-{row.load_avg[1]:.1f}",
            m.configuration.name,
            str(m.configuration.ef_search),
            f"{m.recall:.3f}",
            f"{m.gap_percent:.2f}",
            f"{m.statement_ms:.1f}",
            f"{m.statement_cpu_ms:.1f}",
            "" if m.api_p50 is None else f"{m.api_p50:.1f}",
            "" if m.api_p95 is None else f"{m.api_p95:.1f}",
            "" if m.api_p50 is None else f"{m.api_p50 / m.statement_ms:.2f}x",
            "" if m.in_turn_p50 is None else f"{m.in_turn_p50:.1f}",
            f"{row.exact_ms:.0f}",
        )
    # Wide enough for every column when the output is not a terminal (a log file).
    console = Console(width=max(Console().width, 200))
    console.print(table)
    console.print(
        "The first row of each size is the default configuration: the vector statement search "
        "runs (the HNSW scan hands over `scan` candidates, ordered by exact distance, of which "
        "the closest 60 are kept) and the recall of its first 10 rows against an exact scan; "
        "each question goes through the API (limit 10, both halves of the hybrid search, the "
        "full-text half on a second connection as configured by default) and through the bare "
        "statement in turn; API, halves in turn: the same questions through the API with both "
        "halves in one session, one after the other (search_side_connections 0), each way "
        "asked first every other question. The other rows ask the statement for 10 rows "
        "with the given scan and ef_search. insert ms/chunk: COPY of 1,000 more chunks into "
        "the indexed table. 10th dist. +%: how much farther the approximate 10th neighbour "
        "is than the exact one. backend CPU ms: mean CPU time of the PostgreSQL backend per "
        "statement, which competing processes hardly change. load avg: 1-minute load average "
        "before and after the timed part."
    )


def server_parameters(parser: argparse.ArgumentParser, given: list[str]) -> dict[str, str]:
    """``--server`` NAME=VALUE pairs as a dict; the parser exits on a malformed one."""
    server = {}
    for pair in given:
        name, _, value = pair.partition("=")
        if not name.replace("_", "").isalnum() or not value.replace(".", "").isalnum():
            parser.error(f"--server wants NAME=VALUE such as shared_buffers=2GB, not {pair!r}")
        server[name] = value
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="SCAN:EF",
        help="more vector-side configurations to measure (10 rows kept of SCAN candidates, "
        "hnsw.ef_search EF; pgvector allows 1-1000), e.g. 10:40 10:200",
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
    parser.add_argument(
        "--build-memory",
        default=IndexBuild.memory,
        help="maintenance_work_mem of the HNSW build (the graph must fit, or it spills)",
    )
    parser.add_argument(
        "--build-workers",
        type=int,
        default=None,
        help="max_parallel_maintenance_workers of the HNSW build (default: the server's, 2)",
    )
    parser.add_argument(
        "--server",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="parameters of the embedded server, e.g. shared_buffers=2GB "
        "effective_cache_size=8GB (default: initdb's, shared_buffers 128MB)",
    )
    args = parser.parse_args()
    server = server_parameters(parser, args.server)
    others = []
    for given in args.compare:
        scan, _, ef = given.partition(":")
        if not (scan.isdigit() and ef.isdigit()) or not 1 <= int(ef) <= 1000:
            parser.error(f"--compare wants SCAN:EF with EF between 1 and 1000, not {given!r}")
        others.append(Configuration(f"{scan} candidates", int(scan), int(ef)))
    try:
        build = Build(
            HnswOptions(m=args.m, ef_construction=args.ef_construction),
            IndexBuild(memory=args.build_memory, workers=args.build_workers),
        )
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(run(sorted(args.sizes), args.queries, others, args.corpus, build, server))


if __name__ == "__main__":
    main()
