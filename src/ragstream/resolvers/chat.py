"""Chat resolvers: read the context, call the chat domain, map to schema types."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Annotated

import strawberry

from ragstream.domain.chat import service
from ragstream.domain.chat.enums import FailureCode
from ragstream.domain.chat.generation import GenerationManager
from ragstream.domain.chat.streams import EndItem, SourcesItem, StreamItem, TextItem
from ragstream.resolvers.ids import parse_id
from ragstream.schema.chat.types import (
    ChatEvent,
    Conversation,
    CreateConversationInput,
    GenerationCompleted,
    GenerationStarted,
    Message,
    SendMessageInput,
    SourcesRetrieved,
    TokenDelta,
    generation_failed,
    to_conversation,
    to_message,
    to_source,
)
from ragstream.schema.context import Info
from ragstream.schema.pagination import AfterArg, Connection, FirstArg, to_connection
from ragstream.schema.selection import selects


def _chat(info: Info) -> GenerationManager:
    return info.context.state.chat


async def conversation(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="UUID of the conversation.")],
) -> Conversation:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        row = await service.get_conversation(session, viewer, parse_id(id, "conversation"))
    return to_conversation(row)


async def conversations(
    info: Info,
    first: FirstArg = None,
    after: AfterArg = None,
    evaluation_id: Annotated[
        strawberry.ID | None,
        strawberry.argument(description="Only conversations about this evaluation."),
    ] = None,
) -> Connection[Conversation]:
    viewer = await info.context.viewer()
    evaluation = None if evaluation_id is None else parse_id(evaluation_id, "evaluation")
    async with info.context.transaction() as session:
        page = await service.list_conversations(
            session,
            viewer,
            first=first,
            after=after,
            evaluation_id=evaluation,
            count=selects(info, "totalCount"),
        )
    return to_connection(page, to_conversation)


async def create_conversation(
    info: Info,
    input: Annotated[CreateConversationInput, strawberry.argument(description="The new chat.")],
) -> Conversation:
    viewer = await info.context.viewer()
    evaluation_id = (
        None if input.evaluation_id is None else parse_id(input.evaluation_id, "evaluation")
    )
    async with info.context.transaction() as session:
        row = await service.create_conversation(
            session, viewer, title=input.title, evaluation_id=evaluation_id
        )
    return to_conversation(row)


async def delete_conversation(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="UUID of your conversation.")],
) -> strawberry.ID:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        running = await service.delete_conversation(session, viewer, parse_id(id, "conversation"))
    await _chat(info).stop(running, reason=FailureCode.CONVERSATION_DELETED)
    return id


async def send_message(
    info: Info,
    input: Annotated[SendMessageInput, strawberry.argument(description="The question.")],
) -> Message:
    signed_in = await info.context.signed_in()
    exchange = await _chat(info).submit(
        signed_in.user,
        flags=signed_in.flags,
        conversation_id=parse_id(input.conversation_id, "conversation"),
        content=input.content,
    )
    return to_message(exchange.answer)


async def cancel_generation(
    info: Info,
    message_id: Annotated[
        strawberry.ID, strawberry.argument(description="UUID of your answer being generated.")
    ],
) -> Message:
    viewer = await info.context.viewer()
    view = await _chat(info).cancel(viewer, parse_id(message_id, "message"))
    return to_message(view)


async def _events(
    message_id: strawberry.ID, items: AsyncGenerator[StreamItem, None]
) -> AsyncGenerator[ChatEvent, None]:
    """Stream items as API events; closing this closes the stream it reads."""
    async with contextlib.aclosing(items):
        async for item in items:
            if isinstance(item, TextItem):
                yield TokenDelta(message_id=message_id, offset=item.offset, delta=item.text)
            elif isinstance(item, SourcesItem):
                yield SourcesRetrieved(
                    message_id=message_id, sources=[to_source(s) for s in item.sources]
                )
            elif isinstance(item, EndItem):
                ending = item.ending
                if ending.error_code is None:
                    yield GenerationCompleted(message=to_message(ending.message))
                else:
                    yield generation_failed(ending.message.id, ending.error_code)


async def chat(
    info: Info,
    input: Annotated[SendMessageInput, strawberry.argument(description="The question.")],
) -> AsyncGenerator[ChatEvent, None]:
    signed_in = await info.context.signed_in()
    manager = _chat(info)
    exchange = await manager.submit(
        signed_in.user,
        flags=signed_in.flags,
        conversation_id=parse_id(input.conversation_id, "conversation"),
        content=input.content,
    )
    yield GenerationStarted(
        user_message=to_message(exchange.question),
        assistant_message=to_message(exchange.answer),
    )
    # Leaving early (the client unsubscribes or disconnects) stops only this stream: the
    # answer keeps being generated and stored, and messageStream resumes it.
    answer_id = strawberry.ID(str(exchange.answer.id))
    async with contextlib.aclosing(_events(answer_id, manager.follow_new(exchange))) as events:
        async for event in events:
            yield event


async def message_stream(
    info: Info,
    message_id: Annotated[
        strawberry.ID, strawberry.argument(description="UUID of an answer you may read.")
    ],
    from_offset: Annotated[
        int | None,
        strawberry.argument(
            description="Character offset to resume from: the length of the text you already "
            "have (0 or null for all of it)."
        ),
    ] = 0,
) -> AsyncGenerator[ChatEvent, None]:
    viewer = await info.context.viewer()
    answer_id = parse_id(message_id, "message")
    items = _chat(info).watch(viewer, answer_id, from_offset or 0)
    async with contextlib.aclosing(_events(strawberry.ID(str(answer_id)), items)) as events:
        async for event in events:
            yield event
