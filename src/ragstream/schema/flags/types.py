"""GraphQL types of feature flags, their audit trail and the usage report (admin only).

`User.features` and its `Feature` type live with the users types, as `User.usage` does.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

import strawberry
from strawberry.scalars import JSON

from ragstream.db.models.flags import FeatureFlag as FlagRow
from ragstream.db.models.flags import FeatureFlagChange as ChangeRow
from ragstream.db.repositories.chat import UsageRow
from ragstream.domain.errors import NotFound
from ragstream.domain.flags.enums import FlagChangeAction, FlagScope, UsageGroupBy
from ragstream.domain.users.enums import Role
from ragstream.schema.context import Info
from ragstream.schema.enums import api_enum
from ragstream.schema.users.types import User, to_user

api_enum(
    FlagScope,
    description="Where a feature flag is set; evaluation runs from USER to GLOBAL.",
    values={
        FlagScope.USER: "One account (`userId`).",
        FlagScope.EVALUATION: "Conversations linked to one evaluation (`evaluationId`); applies "
        "to chat in those conversations.",
        FlagScope.ROLE: "Every account with one role (`role`).",
        FlagScope.GLOBAL: "Every account.",
    },
)
api_enum(
    FlagChangeAction,
    description="What a change did to a flag.",
    values={
        FlagChangeAction.CREATED: "The flag was set for the first time.",
        FlagChangeAction.UPDATED: "Its state changed.",
        FlagChangeAction.DELETED: "It was deleted.",
    },
)
api_enum(
    UsageGroupBy,
    description="How a usage report groups the usage ledger.",
    values={
        UsageGroupBy.DAY: "One row per UTC day, in date order.",
        UsageGroupBy.USER: "One row per account, most tokens first.",
        UsageGroupBy.MODEL: "One row per answering model, most tokens first.",
    },
)


async def _user_or_none(info: Info, user_id: uuid.UUID | None) -> User | None:
    if user_id is None:
        return None
    try:
        return to_user(await info.context.loaders.users.load(user_id))
    except NotFound:
        return None  # deleted since


def _id(value: uuid.UUID | None) -> strawberry.ID | None:
    return None if value is None else strawberry.ID(str(value))


@strawberry.type(description="A feature flag: one feature set at one scope (admin only).")
class FeatureFlag:
    id: strawberry.ID = strawberry.field(description="UUID of the flag.")
    key: str = strawberry.field(description="The feature: chat, uploads or search.")
    scope: FlagScope = strawberry.field(description="Where it is set.")
    environment: str = strawberry.field(
        description="The RAGSTREAM_ENVIRONMENT it belongs to (this server's)."
    )
    user_id: strawberry.ID | None = strawberry.field(description="The account, for USER scope.")
    evaluation_id: strawberry.ID | None = strawberry.field(
        description="The evaluation, for EVALUATION scope."
    )
    role: Role | None = strawberry.field(description="The role, for ROLE scope.")
    enabled: bool = strawberry.field(description="Whether the feature is on at this scope.")
    metadata: JSON = strawberry.field(
        description="The settings this flag sets; fields it leaves out come from less specific "
        "scopes, then the default."
    )
    created_at: datetime = strawberry.field(description="When the flag was first set.")
    updated_at: datetime = strawberry.field(description="When it last changed.")
    updated_by_id: strawberry.Private[uuid.UUID | None]

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry leaves it untyped
        description="The admin who last changed it; null once that account is deleted."
    )
    async def updated_by(self, info: Info) -> User | None:
        return await _user_or_none(info, self.updated_by_id)


def to_feature_flag(row: FlagRow) -> FeatureFlag:
    return FeatureFlag(
        id=strawberry.ID(str(row.id)),
        key=row.key.value,
        scope=row.scope,
        environment=row.environment,
        user_id=_id(row.user_id),
        evaluation_id=_id(row.evaluation_id),
        role=row.role,
        enabled=row.enabled,
        metadata=JSON(dict(row.meta)),
        created_at=row.created_at,
        updated_at=row.updated_at,
        updated_by_id=row.updated_by_id,
    )


@strawberry.input(description="Narrows featureFlags; every given field must match.")
class FeatureFlagFilter:
    key: str | None = strawberry.field(default=None, description="Only this feature.")
    scope: FlagScope | None = strawberry.field(default=None, description="Only this scope.")
    user_id: strawberry.ID | None = strawberry.field(
        default=None, description="Only flags on this account."
    )
    evaluation_id: strawberry.ID | None = strawberry.field(
        default=None, description="Only flags on this evaluation."
    )
    role: Role | None = strawberry.field(default=None, description="Only flags on this role.")


@strawberry.input(
    description="A feature set at one scope. Give exactly the target the scope needs: `userId` "
    "for USER, `evaluationId` for EVALUATION, `role` for ROLE, none for GLOBAL."
)
class SetFeatureFlagInput:
    key: str = strawberry.field(description="The feature: chat, uploads or search.")
    scope: FlagScope = strawberry.field(description="Where to set it.")
    user_id: strawberry.ID | None = strawberry.field(
        default=None, description="The account, for USER scope."
    )
    evaluation_id: strawberry.ID | None = strawberry.field(
        default=None, description="The evaluation, for EVALUATION scope."
    )
    role: Role | None = strawberry.field(default=None, description="The role, for ROLE scope.")
    enabled: bool = strawberry.field(description="Whether the feature is on at this scope.")
    metadata: JSON | None = strawberry.field(
        default=None,
        description="Settings, replacing the flag's previous ones (null or omitted: none). "
        "chat: {dailyLimit: Int >= 0 or null for none, maxConcurrent: 1-100, model: String, "
        "maxAnswerTokens: 1-200000}; uploads: {maxBytes: 1 to the server's upload limit, "
        "types: [MIME type]}; search: {}.",
    )


@strawberry.type(description="A flag's state, as the audit trail records it.")
class FlagState:
    enabled: bool = strawberry.field(description="Whether the feature was on.")
    metadata: JSON = strawberry.field(description="The flag's own settings.")


def _state(value: dict[str, Any] | None) -> FlagState | None:
    if value is None:
        return None
    return FlagState(enabled=bool(value["enabled"]), metadata=JSON(dict(value["metadata"])))


@strawberry.type(description="One change to a feature flag, in the audit trail.")
class FeatureFlagChange:
    id: strawberry.ID = strawberry.field(description="UUID of the change.")
    flag_id: strawberry.ID = strawberry.field(
        description="UUID of the flag (which may have been deleted since)."
    )
    key: str = strawberry.field(description="The flag's feature.")
    scope: FlagScope = strawberry.field(description="The flag's scope.")
    user_id: strawberry.ID | None = strawberry.field(description="Its account, for USER scope.")
    evaluation_id: strawberry.ID | None = strawberry.field(
        description="Its evaluation, for EVALUATION scope."
    )
    role: Role | None = strawberry.field(description="Its role, for ROLE scope.")
    action: FlagChangeAction = strawberry.field(description="What the change did.")
    actor_id: strawberry.ID | None = strawberry.field(
        description="UUID of the admin who made it; null once that account is deleted."
    )
    changed_at: datetime = strawberry.field(description="When it was made.")
    before: FlagState | None = strawberry.field(description="The state before; null for CREATED.")
    after: FlagState | None = strawberry.field(description="The state after; null for DELETED.")

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry leaves it untyped
        description="The admin who made the change; null once that account is deleted."
    )
    async def actor(self, info: Info) -> User | None:
        return await _user_or_none(
            info, None if self.actor_id is None else uuid.UUID(self.actor_id)
        )


def to_feature_flag_change(row: ChangeRow) -> FeatureFlagChange:
    return FeatureFlagChange(
        id=strawberry.ID(str(row.id)),
        flag_id=strawberry.ID(str(row.flag_id)),
        key=row.key.value,
        scope=row.scope,
        user_id=_id(row.user_id),
        evaluation_id=_id(row.evaluation_id),
        role=row.role,
        action=row.action,
        actor_id=_id(row.actor_id),
        changed_at=row.created_at,
        before=_state(row.before),
        after=_state(row.after),
    )


@strawberry.type(description="Usage of one group (day, account or model) in a usage report.")
class UsageReportRow:
    day: date | None = strawberry.field(description="The UTC day, when grouped by DAY.")
    user_id: strawberry.ID | None = strawberry.field(
        description="The account, when grouped by USER."
    )
    model: str | None = strawberry.field(
        description="The answering model, when grouped by MODEL; null for usage counted before "
        "the ledger recorded models."
    )
    questions: int = strawberry.field(description="Questions asked.")
    answers: int = strawberry.field(description="Answers started.")
    prompt_tokens: int = strawberry.field(description="Prompt tokens of the answers.")
    completion_tokens: int = strawberry.field(description="Completion tokens of the answers.")
    total_tokens: int = strawberry.field(description="promptTokens + completionTokens.")

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry leaves it untyped
        description="The account, when grouped by USER."
    )
    async def user(self, info: Info) -> User | None:
        return await _user_or_none(info, None if self.user_id is None else uuid.UUID(self.user_id))


def to_usage_row(row: UsageRow, group: UsageGroupBy) -> UsageReportRow:
    key = row.key
    return UsageReportRow(
        day=key if group is UsageGroupBy.DAY and isinstance(key, date) else None,
        user_id=strawberry.ID(str(key)) if group is UsageGroupBy.USER else None,
        model=(str(key) or None) if group is UsageGroupBy.MODEL else None,
        questions=row.questions,
        answers=row.answers,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        total_tokens=row.prompt_tokens + row.completion_tokens,
    )
