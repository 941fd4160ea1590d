"""Moving a test database along its migrations."""

from __future__ import annotations

import asyncio

from alembic import command

from ragstream.db.migrate import alembic_config


async def migrate(database_url: str, direction: str, target: str) -> None:
    # Alembic's env runs its own event loop: off this one, in a thread.
    config = alembic_config(database_url)
    step = command.downgrade if direction == "down" else command.upgrade
    await asyncio.to_thread(step, config, target)
