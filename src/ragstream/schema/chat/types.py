"""GraphQL types of chat: conversations, messages, sources and the events of a generation."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Protocol

import strawberry

from ragstream.domain.chat import service
from ragstream.domain.chat.enums import (
    FailureCode,
    MessageRole,
    MessageStatus,
    failure_code,
    failure_reason,
)
from ragstream.domain.chat.views import MessageView, SourceView
from ragstream.schema.context import Info
from ragstream.schema.documents.types import Chunk, Document, to_chunk, to_document
from ragstream.schema.enums import api_enum
from ragstream.schema.evaluations.types import Evaluation, to_evaluation
from ragstream.schema.pagination import AfterArg, Connection, FirstArg, to_connection

api_enum(
    MessageRole,
    description="Who wrote a message.",
    values={
        MessageRole.USER: "The person asking.",
        MessageRole.ASSISTANT: "The generated answer.",
    },
)
api_enum(
    MessageStatus,
    description="Where a message is in its life; user messages are always COMPLETE.",
    values={
        MessageStatus.STREAMING: "Being generated; `content` is what is stored so far.",
        MessageStatus.COMPLETE: "Finished normally.",
        MessageStatus.CANCELLED: "Stopped by cancelGeneration; `content` is the partial answer.",
        MessageStatus.FAILED: "The provider failed or stalled; `content` is the partial answer "
        "and `errorCode` says why.",
        MessageStatus.INTERRUPTED: "The server stopped or crashed during generation; `content` "
        "is the text stored until then.",
    },
)
api_enum(
    FailureCode,
    description="Why an answer failed or was interrupted.",
    values={
        FailureCode.PROVIDER_UNAVAILABLE: "The language model could not be reached (or was "
        "overloaded).",
        FailureCode.PROVIDER_ERROR: "The language model refused the request or broke off.",
        FailureCode.PROVIDER_TIMEOUT: "The language model sent no first token, or stalled, for "
        "too long.",
        FailureCode.RETRIEVAL_FAILED: "The knowledge base could not be searched.",
        FailureCode.INTERRUPTED: "The server stopped during generation.",
        FailureCode.CONVERSATION_DELETED: "The conversation was deleted while the answer ran.",
        FailureCode.INTERNAL_SERVER_ERROR: "An unexpected error; the server log has the details.",
    },
)


@strawberry.type(description="A numbered source `[index]` an answer was grounded on.")
class Source:
    index: int = strawberry.field(description="The n cited as [n] in the answer, from 1.")
    score: float = strawberry.field(description="Retrieval relevance (fused rank score).")
    title: str = strawberry.field(description="Title of the document when it was cited.")
    excerpt: str = strawberry.field(
        description="The cited passage as it was given to the model (at most 2000 characters)."
    )
    page: int | None = strawberry.field(description="PDF page of the passage; null otherwise.")
    document_id: strawberry.ID | None = strawberry.field(
        description="UUID of the cited document; null once it was deleted."
    )
    chunk_id: strawberry.ID | None = strawberry.field(
        description="UUID of the cited chunk; null once its document was deleted or reprocessed."
    )

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry leaves it untyped
        description="The cited document; null if it was deleted or you may no longer read it."
    )
    async def document(self, info: Info) -> Document | None:
        if self.document_id is None:
            return None
        row = await info.context.loaders.chat.documents.load(uuid.UUID(str(self.document_id)))
        return None if row is None else to_document(row)

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry leaves it untyped
        description="The cited chunk; null if it is gone or you may no longer read it."
    )
    async def chunk(self, info: Info) -> Chunk | None:
        if self.chunk_id is None:
            return None
        row = await info.context.loaders.chat.chunks.load(uuid.UUID(str(self.chunk_id)))
        return None if row is None else to_chunk(row)


def _id(value: uuid.UUID | None) -> strawberry.ID | None:
    return None if value is None else strawberry.ID(str(value))


def to_source(view: SourceView) -> Source:
    return Source(
        index=view.index,
        score=view.score,
        title=view.title,
        excerpt=view.excerpt,
        page=view.page,
        document_id=_id(view.document_id),
        chunk_id=_id(view.chunk_id),
    )


@strawberry.type(description="One turn of a conversation.")
class Message:
    id: strawberry.ID = strawberry.field(description="UUID of the message.")
    conversation_id: strawberry.ID = strawberry.field(description="UUID of its conversation.")
    role: MessageRole = strawberry.field(description="USER or ASSISTANT.")
    content: str = strawberry.field(
        description="The text; for a STREAMING answer, what was stored so far (use "
        "messageStream for the live text)."
    )
    status: MessageStatus = strawberry.field(description="Where the message is in its life.")
    sources: list[Source] = strawberry.field(
        description="What an answer was grounded on, in citation order; empty for questions."
    )
    model: str | None = strawberry.field(description="The model that wrote an answer.")
    prompt_tokens: int | None = strawberry.field(
        description="Prompt tokens of an answer, as the provider reported them (estimated when "
        "it reported none, e.g. after a cancel)."
    )
    completion_tokens: int | None = strawberry.field(
        description="Completion tokens of an answer, reported or estimated like promptTokens."
    )
    error_code: str | None = strawberry.field(
        description="Why an answer FAILED or was INTERRUPTED, e.g. PROVIDER_TIMEOUT."
    )
    created_at: datetime = strawberry.field(description="When the message was written.")
    completed_at: datetime | None = strawberry.field(
        description="When an answer stopped streaming; null while STREAMING."
    )


def to_message(view: MessageView) -> Message:
    return Message(
        id=strawberry.ID(str(view.id)),
        conversation_id=strawberry.ID(str(view.conversation_id)),
        role=MessageRole(view.role),
        content=view.content,
        status=MessageStatus(view.status),
        sources=[to_source(s) for s in view.sources],
        model=view.model,
        prompt_tokens=view.prompt_tokens,
        completion_tokens=view.completion_tokens,
        error_code=None if view.error_code is None else str(view.error_code),
        created_at=view.created_at,
        completed_at=view.completed_at,
    )


@strawberry.type(description="A chat, optionally about an evaluation.")
class Conversation:
    id: strawberry.ID = strawberry.field(description="UUID of the conversation.")
    title: str = strawberry.field(description="Title, at most 200 characters.")
    created_at: datetime = strawberry.field(description="When it was started.")
    updated_at: datetime = strawberry.field(description="When the last message was sent.")
    evaluation_id: strawberry.Private[uuid.UUID | None]

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry leaves it untyped
        description="The evaluation the assistant takes as context; null if none, or if it "
        "was deleted or you may no longer read it."
    )
    async def evaluation(self, info: Info) -> Evaluation | None:
        if self.evaluation_id is None:
            return None
        row = await info.context.loaders.chat.evaluations.load(self.evaluation_id)
        return None if row is None else to_evaluation(row)

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry leaves it untyped
        description="The messages, oldest first, each answer with its sources."
    )
    async def messages(
        self,
        info: Info,
        first: FirstArg = None,
        after: AfterArg = None,
    ) -> Connection[Message]:
        # Batched with the other conversations of the response; see schema/chat/loaders.py.
        key = service.message_page_key(uuid.UUID(str(self.id)), first=first, after=after)
        page = await info.context.loaders.chat.message_pages.load(key)
        return to_connection(page, to_message)


class ConversationRow(Protocol):
    """What a conversation is mapped from: the model, or a listed row (plain values)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def title(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def evaluation_id(self) -> uuid.UUID | None: ...


def to_conversation(row: ConversationRow) -> Conversation:
    return Conversation(
        id=strawberry.ID(str(row.id)),
        title=row.title,
        created_at=row.created_at,
        updated_at=row.updated_at,
        evaluation_id=row.evaluation_id,
    )


# --- Events of a generation ------------------------------------------------------------------


@strawberry.type(description="A question was stored and its answer started.")
class GenerationStarted:
    user_message: Message = strawberry.field(description="The stored question.")
    assistant_message: Message = strawberry.field(description="The answer, STREAMING and empty.")


@strawberry.type(description="The sources the answer is grounded on, before its first token.")
class SourcesRetrieved:
    message_id: strawberry.ID = strawberry.field(description="UUID of the answer.")
    sources: list[Source] = strawberry.field(description="Numbered sources, in citation order.")


@strawberry.type(description="More text of the answer.")
class TokenDelta:
    message_id: strawberry.ID = strawberry.field(description="UUID of the answer.")
    offset: int = strawberry.field(
        description="Index of delta's first character in the final content. Offsets are "
        "contiguous: the next delta starts at offset + length(delta)."
    )
    delta: str = strawberry.field(description="The new text.")


@strawberry.type(description="The answer ended normally, or was cancelled (see message.status).")
class GenerationCompleted:
    message: Message = strawberry.field(description="The stored answer.")


@strawberry.type(description="The answer failed or was interrupted; the partial text is stored.")
class GenerationFailed:
    message_id: strawberry.ID = strawberry.field(description="UUID of the answer.")
    code: FailureCode = strawberry.field(description="Why the answer did not complete.")
    reason: str = strawberry.field(description="A readable explanation (never provider text).")

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry leaves it untyped
        description="The same text as `reason`.",
        deprecation_reason="Use `reason`; `message` clashes with GenerationCompleted.message "
        "in a selection over ChatEvent.",
    )
    def message(self) -> str:
        return self.reason


ChatEvent = Annotated[
    GenerationStarted | SourcesRetrieved | TokenDelta | GenerationCompleted | GenerationFailed,
    strawberry.union(
        "ChatEvent",
        description="One event of a generation, in this order: GenerationStarted (chat only), "
        "SourcesRetrieved, TokenDelta*, then GenerationCompleted or GenerationFailed.",
    ),
]


def generation_failed(message_id: uuid.UUID, code: str) -> GenerationFailed:
    return GenerationFailed(
        message_id=strawberry.ID(str(message_id)),
        code=failure_code(code),
        reason=failure_reason(code),
    )


# --- Inputs ------------------------------------------------------------------------------------


@strawberry.input(description="A new conversation.")
class CreateConversationInput:
    title: str | None = strawberry.field(
        default=None, description='Title, at most 200 characters (default "New conversation").'
    )
    evaluation_id: strawberry.ID | None = strawberry.field(
        default=None,
        description="An evaluation you may read; the assistant then takes it as context.",
    )


@strawberry.input(description="A question to ask in a conversation.")
class SendMessageInput:
    conversation_id: strawberry.ID = strawberry.field(description="UUID of your conversation.")
    content: str = strawberry.field(description="The question, 1 to 8000 characters.")
