"""DataLoaders for feature flags: other accounts' features, for an admin, one read per batch."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from strawberry.dataloader import DataLoader

from ragstream.domain.flags import service
from ragstream.domain.flags.features import Features
from ragstream.schema.scope import RequestScope


class FlagLoaders:
    def __init__(self, context: RequestScope, *, cache: bool) -> None:
        self._context = context
        self.features: DataLoader[uuid.UUID, Features | None] = DataLoader(
            self._load_features, cache=cache
        )

    async def _load_features(self, ids: list[uuid.UUID]) -> Sequence[Features | None]:
        """Features of accounts (admin only); None for an account that is gone."""
        context = self._context
        viewer = await context.viewer()
        state = context.state
        async with state.sessionmaker() as session:
            found = await service.features_of_accounts(
                session,
                viewer,
                list(set(ids)),
                environment=state.settings.environment,
                defaults=state.feature_defaults,
            )
        return [found.get(i) for i in ids]
