"""All SQL about sign-in attempts: sliding windows counted in the database."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select, text

from ragstream.db.models.users import SignInAttempt
from ragstream.db.repositories.base import Repository

# First key of the two-key advisory locks taken per limited key ("si").
_ATTEMPTS_LOCK_SPACE = 0x7369


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
        this_key = (SignInAttempt.scope == scope, SignInAttempt.key == key)
        since = func.now() - timedelta(seconds=window)
        await self.session.execute(
            delete(SignInAttempt).where(*this_key, SignInAttempt.at <= since)
        )
        count, oldest_age = (
            await self.session.execute(
                select(
                    func.count(),
                    func.extract("epoch", func.clock_timestamp() - func.min(SignInAttempt.at)),
                ).where(*this_key)
            )
        ).one()
        if count >= limit:
            return max(window - float(oldest_age or 0), 0.0)
        self.session.add(SignInAttempt(scope=scope, key=key))
        await self.session.flush()
        return None

    async def prune(self, scope: str, window: float) -> None:
        """Deletes every attempt of ``scope`` past the window (keys never tried again)."""
        await self.session.execute(
            delete(SignInAttempt).where(
                SignInAttempt.scope == scope,
                SignInAttempt.at <= func.now() - timedelta(seconds=window),
            )
        )
