"""`ragstream ingest` and `ragstream reindex`, run as the CLI entry point against the test
database while a server serves the same database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text

from ragstream import cli
from ragstream.db.repositories.documents import HnswOptions, IndexBuild, VectorIndexRepository
from ragstream.settings import Settings
from tests.conftest import TEST_JWT_SECRET
from tests.documents_support import SEARCH
from tests.support import LiveServer
from tests.test_documents_events import ingested_elsewhere, watched_elsewhere

pytestmark = pytest.mark.usefixtures("cli_environment")

INDEX_OPTIONS = (
    "SELECT reloptions FROM pg_class WHERE relname = 'ix_chunks_embedding_hnsw' AND relkind = 'i'"
)
DOCUMENTS = "SELECT filename, status, chunk_count FROM documents ORDER BY filename"


@pytest.fixture
def cli_environment(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> None:
    """What an operator's shell would hold: the server's database and an offline embedder."""
    monkeypatch.setenv("RAGSTREAM_DATABASE_URL", database_url)
    monkeypatch.setenv("RAGSTREAM_DATA_DIR", str(tmp_path / "cli"))
    monkeypatch.setenv("RAGSTREAM_JWT_SECRET", TEST_JWT_SECRET)
    monkeypatch.setenv("RAGSTREAM_EMBEDDING_PROVIDER", "hashing")
    monkeypatch.setenv("RAGSTREAM_CHAT_PROVIDER", "extractive")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # the summary table's rows on one line each


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``ragstream ARGV`` (its own event loop, in a thread)."""
    capsys.readouterr()
    status = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return status, out, err


