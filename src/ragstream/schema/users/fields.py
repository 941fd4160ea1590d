"""Root fields for accounts and sign-in."""

from __future__ import annotations

import strawberry

from ragstream.resolvers import users
from ragstream.schema.pagination import Connection
from ragstream.schema.permissions import admin_only, signed_in
from ragstream.schema.users.types import AuthPayload, User


@strawberry.type
class UserQueries:
    me: User = strawberry.field(
        resolver=users.me, description="The signed-in account.", permission_classes=signed_in
    )
    user: User = strawberry.field(
        resolver=users.user,
        description="One account: yourself, or anyone for an admin.",
        permission_classes=signed_in,
    )
    users: Connection[User] = strawberry.field(
        resolver=users.users,
        description="All accounts (admin only), oldest first.",
        permission_classes=admin_only,
    )


@strawberry.type
class UserMutations:
    register: AuthPayload = strawberry.field(
        resolver=users.register, description="Create an account and sign in."
    )
    login: AuthPayload = strawberry.field(resolver=users.login, description="Sign in.")
    refresh_token: AuthPayload = strawberry.field(
        resolver=users.refresh_token,
        description="Exchange a refresh token for new tokens. Each refresh token works once; "
        "presenting a spent one signs out that whole session.",
    )
    logout: bool = strawberry.field(
        resolver=users.logout, description="End the session a refresh token belongs to."
    )
    update_me: User = strawberry.field(
        resolver=users.update_me,
        description="Change your own profile.",
        permission_classes=signed_in,
    )
    change_password: bool = strawberry.field(
        resolver=users.change_password,
        description="Change your password; every other session is signed out.",
        permission_classes=signed_in,
    )
    update_user: User = strawberry.field(
        resolver=users.update_user,
        description="Change an account's role, active flag or name (admin only).",
        permission_classes=admin_only,
    )
