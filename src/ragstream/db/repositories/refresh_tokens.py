from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.models import RefreshToken


class RefreshTokenRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, token: RefreshToken) -> RefreshToken:
        self.session.add(token)
        await self.session.flush()
        return token

    async def get_for_update(self, digest: str) -> RefreshToken | None:
        """The token row, locked: two concurrent rotations of one token cannot both succeed."""
        stmt = select(RefreshToken).where(RefreshToken.token_hash == digest).with_for_update()
        return await self.session.scalar(stmt)

    async def revoke_family(self, family_id: uuid.UUID) -> None:
        await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )

    async def revoke_all_for_user(
        self, user_id: uuid.UUID, *, keep_family: uuid.UUID | None = None
    ) -> None:
        stmt = update(RefreshToken).where(
            RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None)
        )
        if keep_family is not None:
            stmt = stmt.where(RefreshToken.family_id != keep_family)
        await self.session.execute(stmt.values(revoked_at=datetime.now(UTC)))
