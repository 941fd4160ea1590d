"""Run the alembic migrations programmatically (`ragstream migrate`, `serve` start-up, tests)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ragstream.settings import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config


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
