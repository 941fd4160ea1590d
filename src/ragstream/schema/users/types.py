from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Protocol

import strawberry
from strawberry.scalars import JSON

from ragstream.db.repositories.chat import TokenTotals
from ragstream.domain.chat.quota import utc_day
from ragstream.domain.evaluations import service as evaluations
from ragstream.domain.flags.enums import FeatureSource
from ragstream.domain.flags.features import Feature as FeatureValue
from ragstream.domain.flags.features import Features
from ragstream.domain.users.enums import Role
from ragstream.schema.context import Info
from ragstream.schema.enums import api_enum
from ragstream.schema.pagination import AfterArg, Connection, FirstArg, to_connection

if TYPE_CHECKING:
    from ragstream.schema.evaluations.types import Evaluation

# The GraphQL graph's one cycle: User.evaluations -> Evaluation.owner -> User. The evaluation
# types import this module, so here they are referenced lazily (and mapped in the field).
LazyEvaluation = Annotated["Evaluation", strawberry.lazy("ragstream.schema.evaluations.types")]

api_enum(
    Role,
    description="What an account may do.",
    values={
        Role.USER: "A regular account.",
        Role.ADMIN: "May manage accounts and share documents with everyone.",
    },
)

api_enum(
    FeatureSource,
    description="What decided a feature for an account.",
    values={
        FeatureSource.USER: "A flag on the account itself.",
        FeatureSource.EVALUATION: "A flag on the evaluation of the conversation.",
        FeatureSource.ROLE: "A flag on the account's role.",
        FeatureSource.GLOBAL: "A global flag.",
        FeatureSource.DEFAULT: "No flag: the built-in default (the server's settings).",
    },
)


@strawberry.type(description="A feature as it applies to an account.")
class Feature:
    key: str = strawberry.field(description="The feature: chat, uploads or search.")
    enabled: bool = strawberry.field(description="Whether the account may use it.")
    metadata: JSON = strawberry.field(
        description="Its settings with every field filled in (a flag's, else the default): "
        "chat {dailyLimit (null: none), maxConcurrent, model, maxAnswerTokens}, uploads "
        "{maxBytes, types}, search {}."
    )
    source: FeatureSource = strawberry.field(
        description="The scope whose flag decided `enabled`, or DEFAULT."
    )


def to_feature(value: FeatureValue) -> Feature:
    return Feature(
        key=value.key.value,
        enabled=value.enabled,
        metadata=JSON(dict(value.metadata)),
        source=value.source,
    )


@strawberry.type(description="Token usage and today's message quota of an account.")
class Usage:
    prompt_tokens: int = strawberry.field(description="Prompt tokens of all answers.")
    completion_tokens: int = strawberry.field(description="Completion tokens of all answers.")
    total_tokens: int = strawberry.field(description="promptTokens + completionTokens.")
    answers: int = strawberry.field(description="Number of answers generated.")
    messages_today: int = strawberry.field(description="Messages sent since 00:00 UTC.")
    daily_message_limit: int | None = strawberry.field(
        description="Messages allowed per UTC day by the account's chat feature; null when it "
        "has no daily limit (the default for admins)."
    )
    resets_at: datetime = strawberry.field(description="When messagesToday starts again.")


def to_usage(totals: TokenTotals, *, daily_limit: int | None) -> Usage:
    _, resets_at = utc_day()
    return Usage(
        prompt_tokens=totals.prompt_tokens,
        completion_tokens=totals.completion_tokens,
        total_tokens=totals.prompt_tokens + totals.completion_tokens,
        answers=totals.answers,
        messages_today=totals.questions_today,
        daily_message_limit=daily_limit,
        resets_at=resets_at,
    )


