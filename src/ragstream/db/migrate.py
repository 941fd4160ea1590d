"""Run the alembic migrations programmatically (`ragstream migrate`, `serve` start-up, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from ragstream.settings import ConfigurationError


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
    root = _project_root()
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "migrations"))
    config.attributes["database_url"] = database_url
    # Read by the migration that creates the vector column (only when it first runs).
    config.attributes["embedding_dimensions"] = embedding_dimensions
    return config


def upgrade_to_head(database_url: str, *, embedding_dimensions: int | None = None) -> None:
    """Blocking; call it from a thread inside an event loop (alembic's env runs asyncio.run)."""
    # "heads": areas add migrations independently; every branch is applied.
    config = alembic_config(database_url, embedding_dimensions=embedding_dimensions)
    command.upgrade(config, "heads")
