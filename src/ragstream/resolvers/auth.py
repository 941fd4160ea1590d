from __future__ import annotations

from typing import Annotated

import strawberry

from ragstream.domain.auth.service import AuthResult
from ragstream.domain.users.service import get_user
from ragstream.schema.context import Context
from ragstream.schema.types.users import AuthPayload, RegisterInput, to_user

Info = strawberry.Info[Context, None]


def _payload(result: AuthResult) -> AuthPayload:
    return AuthPayload(
        access_token=result.access_token,
        refresh_token=result.refresh_token,
        token_type="Bearer",  # noqa: S106  (the OAuth token type, not a secret)
        expires_in=result.expires_in,
        user=to_user(result.user),
    )


async def register(
    info: Info, input: Annotated[RegisterInput, strawberry.argument(description="The account.")]
) -> AuthPayload:
    async with info.context.transaction() as session:
        result = await info.context.state.auth.register(
            session, email=input.email, password=input.password, display_name=input.display_name
        )
    return _payload(result)


async def login(
    info: Info,
    email: Annotated[str, strawberry.argument(description="Sign-in email (any case).")],
    password: Annotated[str, strawberry.argument(description="The account's password.")],
) -> AuthPayload:
    async with info.context.transaction() as session:
        result = await info.context.state.auth.login(
            session, email=email, password=password, client=info.context.client_address
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
    async with info.context.transaction() as session:
        me = await get_user(session, viewer, viewer.id)
        await info.context.state.auth.change_password(
            session, me, claims, current_password=current_password, new_password=new_password
        )
    return True
