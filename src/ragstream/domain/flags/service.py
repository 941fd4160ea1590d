"""Reading and managing feature flags. Callers pass the session they own and the viewer.

Every change is written to the audit trail in the same transaction as the change itself, so
the trail can neither miss a change nor record one that was rolled back.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.driver import DriverTarget
from ragstream.db.models import User
from ragstream.db.models.flags import FeatureFlag, FeatureFlagChange
from ragstream.db.pagination import Page
from ragstream.db.repositories.evaluations import EvaluationRepository
from ragstream.db.repositories.flags import FlagFilter, FlagRepository, FlagTarget
from ragstream.db.repositories.users import UserRepository
from ragstream.domain.errors import InvalidInput, not_found
from ragstream.domain.flags.enums import FeatureKey, FlagChangeAction, FlagScope
from ragstream.domain.flags.features import (
    AccountFlags,
    FeatureDefaults,
    Features,
    FlagValue,
    decode_flags,
    resolve,
)
from ragstream.domain.flags.metadata import parse_key, validate_metadata
from ragstream.domain.pagination import cursor_errors, page_request
from ragstream.domain.users.enums import Role
from ragstream.domain.users.service import require_admin


@dataclass(frozen=True)
class SignedIn:
    """The signed-in account and the flags read with it (user, role and global scopes)."""

    user: User
    flags: AccountFlags


async def resolve_signed_in(
    on: DriverTarget,
    user_id: uuid.UUID,
    session_id: uuid.UUID,
    *,
    environment: str,
    defaults: FeatureDefaults,
) -> SignedIn | None:
    """The viewer, fresh from the database, and its flags in one statement, or None.

    Deactivation, demotion and a revoked sign-in session (sign-out, refresh-token reuse, a
    password change elsewhere) apply at once, not when the access token expires.

    Run for every HTTP request and every websocket operation, so a flag change applies to the
    next one, with no cache to invalidate.
    """
    found = await FlagRepository.signed_in_with_flags(on, user_id, session_id, environment)
    return None if found is None else signed_in_of(found, defaults)


def signed_in_of(found: tuple[User, str], defaults: FeatureDefaults) -> SignedIn:
    """The viewer from what the viewer check read: the account and its flags (JSON text)."""
    user, raw = found
    return SignedIn(user, AccountFlags(role=user.role, raw=raw, defaults=defaults))


async def features_of_accounts(
    session: AsyncSession,
    viewer: User,
    user_ids: Sequence[uuid.UUID],
    *,
    environment: str,
    defaults: FeatureDefaults,
) -> dict[uuid.UUID, Features]:
    """The features of other accounts, for an admin; one statement for all of them."""
    require_admin(viewer)
    found = await FlagRepository(session).of_accounts(user_ids, environment)
    return {
        user_id: resolve(decode_flags(raw), defaults, role)
        for user_id, (role, raw) in found.items()
    }


async def conversation_features(
    session: AsyncSession,
    flags: AccountFlags,
    evaluation_id: uuid.UUID | None,
    *,
    environment: str,
) -> Features:
    """The viewer's features in a conversation: a linked evaluation's flags join in."""
    if evaluation_id is None:
        return flags.features()
    rows = await FlagRepository(session).of_evaluation(evaluation_id, environment)
    return flags.with_evaluation(
        FlagValue(FlagScope(scope), FeatureKey(key), enabled, meta)
        for scope, key, enabled, meta in rows
    )


# --- administration ---------------------------------------------------------------------------


def _state(flag: FeatureFlag) -> dict[str, Any]:
    return {"enabled": flag.enabled, "metadata": dict(flag.meta)}


def _change(
    flag: FeatureFlag,
    actor: User,
    action: FlagChangeAction,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> FeatureFlagChange:
    return FeatureFlagChange(
        flag_id=flag.id,
        environment=flag.environment,
        key=flag.key,
        scope=flag.scope,
        user_id=flag.user_id,
        evaluation_id=flag.evaluation_id,
        role=flag.role,
        action=action,
        actor_id=actor.id,
        before=before,
        after=after,
    )


async def _target(
    session: AsyncSession,
    viewer: User,
    environment: str,
    key: FeatureKey,
    scope: FlagScope,
    *,
    user_id: uuid.UUID | None,
    evaluation_id: uuid.UUID | None,
    role: Role | None,
) -> FlagTarget:
    """The scope's own target, which must exist; the others must be left out."""
    given = {"userId": user_id, "evaluationId": evaluation_id, "role": role}
    needed = {
        FlagScope.USER: "userId",
        FlagScope.EVALUATION: "evaluationId",
        FlagScope.ROLE: "role",
        FlagScope.GLOBAL: None,
    }[scope]
    for name, value in given.items():
        if name != needed and value is not None:
            raise InvalidInput(f"a {scope.value} flag takes no {name}", field=name)
    if needed is not None and given[needed] is None:
        raise InvalidInput(f"a {scope.value} flag needs {needed}", field=needed)
    if user_id is not None and await UserRepository(session).get(user_id) is None:
        raise not_found("user")
    if (
        evaluation_id is not None
        and await EvaluationRepository(session, viewer).get(evaluation_id) is None
    ):
        raise not_found("evaluation")
    return FlagTarget(environment, key, scope, user_id, evaluation_id, role)


