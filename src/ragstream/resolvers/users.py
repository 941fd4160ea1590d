"""Root fields of the users area: accounts, sign-in, sessions and passwords."""

from __future__ import annotations

from typing import Annotated

import strawberry

from ragstream.domain.users import service
from ragstream.domain.users.auth import AuthResult, RefreshRefused
from ragstream.resolvers.ids import parse_id
from ragstream.schema.context import Info
from ragstream.schema.pagination import AfterArg, Connection, FirstArg, to_connection
from ragstream.schema.users.types import (
    AuthPayload,
    RegisterInput,
    UpdateMeInput,
    UpdateUserInput,
    User,
    to_user,
)


def _payload(result: AuthResult) -> AuthPayload:
    return AuthPayload(
        access_token=result.access_token,
        refresh_token=result.refresh_token,
        token_type="Bearer",  # noqa: S106  (the OAuth token type, not a secret)
        expires_in=result.expires_in,
        user=to_user(result.user),
    )


# --- Accounts --------------------------------------------------------------------------------


async def me(info: Info) -> User:
    return to_user(await info.context.viewer())


async def user(
    info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="UUID of the user.")]
) -> User:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        return to_user(await service.get_user(session, viewer, parse_id(id, "user")))


async def users(
    info: Info,
    first: FirstArg = None,
    after: AfterArg = None,
    search: Annotated[
        str | None, strawberry.argument(description="Case-insensitive match on email or name.")
    ] = None,
) -> Connection[User]:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        page = await service.list_users(session, viewer, first=first, after=after, search=search)
    return to_connection(page, to_user)


async def update_me(
    info: Info, input: Annotated[UpdateMeInput, strawberry.argument(description="Changes.")]
) -> User:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        me = await service.get_user(session, viewer, viewer.id)
        return to_user(await service.update_me(session, me, display_name=input.display_name))


async def update_user(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="UUID of the user to change.")],
    input: Annotated[UpdateUserInput, strawberry.argument(description="Changes.")],
) -> User:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        updated = await service.update_user(
            session,
            viewer,
            parse_id(id, "user"),
            role=input.role,
            is_active=input.is_active,
            display_name=input.display_name,
        )
        return to_user(updated)


# --- Sign-in and sessions --------------------------------------------------------------------


async def register(
    info: Info, input: Annotated[RegisterInput, strawberry.argument(description="The account.")]
) -> AuthPayload:
    result = await info.context.state.auth.register(
        info.context,
        email=input.email,
        password=input.password,
        display_name=input.display_name,
        client=info.context.client_address,
    )
    return _payload(result)


async def login(
    info: Info,
    email: Annotated[str, strawberry.argument(description="Sign-in email (any case).")],
    password: Annotated[str, strawberry.argument(description="The account's password.")],
) -> AuthPayload:
    with info.context.state.metrics.login_attempt():
        result = await info.context.state.auth.login(
            info.context,
            email=email,
            password=password,
            client=info.context.client_address,
        )
    return _payload(result)


async def refresh_token(
    info: Info,
    refresh_token: Annotated[
        str, strawberry.argument(description="The refresh token from the last AuthPayload.")
    ],
) -> AuthPayload:
    async with info.context.transaction() as session:
        result = await info.context.state.auth.refresh(session, refresh_token)
    # Raised only now: the revocation that comes with a refusal is committed.
    if isinstance(result, RefreshRefused):
        raise result.error
    return _payload(result)


async def logout(
    info: Info,
    refresh_token: Annotated[
        str, strawberry.argument(description="The refresh token of the session to end.")
    ],
) -> bool:
    async with info.context.transaction() as session:
        await info.context.state.auth.logout(session, refresh_token)
    return True


async def change_password(
    info: Info,
    current_password: Annotated[str, strawberry.argument(description="The password in use now.")],
    new_password: Annotated[str, strawberry.argument(description="10 to 256 characters.")],
) -> bool:
    viewer = await info.context.viewer()
    claims = info.context.require_claims()
    await info.context.state.auth.change_password(
        info.context,
        viewer,
        claims,
        current_password=current_password,
        new_password=new_password,
    )
    return True
