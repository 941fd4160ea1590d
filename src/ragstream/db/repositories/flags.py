"""Feature flags and their audit trail. The viewer's flags ride along with the viewer's row."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    ScalarSelect,
    String,
    and_,
    bindparam,
    cast,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import insert

from ragstream.db.driver import DriverStatement, DriverTarget
from ragstream.db.models import User
from ragstream.db.models.flags import FeatureFlag, FeatureFlagChange
from ragstream.db.pagination import Page, PageRequest, paginate
from ragstream.db.repositories.base import Repository
from ragstream.db.repositories.users import SIGNED_IN
from ragstream.domain.flags.enums import FeatureKey, FlagScope
from ragstream.domain.users.enums import Role


def _applicable_to_account(environment: str | BindParameter[str]) -> ColumnElement[bool]:
    """Flags of the account in the enclosing query (its own, its role's) and global ones."""
    return and_(
        FeatureFlag.environment == environment,
        or_(
            FeatureFlag.user_id == User.id,
            and_(FeatureFlag.scope == FlagScope.ROLE, FeatureFlag.role == User.role),
            FeatureFlag.scope == FlagScope.GLOBAL,
        ),
    )


def account_flags(environment: str | BindParameter[str]) -> ScalarSelect[Any]:
    """A column for a query over `users`: that account's flags as JSON text.

    Text, not JSON, so nothing is decoded unless the request looks at its features; the array
    holds ``[scope, key, enabled, metadata]`` per flag.
    """
    row = func.json_build_array(
        FeatureFlag.scope, FeatureFlag.key, FeatureFlag.enabled, FeatureFlag.meta
    )
    return (
        select(func.coalesce(cast(func.json_agg(row), String), literal("[]")))
        .where(_applicable_to_account(environment))
        .correlate(User)
        .scalar_subquery()
    )


_FLAGS = "account_flags"
# The viewer check: the signed-in account's columns, then its flags. Built once, like the
# statement it extends; the evaluations list can run it as part of its page (see
# `EvaluationRepository.signed_in_page_rows`).
SIGNED_IN_WITH_FLAGS = SIGNED_IN.add_columns(
    account_flags(bindparam("environment", type_=String)).label(_FLAGS)
)
_SIGNED_IN_WITH_FLAGS = DriverStatement(SIGNED_IN_WITH_FLAGS)

_NEW_USER: Callable[[], User] = User._sa_class_manager.new_instance  # type: ignore[attr-defined]


def signed_in_from_row(values: Sequence[Any]) -> tuple[User, str]:
    """The account and its flags (JSON text) from a row of `SIGNED_IN_WITH_FLAGS`'s columns."""
    *columns, flags = values
    # A new instance with its columns set, as the ORM's loading does (a tenth of what the
    # constructor's instrumented assignments cost); transient, like `User(**values)`.
    user = _NEW_USER()
    user.__dict__.update(zip(_SIGNED_IN_WITH_FLAGS.keys, columns, strict=False))
    return user, flags


@dataclass(frozen=True)
class FlagFilter:
    key: str | None = None
    scope: FlagScope | None = None
    user_id: uuid.UUID | None = None
    evaluation_id: uuid.UUID | None = None
    role: Role | None = None


@dataclass(frozen=True)
class FlagTarget:
    environment: str
    key: FeatureKey
    scope: FlagScope
    user_id: uuid.UUID | None
    evaluation_id: uuid.UUID | None
    role: Role | None


class FlagRepository(Repository):
    """Admin-only data: the domain checks the role before any read or change here."""

    # --- resolution ---------------------------------------------------------------------------

    @staticmethod
    async def signed_in_with_flags(
        on: DriverTarget, user_id: uuid.UUID, session_id: uuid.UUID, environment: str
    ) -> tuple[User, str] | None:
        """The signed-in account (see `users.SIGNED_IN`), detached, and its flags, in the one
        statement every signed-in request runs anyway; on the driver (see db/driver.py)."""
        rows = await _SIGNED_IN_WITH_FLAGS.fetch(
            on, {"user_id": user_id, "session_id": session_id, "environment": environment}
        )
        return signed_in_from_row(rows[0]) if rows else None

    async def of_accounts(
        self, user_ids: Sequence[uuid.UUID], environment: str
    ) -> dict[uuid.UUID, tuple[Role, str]]:
        """Role and flags (JSON text) of each account among ``user_ids``, in one statement."""
        rows = await self.session.execute(
            select(User.id, User.role, account_flags(environment)).where(User.id.in_(user_ids))
        )
        return {user_id: (role, flags) for user_id, role, flags in rows}

    async def of_evaluation(
        self, evaluation_id: uuid.UUID, environment: str
    ) -> list[tuple[str, str, bool, dict[str, Any]]]:
        rows = await self.session.execute(
            select(FeatureFlag.scope, FeatureFlag.key, FeatureFlag.enabled, FeatureFlag.meta).where(
                FeatureFlag.environment == environment,
                FeatureFlag.scope == FlagScope.EVALUATION,
                FeatureFlag.evaluation_id == evaluation_id,
            )
        )
        return [(scope, key, enabled, meta) for scope, key, enabled, meta in rows]

    # --- administration -----------------------------------------------------------------------

    async def get(
        self, flag_id: uuid.UUID, environment: str, *, for_update: bool = False
    ) -> FeatureFlag | None:
        stmt = select(FeatureFlag).where(
            FeatureFlag.id == flag_id, FeatureFlag.environment == environment
        )
        if for_update:
            stmt = stmt.with_for_update()
        return await self.session.scalar(stmt)

    async def create_or_lock(
        self, target: FlagTarget, *, enabled: bool
    ) -> tuple[FeatureFlag, bool]:
        """The flag at ``target``, created (``enabled``, no metadata) if there is none, and
        locked for this transaction; the flag tells whether it was created just now.

        Race-free: of two admins setting the same new flag at once, one creates it and the
        other waits for the lock, then updates it (and the audit trail shows both).
        """
        created = await self.session.scalar(
            insert(FeatureFlag)
            .values(
                environment=target.environment,
                key=target.key,
                scope=target.scope,
                user_id=target.user_id,
                evaluation_id=target.evaluation_id,
                role=target.role,
                enabled=enabled,
            )
            .on_conflict_do_nothing(constraint="uq_feature_flags_target")
            .returning(FeatureFlag.id)
        )
        flag = await self.session.scalar(
            select(FeatureFlag)
            .where(
                FeatureFlag.environment == target.environment,
                FeatureFlag.key == target.key,
                FeatureFlag.scope == target.scope,
                FeatureFlag.user_id.is_not_distinct_from(target.user_id),
                FeatureFlag.evaluation_id.is_not_distinct_from(target.evaluation_id),
                FeatureFlag.role.is_not_distinct_from(target.role),
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        assert flag is not None  # inserted above, or already there and locked now
        return flag, created is not None

    async def delete(self, flag: FeatureFlag) -> None:
        await self.session.delete(flag)
        await self.session.flush()

    async def list(
        self, environment: str, request: PageRequest, where: FlagFilter
    ) -> Page[FeatureFlag]:
        stmt = select(FeatureFlag).where(FeatureFlag.environment == environment)
        for column, value in (
            (FeatureFlag.key, where.key),
            (FeatureFlag.scope, where.scope),
            (FeatureFlag.user_id, where.user_id),
            (FeatureFlag.evaluation_id, where.evaluation_id),
            (FeatureFlag.role, where.role),
        ):
            if value is not None:
                stmt = stmt.where(column == value)
        return await paginate(
            self.session,
            stmt,
            keys=[FeatureFlag.key, FeatureFlag.created_at, FeatureFlag.id],
            cursor_of=lambda f: (f.key, f.created_at, f.id),
            request=request,
        )

    # --- audit trail --------------------------------------------------------------------------

    async def add_change(self, change: FeatureFlagChange) -> None:
        self.session.add(change)
        await self.session.flush()

    async def changes(
        self,
        environment: str,
        request: PageRequest,
        *,
        flag_id: uuid.UUID | None,
        key: str | None,
    ) -> Page[FeatureFlagChange]:
        """Newest first."""
        stmt = select(FeatureFlagChange).where(FeatureFlagChange.environment == environment)
        if flag_id is not None:
            stmt = stmt.where(FeatureFlagChange.flag_id == flag_id)
        if key is not None:
            stmt = stmt.where(FeatureFlagChange.key == key)
        return await paginate(
            self.session,
            stmt,
            keys=[FeatureFlagChange.created_at, FeatureFlagChange.id],
            cursor_of=lambda c: (c.created_at, c.id),
            request=request,
            descending=True,
        )
