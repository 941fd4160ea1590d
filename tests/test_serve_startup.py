"""`ragstream serve` stopped at start-up by a configuration error: exit 2, a message only."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path

from tests.conftest import TEST_JWT_SECRET
from tests.test_embedded import command


async def test_serve_exits_2_without_a_traceback_on_an_embedding_dimension_mismatch(
    database_url: str, tmp_path: Path
) -> None:
    # given a database migrated for 384-dimensional embeddings and an embedder making 64
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGSTREAM_", "OPENAI_"))}
    env.update(
        RAGSTREAM_DATABASE_URL=database_url,
        RAGSTREAM_DATA_DIR=str(tmp_path / "data"),
        RAGSTREAM_JWT_SECRET=TEST_JWT_SECRET,
        RAGSTREAM_EMBEDDING_PROVIDER="hashing",
        RAGSTREAM_EMBEDDING_DIMENSIONS="64",
    )

    # when serve starts
    finished = await asyncio.to_thread(
        subprocess.run,
        [*command(), "serve", "--port", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        check=False,
    )

    # then it stops with the configuration-error status and says what to do, without a traceback
    stderr = finished.stderr.decode()
    assert finished.returncode == 2, stderr
    assert "ragstream: the database stores 384-dimensional embeddings" in stderr
    assert "run `ragstream reindex`" in stderr
    assert "Traceback" not in stderr + finished.stdout.decode()


async def test_serve_on_a_port_in_use_exits_2_naming_the_fix_before_starting_anything(
    tmp_path: Path,
) -> None:
    # given another process listening on the port
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGSTREAM_", "OPENAI_"))}
    env["RAGSTREAM_DATA_DIR"] = str(tmp_path / "data")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        # when serve is asked to listen there
        finished = await asyncio.to_thread(
            subprocess.run,
            [*command(), "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=120,
            check=False,
        )

    # then it stops with the configuration-error status, says what to do, and started nothing
    stderr = finished.stderr.decode()
    assert finished.returncode == 2, stderr
    assert f"ragstream: port {port} on 127.0.0.1 is in use by another process" in stderr
    assert "--port" in stderr
    assert not (tmp_path / "data" / "pgdata").exists()
