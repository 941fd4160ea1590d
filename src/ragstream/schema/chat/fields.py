"""Root fields of chat: conversations, sending, cancelling and streaming answers."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry

from ragstream.resolvers import chat as resolvers
from ragstream.schema.chat.types import ChatEvent, Conversation, Message
from ragstream.schema.pagination import Connection
from ragstream.schema.permissions import signed_in


@strawberry.type
class ChatQueries:
    conversation: Conversation = strawberry.field(
        resolver=resolvers.conversation,
        description="One of your conversations (any for an admin).",
        permission_classes=signed_in,
    )
    conversations: Connection[Conversation] = strawberry.field(
        resolver=resolvers.conversations,
        description="Your conversations, newest first.",
        permission_classes=signed_in,
    )


@strawberry.type
class ChatMutations:
    create_conversation: Conversation = strawberry.field(
        resolver=resolvers.create_conversation,
        description="Start a conversation, optionally about an evaluation you may read.",
        permission_classes=signed_in,
    )
    delete_conversation: strawberry.ID = strawberry.field(
        resolver=resolvers.delete_conversation,
        description="Delete one of your conversations with its messages (answers being "
        "generated are stopped); returns its id.",
        permission_classes=signed_in,
    )
    send_message: Message = strawberry.field(
        resolver=resolvers.send_message,
        description="Ask a question in one of your conversations. Returns the answer at once "
        "(STREAMING, empty); it is generated on the server whether or not anyone watches. "
        "Follow it with messageStream. RATE_LIMITED (extensions: reason, limit, resetAt) past "
        "the daily message limit or the cap on answers generated at once.",
        permission_classes=signed_in,
    )
    cancel_generation: Message = strawberry.field(
        resolver=resolvers.cancel_generation,
        description="Stop one of your answers being generated; it is stored as CANCELLED with "
        "the text so far. An answer that already ended is returned unchanged.",
        permission_classes=signed_in,
    )


@strawberry.type
class ChatSubscriptions:
    chat: AsyncGenerator[ChatEvent, None] = strawberry.subscription(
        resolver=resolvers.chat,
        description="sendMessage and messageStream in one operation: GenerationStarted, "
        "SourcesRetrieved, TokenDelta*, then GenerationCompleted or GenerationFailed. "
        "Unsubscribing does not stop the answer.",
        permission_classes=signed_in,
    )
    message_stream: AsyncGenerator[ChatEvent, None] = strawberry.subscription(
        resolver=resolvers.message_stream,
        description="Watch or resume an answer you may read: SourcesRetrieved, one TokenDelta "
        "with all text from fromOffset so far, live TokenDeltas, then GenerationCompleted or "
        "GenerationFailed (at once for an answer that already ended).",
        permission_classes=signed_in,
    )
