"""Feature flags per environment and scope, and the audit trail of every change to them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from ragstream.db.base import Base, StrEnumType, Timestamps, UUIDPrimaryKey, one_of
from ragstream.domain.flags.enums import FeatureKey, FlagChangeAction, FlagScope
from ragstream.domain.users.enums import Role

# Each scope names exactly its own target: a user, an evaluation, a role, or nothing (global).
SCOPE_TARGET = (
    "(scope = 'USER' AND user_id IS NOT NULL AND evaluation_id IS NULL AND role IS NULL)"
    " OR (scope = 'EVALUATION' AND evaluation_id IS NOT NULL AND user_id IS NULL"
    " AND role IS NULL)"
    " OR (scope = 'ROLE' AND role IS NOT NULL AND user_id IS NULL AND evaluation_id IS NULL)"
    " OR (scope = 'GLOBAL' AND user_id IS NULL AND evaluation_id IS NULL AND role IS NULL)"
)


class FeatureFlag(UUIDPrimaryKey, Timestamps, Base):
    """One key set at one scope in one environment; deleting the target deletes the flag."""

    __tablename__ = "feature_flags"
    __table_args__ = (
        CheckConstraint(one_of("key", FeatureKey), name="key"),
        CheckConstraint(one_of("scope", FlagScope), name="scope"),
        CheckConstraint(f"role IS NULL OR {one_of('role', Role)}", name="role"),
        CheckConstraint(SCOPE_TARGET, name="scope_target"),
        CheckConstraint("jsonb_typeof(metadata) = 'object'", name="metadata_is_object"),
        # At most one flag per key and target; the targets other than the scope's are NULL,
        # so NULLs must compare equal here.
        UniqueConstraint(
            "environment",
            "key",
            "scope",
            "user_id",
            "evaluation_id",
            "role",
            name="uq_feature_flags_target",
            postgresql_nulls_not_distinct=True,
        ),
        # The viewer's flags are read with every signed-in request (see repositories/flags.py).
        Index("ix_feature_flags_user_id", "user_id", postgresql_where=text("user_id IS NOT NULL")),
        Index(
            "ix_feature_flags_evaluation_id",
            "evaluation_id",
            postgresql_where=text("evaluation_id IS NOT NULL"),
        ),
        # Role and global flags: the arms of that read other than the user's own flags.
        Index(
            "ix_feature_flags_scope_role",
            "scope",
            "role",
            postgresql_where=text("scope IN ('ROLE', 'GLOBAL')"),
        ),
        Index("ix_feature_flags_key_created_at_id", "key", "created_at", "id"),
    )

    environment: Mapped[str] = mapped_column(String(32), nullable=False)
    key: Mapped[FeatureKey] = mapped_column(StrEnumType(FeatureKey, 64), nullable=False)
    scope: Mapped[FlagScope] = mapped_column(StrEnumType(FlagScope, 16), nullable=False)
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    evaluation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("evaluations.id", ondelete="CASCADE")
    )
    role: Mapped[Role | None] = mapped_column(StrEnumType(Role, 16))
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False)
    # `metadata` is reserved on declarative classes; the column keeps the plain name.
    meta: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    updated_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )


class FeatureFlagChange(UUIDPrimaryKey, Base):
    """One change to a flag: who made it, when, and the flag's state before and after.

    Kept when the flag, its target or the admin who made the change is deleted: the trail is
    a record, so it copies what it describes instead of referring to it.
    """

    __tablename__ = "feature_flag_changes"
    __table_args__ = (
        CheckConstraint(one_of("action", FlagChangeAction), name="action"),
        Index("ix_feature_flag_changes_created_at_id", "created_at", "id"),
        Index("ix_feature_flag_changes_flag_id", "flag_id"),
    )

    flag_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    environment: Mapped[str] = mapped_column(String(32), nullable=False)
    key: Mapped[FeatureKey] = mapped_column(StrEnumType(FeatureKey, 64), nullable=False)
    scope: Mapped[FlagScope] = mapped_column(StrEnumType(FlagScope, 16), nullable=False)
    user_id: Mapped[uuid.UUID | None] = mapped_column()
    evaluation_id: Mapped[uuid.UUID | None] = mapped_column()
    role: Mapped[Role | None] = mapped_column(StrEnumType(Role, 16))
    action: Mapped[FlagChangeAction] = mapped_column(
        StrEnumType(FlagChangeAction, 16), nullable=False
    )
    actor_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # {"enabled": bool, "metadata": {...}}; NULL before a creation and after a deletion.
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # clock_timestamp: several changes in one transaction still sort in the order made.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp(), nullable=False
    )