async def set_flag(
    session: AsyncSession,
    viewer: User,
    *,
    environment: str,
    defaults: FeatureDefaults,
    key: str,
    scope: FlagScope,
    user_id: uuid.UUID | None,
    evaluation_id: uuid.UUID | None,
    role: Role | None,
    enabled: bool,
    metadata: object,
) -> FeatureFlag:
    """Creates the flag at its target, or replaces its state; recorded in the audit trail.

    The metadata replaces the flag's metadata as a whole (fields left out fall through to less
    specific scopes). Setting a flag to the state it has changes nothing and records nothing.
    """
    require_admin(viewer)
    feature = parse_key(key)
    cleaned = validate_metadata(feature, metadata, defaults.bounds)
    target = await _target(
        session,
        viewer,
        environment,
        feature,
        scope,
        user_id=user_id,
        evaluation_id=evaluation_id,
        role=role,
    )
    repo = FlagRepository(session)
    flag, created = await repo.create_or_lock(target, enabled=enabled)
    before = None if created else _state(flag)
    after = {"enabled": enabled, "metadata": cleaned}
    if before == after:
        return flag
    flag.enabled = enabled
    flag.meta = cleaned
    flag.updated_by_id = viewer.id
    await session.flush()
    await session.refresh(flag)
    action = FlagChangeAction.CREATED if created else FlagChangeAction.UPDATED
    await repo.add_change(_change(flag, viewer, action, before, after))
    return flag


async def delete_flag(
    session: AsyncSession, viewer: User, flag_id: uuid.UUID, *, environment: str
) -> uuid.UUID:
    require_admin(viewer)
    repo = FlagRepository(session)
    flag = await repo.get(flag_id, environment, for_update=True)
    if flag is None:
        raise not_found("feature flag")
    await repo.add_change(_change(flag, viewer, FlagChangeAction.DELETED, _state(flag), None))
    await repo.delete(flag)
    return flag_id


async def get_flag(
    session: AsyncSession, viewer: User, flag_id: uuid.UUID, *, environment: str
) -> FeatureFlag:
    require_admin(viewer)
    flag = await FlagRepository(session).get(flag_id, environment)
    if flag is None:
        raise not_found("feature flag")
    return flag


async def list_flags(
    session: AsyncSession,
    viewer: User,
    *,
    environment: str,
    first: int | None,
    after: str | None,
    where: FlagFilter,
) -> Page[FeatureFlag]:
    """This environment's flags by key, then oldest first (admin only)."""
    require_admin(viewer)
    if where.key is not None:
        parse_key(where.key)
    with cursor_errors():
        return await FlagRepository(session).list(environment, page_request(first, after), where)


async def list_changes(
    session: AsyncSession,
    viewer: User,
    *,
    environment: str,
    first: int | None,
    after: str | None,
    flag_id: uuid.UUID | None,
    key: str | None,
) -> Page[FeatureFlagChange]:
    """The audit trail of this environment's flags, newest first (admin only)."""
    require_admin(viewer)
    if key is not None:
        parse_key(key)
    with cursor_errors():
        return await FlagRepository(session).changes(
            environment, page_request(first, after), flag_id=flag_id, key=key
        )
