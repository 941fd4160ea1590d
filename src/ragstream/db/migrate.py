"""Run the alembic migrations programmatically (`ragstream migrate`, `serve` start-up, tests)."""

from __future__ import annotations

import ast
import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text

from ragstream.settings import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.ext.asyncio import AsyncEngine


def _project_root() -> Path:
    # A source checkout keeps alembic.ini beside src/; the Docker image, a regular install,
    # keeps it in its working directory.
    candidates = [Path(__file__).resolve().parents[3], Path.cwd()]
    for root in candidates:
        if (root / "alembic.ini").is_file() and (root / "migrations").is_dir():
            return root
    raise ConfigurationError(
        "cannot find alembic.ini and migrations/; run ragstream from its source checkout"
    )


def alembic_config(database_url: str, *, embedding_dimensions: int | None = None) -> Config:
    _quiet_alembic()
    from alembic.config import Config

    root = _project_root()
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "migrations"))
    config.attributes["database_url"] = database_url
    # Read by the migration that creates the vector column (only when it first runs).
    config.attributes["embedding_dimensions"] = embedding_dimensions
    return config


class _MigrationStepsOnly(logging.Filter):
    """Lets through the lines that say a migration ran, not alembic's set-up chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or record.getMessage().startswith("Running ")


_STEPS_ONLY = _MigrationStepsOnly()


def _quiet_alembic() -> None:
    # Every command logs at INFO; alembic would add its plugin set-up (seven lines, logged as
    # it is imported, hence the imports after this) and its context description to each,
    # though nothing was migrated.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    migration = logging.getLogger("alembic.runtime.migration")
    if _STEPS_ONLY not in migration.filters:
        migration.addFilter(_STEPS_ONLY)


def upgrade_to_head(database_url: str, *, embedding_dimensions: int | None = None) -> None:
    """Blocking; call it from a thread inside an event loop (alembic's env runs asyncio.run)."""
    config = alembic_config(database_url, embedding_dimensions=embedding_dimensions)
    from alembic import command

    # "heads": areas add migrations independently; every branch is applied.
    command.upgrade(config, "heads")


@functools.cache
def head_revisions() -> frozenset[str]:
    """The heads of the migration graph, read from the scripts' source without loading alembic.

    Read once per process: the scripts ship with the installed package.

    Each script names its ``revision`` and ``down_revision`` (one, several or none) as literals;
    a head is a revision no other script names as its parent.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (_project_root() / "migrations" / "versions").glob("*.py"):
        for node in ast.parse(script.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.AnnAssign | ast.Assign) or node.value is None:
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {target.id for target in targets if isinstance(target, ast.Name)}
            if "revision" in names:
                revisions.add(ast.literal_eval(node.value))
            elif "down_revision" in names:
                parent = ast.literal_eval(node.value)
                parents.update([parent] if isinstance(parent, str) else parent or ())
    return frozenset(revisions - parents)


async def at_head(engine: AsyncEngine) -> bool:
    """Whether the database has every migration applied: then start-up need not load alembic.

    Only a database whose recorded versions are exactly the heads counts; anything else (a new
    database, an older one, one migrated by a newer ragstream) goes through alembic, which
    upgrades it or says what is wrong.
    """
    async with engine.connect() as connection:
        if await connection.scalar(text("SELECT to_regclass('alembic_version')")) is None:
            return False
        recorded = (await connection.scalars(text("SELECT version_num FROM alembic_version"))).all()
    return len(recorded) == len(set(recorded)) and set(recorded) == head_revisions()
