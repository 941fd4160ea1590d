"""`ragstream worker`, `ragstream ingest` and `ragstream reindex`.

These need the database and the embedder only (no JWT secret, schema or chat provider), and
import what they use when they run: `ragstream --help` builds their parsers from this module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from ragstream.backend import Backend
    from ragstream.db.models.users import User
    from ragstream.db.repositories.documents import HnswOptions, IndexBuild

SUPPORTED_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".html", ".htm", ".pdf"}


def cmd_worker(args: argparse.Namespace) -> int:
    from ragstream.backend import Backend, connect, shared_events
    from ragstream.documents_worker import ingestion_worker
    from ragstream.observability.logs import configure_logging
    from ragstream.settings import Settings, check_ingestion_timing

    settings = Settings()
    configure_logging(str(settings.log_format), settings.log_level)
    check_ingestion_timing(settings)
    state = Backend(settings=settings)

    async def run() -> None:
        async with (
            # No API in this process to keep responsive: the pool runs at our own priority.
            connect(state, work_niceness=0),
            # Its documents' status events reach the servers' subscribers as they happen
            # (Redis, or LISTEN/NOTIFY), not at their next poll of the document.
            shared_events(state, listen=False),  # it publishes; nothing here subscribes
            ingestion_worker(state, enabled=True, signal_handlers=True) as worker,
        ):
            assert worker is not None
            await worker  # ends on SIGINT/SIGTERM, after running jobs finish or are requeued

    try:
        asyncio.run(run())
    except KeyboardInterrupt:  # a second SIGINT: stopped at once
        return 130
    return 0


def collect_files(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """Files named, and files found in folders (recursively, hidden ones left out): those to
    import, and those of an unsupported type, which are skipped (and listed)."""
    from ragstream.settings import ConfigurationError

    found: list[Path] = []
    unsupported: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                if not p.is_file() or any(
                    part.startswith(".") for part in p.relative_to(path).parts
                ):
                    continue
                (found if p.suffix.lower() in SUPPORTED_SUFFIXES else unsupported).append(p)
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigurationError(f"no such file or folder: {raw}")
    return found, unsupported


@dataclass
class Outcome:
    path: Path
    document_id: uuid.UUID | None = None
    status: str = "PENDING"
    chunks: int = 0
    note: str = ""


async def _ingest(args: argparse.Namespace, console: Console) -> list[Outcome]:
    from ragstream.backend import Backend, connect, shared_events
    from ragstream.db.repositories.users import UserRepository
    from ragstream.documents_worker import ingestion_worker
    from ragstream.domain.users.validation import normalize_email
    from ragstream.settings import ConfigurationError, Settings, check_ingestion_timing

    files, unsupported = collect_files(args.paths)
    settings = Settings()
    check_ingestion_timing(settings)  # before the embedded database starts
    state = Backend(settings=settings)
    outcomes = [Outcome(path) for path in files]
    skipped = [
        Outcome(path, status="SKIPPED", note=f"unsupported file type ({path.suffix or 'none'})")
        for path in unsupported
    ]
    async with connect(state):
        async with state.sessionmaker() as session:
            users = UserRepository(session)
            owner = (
                await users.get_by_email(normalize_email(args.owner))
                if args.owner
                else await users.first_admin()
            )
        if owner is None:
            raise ConfigurationError(
                "no such owner: pass --owner EMAIL of an existing account "
                "(or create an admin with `ragstream create-admin`)"
            )
        # Its worker takes any document's job, a server's uploads too: the status events reach
        # the servers' subscribers as they happen, as a `ragstream worker`'s do.
        async with shared_events(state, listen=False), ingestion_worker(state, enabled=True):
            imported = await _import(state, owner, outcomes, args.shared, console)
    return imported + skipped


async def _import(
    state: Backend, owner: User, outcomes: list[Outcome], shared: bool, console: Console
) -> list[Outcome]:
    """Store each file as a document, then wait until the worker has processed them all."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from ragstream.domain.documents import service
    from ragstream.domain.documents.enums import TERMINAL_STATUSES, Visibility
    from ragstream.domain.errors import Conflict, DomainError
    from ragstream.domain.flags.features import defaults_from_settings, resolve

    visibility = Visibility.SHARED if shared else Visibility.PRIVATE
    # The operator's import: the server's limits apply, not the owner's feature flags.
    # Only the upload limits are read, so the chat model named here does not matter.
    defaults = defaults_from_settings(state.settings, chat_model=state.settings.chat_model)
    policy = resolve([], defaults, owner.role).uploads()
    for outcome in outcomes:
        try:
            data = outcome.path.read_bytes()
            async with state.sessionmaker.begin() as session:
                document = await service.upload_document(
                    session,
                    owner,
                    filename=outcome.path.name,
                    data=data,
                    title=None,
                    visibility=visibility,
                    policy=policy,
                )
            outcome.document_id = document.id
        except Conflict as exc:
            outcome.status, outcome.note = "SKIPPED", exc.message
        except DomainError as exc:
            outcome.status, outcome.note = "REFUSED", exc.message
        except OSError as exc:
            outcome.status, outcome.note = "REFUSED", f"cannot read: {exc.strerror}"
    pending = {o.document_id: o for o in outcomes if o.document_id is not None}
    columns: list[Any] = [
        TextColumn("[bold]ingesting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("ingest", total=len(pending))
        while pending:
            async with state.sessionmaker() as session:
                rows = await service.get_documents(session, owner, list(pending))
            for document_id, row in rows.items():
                if row.status in TERMINAL_STATUSES:
                    outcome = pending.pop(document_id)
                    outcome.status, outcome.chunks = row.status, row.chunk_count
                    outcome.note = row.error or str(document_id)
                    progress.advance(bar)
            for document_id in set(pending) - set(rows):  # deleted meanwhile
                pending.pop(document_id).status = "DELETED"
                progress.advance(bar)
            if pending:
                await asyncio.sleep(0.2)
    return outcomes


@contextlib.contextmanager
def logs_through(console: Console) -> Iterator[None]:
    """Log records printed by the console that draws the progress bar, above the bar rather than
    through it."""
    from rich.logging import RichHandler

    root = logging.getLogger()
    handler = RichHandler(console=console, show_path=False)
    previous = root.handlers[:]
    root.handlers[:] = [handler]
    try:
        yield
    finally:
        root.handlers[:] = previous


def cmd_ingest(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    with logs_through(console):
        outcomes = asyncio.run(_ingest(args, console))
    table = Table(title="ragstream ingest")
    for column in ("file", "status", "chunks", "document / note"):
        table.add_column(column, overflow="fold")  # ids and reasons in full, however narrow
    colours = {"READY": "green", "FAILED": "red", "REFUSED": "red", "SKIPPED": "yellow"}
    for o in outcomes:
        colour = colours.get(o.status, "white")
        table.add_row(str(o.path), f"[{colour}]{o.status}[/]", str(o.chunks), o.note)
    console.print(table)
    ready = sum(o.status == "READY" for o in outcomes)
    chunks = sum(o.chunks for o in outcomes)
    skipped = sum(o.status == "SKIPPED" for o in outcomes)
    console.print(
        f"{ready} of {len(outcomes)} files ready, {chunks} chunks"
        + (f", {skipped} skipped" if skipped else "")
    )
    return 0 if all(o.status in ("READY", "SKIPPED") for o in outcomes) else 1


def hnsw_options(args: argparse.Namespace) -> HnswOptions | None:
    """The index build parameters asked for; None keeps those of the existing index."""
    from ragstream.db.repositories.documents import HnswOptions
    from ragstream.settings import ConfigurationError

    if args.m is None and args.ef_construction is None:
        return None
    defaults = HnswOptions()
    try:
        return HnswOptions(
            m=defaults.m if args.m is None else args.m,
            ef_construction=(
                max(defaults.ef_construction, 2 * (args.m or defaults.m))
                if args.ef_construction is None
                else args.ef_construction
            ),
        )
    except ValueError as exc:
        raise ConfigurationError(f"reindex: {exc}") from exc


def index_build(args: argparse.Namespace) -> IndexBuild:
    """The memory and parallel workers the index build may use."""
    from ragstream.db.repositories.documents import IndexBuild
    from ragstream.settings import ConfigurationError

    try:
        return IndexBuild(memory=args.build_memory or IndexBuild.memory, workers=args.build_workers)
    except ValueError as exc:
        raise ConfigurationError(f"reindex: {exc}") from exc


def cmd_reindex(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from ragstream.backend import Backend, connect
    from ragstream.domain.documents.reindex import rebuild_index, reindex
    from ragstream.settings import Settings

    console = Console()
    options = hnsw_options(args)
    build = index_build(args)
    state = Backend(settings=Settings())

    async def run() -> tuple[int | None, int]:
        async with connect(state):
            if args.index_only:
                with console.status("building the vector index"):
                    await rebuild_index(state.sessionmaker, options, build=build)
                return None, 0
            with Progress(
                TextColumn("[bold]re-embedding"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as progress:
                bar = progress.add_task("reindex", total=None)
                return await reindex(
                    state.sessionmaker,
                    state.embedder,
                    batch_size=state.settings.embedding_batch_size,
                    options=options,
                    build=build,
                    on_start=lambda total: progress.update(bar, total=total),
                    on_progress=lambda done: progress.update(bar, completed=done),
                )

    started = time.perf_counter()
    with logs_through(console):
        previous, count = asyncio.run(run())
    elapsed = time.perf_counter() - started
    if args.index_only:
        built = "with its previous parameters" if options is None else describe(options)
        console.print(f"rebuilt the vector index {built} in {elapsed:.0f} s")
        return 0
    dimensions = state.settings.embedding_dimensions
    change = f"{previous} -> {dimensions}" if previous != dimensions else f"{dimensions}"
    console.print(f"re-embedded {count} chunks ({change} dimensions) in {elapsed:.0f} s")
    return 0


def describe(options: HnswOptions) -> str:
    return f"(m={options.m}, ef_construction={options.ef_construction})"


def add_commands(sub: Any) -> None:
    sub.add_parser(
        "worker", help="run an ingestion worker (no HTTP); scale out with several"
    ).set_defaults(func=cmd_worker)
    ingest = sub.add_parser("ingest", help="import files and folders into the knowledge base")
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursive)")
    ingest.add_argument("--owner", metavar="EMAIL", help="owner account (default: first admin)")
    ingest.add_argument(
        "--shared", action="store_true", help="share with every user (owner must be an admin)"
    )
    ingest.set_defaults(func=cmd_ingest)
    reindex = sub.add_parser(
        "reindex",
        help="re-embed every chunk (after changing the embedding model or its dimensions) "
        "and rebuild the vector index",
    )
    reindex.add_argument(
        "--index-only",
        action="store_true",
        help="only rebuild the HNSW index, e.g. with other --m / --ef-construction",
    )
    reindex.add_argument(
        "--m",
        type=int,
        help="HNSW links per node (pgvector default 16); more: better recall, slower build",
    )
    reindex.add_argument(
        "--ef-construction",
        type=int,
        help="HNSW candidate list while building (default 64, at least 2 x m)",
    )
    reindex.add_argument(
        "--build-memory",
        metavar="SIZE",
        help="memory for building the index (maintenance_work_mem, default 1GB); the graph "
        "needs about 2.5GB per million chunks of 384 dimensions, or the build slows severalfold",
    )
    reindex.add_argument(
        "--build-workers",
        type=int,
        metavar="N",
        help="parallel workers for the build (max_parallel_maintenance_workers; default: "
        "the server's)",
    )
    reindex.set_defaults(func=cmd_reindex)