async def fetch(database_url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def test_ingest_imports_a_folder_recursively_and_skips_duplicates(
    server: LiveServer, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    account = await server.register()
    folder = tmp_path / "handbook"
    (folder / "sub").mkdir(parents=True)
    (folder / ".drafts").mkdir()
    (folder / "a.md").write_text("# Forklifts\n\nForklift drivers renew their licence yearly.\n")
    (folder / "sub" / "b.txt").write_text("The canteen serves soup on Thursdays.\n")
    (folder / "sub" / "a-copy.md").write_bytes((folder / "a.md").read_bytes())
    (folder / ".drafts" / "hidden.md").write_text("Not part of the handbook.\n")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")

    status, out, _ = await run_cli(capsys, "ingest", str(folder), "--owner", account.email)

    assert status == 0
    assert "2 of 4 files ready, 2 chunks, 2 skipped" in out
    # the copy of a.md (with the id of the existing document), and the image
    assert out.count("SKIPPED") == 2
    assert "unsupported file type (.png)" in out
    rows = await fetch(database_url, DOCUMENTS)
    assert [(r["filename"], r["status"]) for r in rows] == [("a.md", "READY"), ("b.txt", "READY")]
    found = await server.execute(SEARCH, {"q": "canteen soup"}, token=account.access_token)
    hits = found.ok()["search"]
    assert hits[0]["document"]["title"] == "b"


async def test_ingest_with_an_unknown_owner_stores_nothing(
    server: LiveServer, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.md").write_text("Anything.\n")

    status, _, err = await run_cli(
        capsys, "ingest", str(tmp_path / "a.md"), "--owner", "nobody@example.com"
    )

    assert status == 2
    assert "no such owner" in err
    assert "Traceback" not in err
    assert await fetch(database_url, DOCUMENTS) == []


async def test_ingest_with_a_grace_the_stalled_time_cannot_hold_stores_nothing(
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "a.md").write_text("Anything.\n")
    monkeypatch.setenv("RAGSTREAM_INGESTION_SHUTDOWN_TIMEOUT_SECONDS", "25")

    status, _, err = await run_cli(capsys, "ingest", str(tmp_path / "a.md"))

    assert status == 2
    assert "RAGSTREAM_INGESTION_SHUTDOWN_TIMEOUT_SECONDS (25) must be under" in err
    assert "Traceback" not in err
    assert await fetch(database_url, DOCUMENTS) == []


async def test_reindex_rebuilds_the_index_with_new_parameters_and_keeps_them(
    server: LiveServer, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    account = await server.register()
    (tmp := Path(server.state.settings.data_dir) / "in").mkdir(parents=True)
    (tmp / "pumps.md").write_text("Centrifugal pumps need their seals checked monthly.\n")
    assert (await run_cli(capsys, "ingest", str(tmp), "--owner", account.email))[0] == 0
    assert (await fetch(database_url, INDEX_OPTIONS))[0]["reloptions"] == [  # the migrations'
        "m=24",
        "ef_construction=96",
    ]

    status, out, _ = await run_cli(
        capsys, "reindex", "--index-only", "--m", "24", "--ef-construction", "100"
    )
    assert status == 0
    assert "m=24, ef_construction=100" in out
    assert (await fetch(database_url, INDEX_OPTIONS))[0]["reloptions"] == [
        "m=24",
        "ef_construction=100",
    ]

    # A full re-embedding keeps the parameters the index was last built with.
    status, out, _ = await run_cli(capsys, "reindex")
    assert status == 0
    assert "re-embedded 1 chunks" in out
    assert (await fetch(database_url, INDEX_OPTIONS))[0]["reloptions"] == [
        "m=24",
        "ef_construction=100",
    ]
    found = await server.execute(SEARCH, {"q": "pump seals"}, token=account.access_token)
    hits = found.ok()["search"]
    assert [hit["document"]["title"] for hit in hits] == ["pumps"]


async def test_reindex_builds_with_the_memory_and_workers_asked_for(
    server: LiveServer, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = await fetch(database_url, INDEX_OPTIONS)

    status, out, _ = await run_cli(
        capsys, "reindex", "--index-only", "--build-memory", "256MB", "--build-workers", "0"
    )

    assert status == 0
    assert "rebuilt the vector index with its previous parameters" in out
    assert await fetch(database_url, INDEX_OPTIONS) == before
    assert len(before) == 1


async def test_the_index_build_holds_its_memory_and_workers_for_its_transaction_only(
    server: LiveServer,
) -> None:
    show = (
        "SELECT current_setting('maintenance_work_mem'),"
        " current_setting('max_parallel_maintenance_workers')"
    )
    async with server.state.sessionmaker() as session:
        server_values = tuple((await session.execute(text(show))).one())
    async with server.state.sessionmaker.begin() as session:
        await VectorIndexRepository(session).replace_index(
            HnswOptions(), IndexBuild(memory="256MB", workers=0)
        )
        assert tuple((await session.execute(text(show))).one()) == ("256MB", "0")
    async with server.state.sessionmaker() as session:
        assert tuple((await session.execute(text(show))).one()) == server_values
    assert server_values != ("256MB", "0")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--m", "101"], "m must be between 2 and 100"),
        (["--m", "32", "--ef-construction", "40"], "ef_construction must be at least twice m"),
        (["--ef-construction", "1001"], "ef_construction must be between 4 and 1000"),
        (["--build-memory", "4G"], "build memory must be a whole number of kB, MB, GB or TB"),
        (["--build-memory", "1.5GB"], "build memory must be a whole number of kB, MB, GB or TB"),
        (["--build-memory", "512kB"], "build memory must be between 1MB and 2TB"),
        (["--build-memory", "3TB"], "build memory must be between 1MB and 2TB"),
        (["--build-workers", "-1"], "build workers must be between 0 and 1024"),
        (["--build-workers", "1025"], "build workers must be between 0 and 1024"),
    ],
)
async def test_reindex_refuses_invalid_index_parameters_and_changes_nothing(
    server: LiveServer,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    before = await fetch(database_url, INDEX_OPTIONS)

    status, _, err = await run_cli(capsys, "reindex", "--index-only", *argv)

    assert status == 2
    assert message in err
    assert await fetch(database_url, INDEX_OPTIONS) == before
    assert len(before) == 1


async def test_commands_without_http_need_no_jwt_secret_even_in_production(
    server: LiveServer,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a production configuration without RAGSTREAM_JWT_SECRET, which serve would refuse
    account = await server.register()
    monkeypatch.setenv("RAGSTREAM_ENVIRONMENT", "production")
    monkeypatch.delenv("RAGSTREAM_JWT_SECRET")
    (tmp_path / "valves.md").write_text("Valves are greased every spring.\n")

    # When migrate, ingest and reindex run, Then they work
    assert (await run_cli(capsys, "migrate"))[:2] == (0, "database is at the latest migration\n")
    status, out, _ = await run_cli(
        capsys, "ingest", str(tmp_path / "valves.md"), "--owner", account.email
    )
    assert (status, "1 of 1 files ready" in out) == (0, True)
    assert (await run_cli(capsys, "reindex", "--index-only"))[0] == 0
    # and no secret was made up for them
    assert not (tmp_path / "cli" / "jwt_secret").exists()


async def test_ingest_sends_the_status_events_of_the_jobs_it_runs_to_the_servers_subscribers(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its worker takes the server's waiting job too, beside the file it imports.
    async with watched_elsewhere(settings) as (account, watcher):
        (tmp_path / "manual.md").write_text("# Valves\n\nCheck the relief valves monthly.\n")

        status, out, _ = await run_cli(
            capsys, "ingest", str(tmp_path / "manual.md"), "--owner", account.email
        )

        assert status == 0, out
        await ingested_elsewhere(watcher)
