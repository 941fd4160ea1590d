"""Commands say what matters: nothing from alembic's or the embedded server's set-up at INFO."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from ragstream.db.embedded import start_embedded
from tests.processes import run_python

MIGRATE = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from ragstream.db.migrate import upgrade_to_head
upgrade_to_head(sys.argv[1])
"""
JOIN = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from ragstream.db.embedded import start_embedded
start_embedded(Path(sys.argv[1])).stop()
"""


async def test_migrating_a_database_at_the_latest_migration_logs_nothing(
    database_url: str,
) -> None:
    # Given a database already at the latest migration, When a process migrates it
    status, stdout, stderr = await run_python(MIGRATE, database_url)

    # Then alembic's plugin and context lines are not shown
    assert (status, stdout, stderr) == (0, "", "")


async def test_starting_or_joining_the_embedded_server_logs_nothing() -> None:
    # A folder outside pytest's basetemp, which a concurrent run may prune under a live server.
    with tempfile.TemporaryDirectory(prefix="ragstream-quiet-") as folder:
        data_dir = Path(folder)
        # Given no server for a data dir, When a process starts one (with XDG_RUNTIME_DIR
        # unset, which makes the wheel's platformdirs warn), Then it says nothing
        assert await run_python(JOIN, str(data_dir)) == (0, "", "")

        # Given a server this process started for the data dir
        database = await asyncio.to_thread(start_embedded, data_dir)
        try:
            # When another process joins it, as `create-admin` does while `serve` runs
            joined = await run_python(JOIN, str(data_dir))
        finally:
            await asyncio.to_thread(database.stop)

    # Then it does not claim to start anything
    assert joined == (0, "", "")
