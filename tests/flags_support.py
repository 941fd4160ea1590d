"""Helpers for feature flag tests: operations, an admin, flags set through the API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from tests.support import Account, LiveServer, Result

FEATURES = "{ me { id features { key enabled metadata source } } }"
SET_FLAG = """mutation($input: SetFeatureFlagInput!) {
  setFeatureFlag(input: $input) {
    id key scope environment userId evaluationId role enabled metadata createdAt updatedAt
    updatedBy { id }
  }
}"""
DELETE_FLAG = "mutation($id: ID!) { deleteFeatureFlag(id: $id) }"
FLAGS = """query($filter: FeatureFlagFilter, $first: Int, $after: String) {
  featureFlags(filter: $filter, first: $first, after: $after) {
    totalCount pageInfo { hasNextPage endCursor }
    edges { cursor node { id key scope userId evaluationId role enabled metadata } }
  }
}"""
CHANGES = """query($flagId: ID, $key: String, $first: Int, $after: String) {
  featureFlagChanges(flagId: $flagId, key: $key, first: $first, after: $after) {
    totalCount
    edges { node {
      id flagId key scope userId evaluationId role action actorId actor { id email }
      changedAt before { enabled metadata } after { enabled metadata }
    } }
  }
}"""
USAGE_REPORT = """query($from: Date!, $to: Date!, $groupBy: UsageGroupBy!, $limit: Int) {
  usageReport(from: $from, to: $to, groupBy: $groupBy, limit: $limit) {
    day userId user { id email } model questions answers promptTokens completionTokens
    totalTokens
  }
}"""


async def new_admin(server: LiveServer) -> Account:
    admin = await server.register()
    await server.make_admin(admin)
    return admin


async def set_flag(server: LiveServer, admin: Account, **flag: Any) -> Result:
    return await server.execute(SET_FLAG, {"input": flag}, token=admin.access_token)


async def set_flag_ok(server: LiveServer, admin: Account, **flag: Any) -> dict[str, Any]:
    data: dict[str, Any] = (await set_flag(server, admin, **flag)).ok()["setFeatureFlag"]
    return data


async def features(server: LiveServer, account: Account) -> dict[str, dict[str, Any]]:
    """The viewer's features by key."""
    data = (await server.execute(FEATURES, token=account.access_token)).ok()
    return {f["key"]: f for f in data["me"]["features"]}


async def flag_rows(server: LiveServer) -> list[tuple[Any, ...]]:
    """Flags and audit entries as stored, bypassing the API (to check nothing changed)."""
    async with server.state.sessionmaker() as session:
        flags = (
            await session.execute(
                text("SELECT id, key, scope, enabled, metadata, updated_at FROM feature_flags")
            )
        ).all()
        changes = (await session.execute(text("SELECT id FROM feature_flag_changes"))).all()
    return [tuple(r) for r in flags] + [tuple(r) for r in changes]
