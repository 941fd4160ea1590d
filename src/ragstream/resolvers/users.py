from __future__ import annotations

from typing import Annotated

import strawberry

from ragstream.domain.users import service
from ragstream.resolvers.ids import parse_id
from ragstream.schema.context import Context
from ragstream.schema.types.pagination import AfterArg, Connection, FirstArg, to_connection
from ragstream.schema.types.users import UpdateMeInput, UpdateUserInput, User, to_user

Info = strawberry.Info[Context, None]


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
            role=input.role.name if input.role is not None else None,
            is_active=input.is_active,
            display_name=input.display_name,
        )
        return to_user(updated)
