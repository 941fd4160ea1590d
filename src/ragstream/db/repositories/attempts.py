"""All SQL about sign-in attempts: sliding windows counted in the database."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, text

from ragstream.db.models.users import SignInAttempt
from ragstream.db.repositories.base import Repository

# First key of the two-key advisory locks taken per limited key ("si").
_ATTEMPTS_LOCK_SPACE = 0x7369
# The DELETE runs on the statement's snapshot like the rest, so `live` filters by time itself.
_HIT = text(
    """
    WITH gone AS (
        DELETE FROM sign_in_attempts
        WHERE scope = CAST(:scope AS varchar) AND key = CAST(:key AS varchar)
          AND at <= now() - make_interval(secs => :window)
    ), live AS (
        SELECT count(*) AS n, min(at) AS oldest FROM sign_in_attempts
        WHERE scope = CAST(:scope AS varchar) AND key = CAST(:key AS varchar)
          AND at > now() - make_interval(secs => :window)
    ), counted AS (
        INSERT INTO sign_in_attempts (scope, key)
        SELECT CAST(:scope AS varchar), CAST(:key AS varchar) FROM live WHERE n < :limit
    )
    SELECT n, extract(epoch FROM clock_timestamp() - oldest) FROM live
    """
)


class AttemptRepository(Repository):
    async def hit(self, scope: str, key: str, *, limit: int, window: float) -> float | None:
        """Counts an attempt for ``key``, or refuses it when ``limit`` attempts were made in
        the last ``window`` seconds: then returns the seconds until the oldest leaves it.

        Under a per-key lock until the transaction ends, so concurrent attempts (from any
        process) cannot both take the last one. Attempts past the window are deleted here.
        """
        await self.session.execute(
            text("SELECT pg_advisory_xact_lock(:space, hashtext(:key))"),
            {"space": _ATTEMPTS_LOCK_SPACE, "key": f"{scope}/{key}"},
        )
        # The rest in one statement (one round trip): forget attempts past the window, count
        # those within it, and count this one when there is room. Its snapshot is taken after
        # the lock, so it sees every attempt committed before.
        count, oldest_age = (
            await self.session.execute(
                _HIT, {"scope": scope, "key": key, "limit": limit, "window": float(window)}
            )
        ).one()
        if count >= limit:
            return max(window - float(oldest_age or 0), 0.0)
        return None

    async def prune(self, scope: str, window: float) -> None:
        """Deletes every attempt of ``scope`` past the window (keys never tried again)."""
        await self.session.execute(
            delete(SignInAttempt).where(
                SignInAttempt.scope == scope,
                SignInAttempt.at <= func.now() - timedelta(seconds=window),
            )
        )
