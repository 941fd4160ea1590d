from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Annotated

import strawberry

from ragstream.db import models
from ragstream.schema.types.pagination import AfterArg, Connection, FirstArg

if TYPE_CHECKING:
    from ragstream.schema.context import Context
    from ragstream.schema.types.chat import Usage
    from ragstream.schema.types.evaluations import Evaluation

# Evaluation.owner points back here, so the evaluation types are referenced lazily.
LazyEvaluation = Annotated["Evaluation", strawberry.lazy("ragstream.schema.types.evaluations")]
LazyUsage = Annotated["Usage", strawberry.lazy("ragstream.schema.types.chat")]


@strawberry.enum(description="What an account may do.")
class Role(Enum):
    USER = strawberry.enum_value("USER", description="A regular account.")
    ADMIN = strawberry.enum_value(
        "ADMIN", description="May manage accounts and share documents with everyone."
    )


async def resolve_evaluations(
    root: User,
    info: strawberry.Info[Context, None],
    first: FirstArg = None,
    after: AfterArg = None,
) -> Connection[LazyEvaluation]:
    from ragstream.resolvers.evaluations import owner_evaluations  # imports this module

    return await owner_evaluations(root, info, first, after)


async def resolve_usage(root: User, info: strawberry.Info[Context, None]) -> LazyUsage | None:
    from ragstream.resolvers.chat import user_usage  # imports this module

    return await user_usage(root, info)


@strawberry.type(description="An account.")
class User:
    id: strawberry.ID = strawberry.field(description="UUID of the account.")
    email: str = strawberry.field(description="Sign-in email, lower-cased.")
    display_name: str = strawberry.field(description="Name shown to other people.")
    role: Role = strawberry.field(description="USER or ADMIN.")
    is_active: bool = strawberry.field(description="False once an admin deactivated the account.")
    created_at: datetime = strawberry.field(description="When the account was created.")
    evaluations: Connection[LazyEvaluation] = strawberry.field(
        resolver=resolve_evaluations,
        description="The account's evaluations that you may read, newest first.",
    )
    usage: LazyUsage | None = strawberry.field(
        resolver=resolve_usage,
        description="Chat token usage and today's message count; null unless it is your own "
        "account or you are an admin.",
    )


def to_user(row: models.User) -> User:
    return User(
        id=strawberry.ID(str(row.id)),
        email=row.email,
        display_name=row.display_name,
        role=Role(row.role),
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