@strawberry.type(description="An account.")
class User:
    id: strawberry.ID = strawberry.field(description="UUID of the account.")
    email: str = strawberry.field(description="Sign-in email, lower-cased.")
    display_name: str = strawberry.field(description="Name shown to other people.")
    role: Role = strawberry.field(description="USER or ADMIN.")
    is_active: bool = strawberry.field(description="False once an admin deactivated the account.")
    created_at: datetime = strawberry.field(description="When the account was created.")

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry leaves it untyped
        description="The account's evaluations that you may read, newest first."
    )
    async def evaluations(
        self, info: Info, first: FirstArg = None, after: AfterArg = None
    ) -> Connection[LazyEvaluation]:
        from ragstream.schema.evaluations.types import to_evaluation  # closes the cycle above

        # Batched across every user of the response; see schema/loaders.py.
        key = evaluations.owner_page_key(uuid.UUID(str(self.id)), first=first, after=after)
        page = await info.context.loaders.evaluations_by_owner.load(key)
        return to_connection(page, to_evaluation)

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry leaves it untyped
        description="Chat token usage and today's message count; null unless it is your own "
        "account or you are an admin."
    )
    async def usage(self, info: Info) -> Usage | None:
        totals = await info.context.loaders.token_totals.load(uuid.UUID(str(self.id)))
        if totals is None:
            return None
        # Usage is visible exactly where features are: your own account, anyone's for an admin.
        features = await _account_features(info, uuid.UUID(str(self.id)))
        limit = None if features is None else features.chat().daily_limit
        return to_usage(totals, daily_limit=limit)

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry leaves it untyped
        description="Every feature (chat, uploads, search) as it applies to the account, and "
        "which scope decided it; null unless it is your own account or you are an admin. In a "
        "conversation linked to an evaluation, that evaluation's flags also apply to chat."
    )
    async def features(self, info: Info) -> list[Feature] | None:
        features = await _account_features(info, uuid.UUID(str(self.id)))
        return None if features is None else [to_feature(f) for f in features]


async def _account_features(info: Info, user_id: uuid.UUID) -> Features | None:
    """Your own features from the flags read with you; another account's (for an admin) through
    a loader, one statement for all the accounts of the response; None otherwise."""
    signed_in = await info.context.signed_in()
    if user_id == signed_in.user.id:
        return signed_in.flags.features()
    if not signed_in.user.is_admin:
        return None
    return await info.context.loaders.flags.features.load(user_id)


class UserRow(Protocol):
    """What `to_user` reads: an ORM account, or a listed owner (plain values)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def email(self) -> str: ...
    @property
    def display_name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def is_active(self) -> bool: ...
    @property
    def created_at(self) -> datetime: ...


def to_user(row: UserRow) -> User:
    """A listed owner may hold None for what its list did not read (and will not show)."""
    role = row.role
    return User(
        id=strawberry.ID(str(row.id)),
        email=row.email,
        display_name=row.display_name,
        role=Role(role) if role is not None else role,
        is_active=row.is_active,
        created_at=row.created_at,
    )


@strawberry.type(description="Tokens issued by register, login and refreshToken.")
class AuthPayload:
    access_token: str = strawberry.field(
        description="Short-lived JWT for the Authorization header."
    )
    refresh_token: str = strawberry.field(
        description="Single-use token for refreshToken; rotate on every use."
    )
    token_type: str = strawberry.field(description='Always "Bearer".')
    expires_in: int = strawberry.field(description="Seconds until the access token expires.")
    user: User = strawberry.field(description="The signed-in account.")


@strawberry.input(description="A new account.")
class RegisterInput:
    email: str = strawberry.field(description="Sign-in email; must be unique (any case).")
    password: str = strawberry.field(description="10 to 256 characters.")
    display_name: str = strawberry.field(description="Name shown to other people, 1 to 100 chars.")


@strawberry.input(description="Changes to your own profile; omitted fields stay as they are.")
class UpdateMeInput:
    display_name: str | None = strawberry.field(default=None, description="New display name.")


@strawberry.input(description="Admin changes to an account; omitted fields stay as they are.")
class UpdateUserInput:
    role: Role | None = strawberry.field(default=None, description="New role.")
    is_active: bool | None = strawberry.field(
        default=None, description="False deactivates the account and signs it out everywhere."
    )
    display_name: str | None = strawberry.field(default=None, description="New display name.")
