"""Conversations and messages: reads, writes and the checks before an answer is generated.

Stateless functions; callers pass the session (the unit of work they own) and the viewer.
Running generations live in `generation.GenerationManager`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ragstream.db.driver import DriverTarget
from ragstream.db.models.chat import Conversation, Message
from ragstream.db.models.documents import Chunk, Document
from ragstream.db.models.evaluations import Evaluation
from ragstream.db.models.users import User
from ragstream.db.pagination import Page, PageRequest, ParentPageKey
from ragstream.db.repositories.chat import (
    ConversationListing,
    ConversationRepository,
    MessageRepository,
    TokenTotals,
    UsageKey,
    UsageRepository,
    check_list_cursor,
    conversation_list_rows,
    signed_in_conversation_rows,
)
from ragstream.domain.chat.enums import FailureCode, MessageRole, MessageStatus
from ragstream.domain.chat.prompt import HistoryTurn, SourceText
from ragstream.domain.chat.quota import ChatLimits, check_can_send, utc_day
from ragstream.domain.chat.views import MessageView, SourceView, message_view, source_view
from ragstream.domain.documents import service as documents
from ragstream.domain.errors import InvalidInput, NotFound, not_found
from ragstream.domain.evaluations import service as evaluations
from ragstream.domain.flags.features import FeatureDefaults
from ragstream.domain.flags.service import SignedIn, signed_in_of
from ragstream.domain.llm.chat import CriterionContext, EvaluationContext
from ragstream.domain.pagination import cursor_errors, page_request
from ragstream.domain.users.tokens import AccessClaims

MAX_TITLE = 200
DEFAULT_TITLE = "New conversation"
EXCERPT_CHARS = 2_000
HISTORY_MESSAGES = 20
# Answers that ended without text add nothing to the history.
HISTORY_STATUSES = (MessageStatus.COMPLETE, MessageStatus.CANCELLED)


def normalize_title(title: str | None) -> str:
    value = " ".join((title or "").split())
    if len(value) > MAX_TITLE:
        raise InvalidInput(f"title must be at most {MAX_TITLE} characters", field="title")
    return value or DEFAULT_TITLE


def normalize_content(content: str, max_chars: int) -> str:
    value = content.strip()
    if not value:
        raise InvalidInput("content must not be empty", field="content")
    if len(value) > max_chars:
        raise InvalidInput(f"content must be at most {max_chars} characters", field="content")
    return value


# --- Conversations ---------------------------------------------------------------------------


async def create_conversation(
    session: AsyncSession, viewer: User, *, title: str | None, evaluation_id: uuid.UUID | None
) -> Conversation:
    """A conversation of the viewer, optionally about an evaluation the viewer may read."""
    if evaluation_id is not None:
        await evaluations.get_evaluation(session, viewer, evaluation_id)  # NOT_FOUND otherwise
    conversation = Conversation(
        owner_id=viewer.id, title=normalize_title(title), evaluation_id=evaluation_id
    )
    return await ConversationRepository(session).add(conversation)


async def get_conversation(
    session: AsyncSession, viewer: User, conversation_id: uuid.UUID
) -> Conversation:
    conversation = await ConversationRepository(session).get_readable(viewer, conversation_id)
    if conversation is None:
        raise not_found("conversation")
    return conversation


async def list_conversations(
    session: AsyncSession,
    viewer: User,
    *,
    first: int | None,
    after: str | None,
    evaluation_id: uuid.UUID | None,
    count: bool = True,
) -> Page[Conversation]:
    """``count=False`` when the list's total is not asked for (no count is read)."""
    with cursor_errors():
        return await ConversationRepository(session).list_owned(
            viewer, page_request(first, after, count=count), evaluation_id=evaluation_id
        )


def listing_request(
    first: int | None, after: str | None, *, count: bool, of_messages: bool = False
) -> PageRequest:
    """A page `list_conversation_rows` reads (``of_messages``: each conversation's page of
    messages), checked before anything is read: BAD_USER_INPUT for a size out of range or a
    cursor that is not one of its list's, as `list_conversations` and `message_page_key`."""
    request = page_request(first, after, count=count)
    with cursor_errors():
        check_list_cursor(request, of_messages=of_messages)
    return request


async def list_conversation_rows(
    on: DriverTarget, viewer: User, request: PageRequest, messages: PageRequest | None
) -> ConversationListing:
    """`list_conversations` without a filter, as plain rows, and with ``messages`` the
    `message_pages` of the listed conversations (without their sources), in one statement;
    the requests come from `listing_request`."""
    with cursor_errors():
        return await conversation_list_rows(on, viewer, request, messages)


async def signed_in_conversation_listing(
    on: DriverTarget,
    claims: AccessClaims,
    request: PageRequest,
    messages: PageRequest | None,
    *,
    environment: str,
    defaults: FeatureDefaults,
) -> tuple[SignedIn, ConversationListing] | None:
    """The viewer check (`resolve_signed_in`) and `list_conversation_rows` for that viewer,
    with requests from `listing_request` and no count, in one statement; None when the
    token's account or sign-in session is not live (nothing was listed)."""
    signed_in = {
        "user_id": claims.user_id,
        "session_id": claims.session_id,
        "environment": environment,
    }
    found = await signed_in_conversation_rows(on, signed_in, request, messages)
    if found is None:
        return None
    viewer, listing = found
    return signed_in_of(viewer, defaults), listing


async def delete_conversation(
    session: AsyncSession, viewer: User, conversation_id: uuid.UUID
) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
    """Deletes an own conversation; returns its answers that were still being generated, each
    with the server process generating it."""
    conversation = await ConversationRepository(session).get_owned(viewer, conversation_id)
    if conversation is None:
        raise not_found("conversation")
    running = await MessageRepository(session).streaming_in_conversation(conversation_id)
    await ConversationRepository(session).delete_owned(viewer, conversation_id)
    return running


# --- Messages --------------------------------------------------------------------------------


async def _views(session: AsyncSession, rows: Sequence[Message]) -> list[MessageView]:
    sources = await MessageRepository(session).sources_for([m.id for m in rows])
    return [message_view(m, [source_view(s) for s in sources.get(m.id, ())]) for m in rows]


def message_page_key(
    conversation_id: uuid.UUID, *, first: int | None, after: str | None
) -> ParentPageKey:
    """Validate ``Conversation.messages`` arguments up front, so a batch never fails on one bad
    key (and a refused page size reads nothing)."""
    request = page_request(first, after)
    with cursor_errors():
        return MessageRepository.page_key(conversation_id, request)


async def message_pages(
    session: AsyncSession, viewer: User, keys: Sequence[ParentPageKey]
) -> list[Page[MessageView]]:
    """Conversations' messages, oldest first, each with its sources, for many pages at once.

    A conversation the viewer may not read has no messages. The first pages of all the
    conversations are one query, and the sources of every message on every page another.
    """
    pages = await MessageRepository(session).pages_readable(viewer, keys)
    views = iter(await _views(session, [m for page in pages for m in page.items]))
    return [
        Page(
            items=[next(views) for _ in page.items],
            cursors=page.cursors,
            has_next_page=page.has_next_page,
            has_previous_page=page.has_previous_page,
            total_count=page.total_count,
        )
        for page in pages
    ]


async def get_message(session: AsyncSession, viewer: User, message_id: uuid.UUID) -> MessageView:
    row = await MessageRepository(session).get_readable(viewer, message_id)
    if row is None:
        raise not_found("message")
    return (await _views(session, [row]))[0]


async def get_own_message(session: AsyncSession, viewer: User, message_id: uuid.UUID) -> Message:
    """For changes (cancel): the owner's alone; anyone else gets NOT_FOUND."""
    row = await MessageRepository(session).get_owned(viewer, message_id)
    if row is None:
        raise not_found("message")
    return row


async def load_message(session: AsyncSession, message_id: uuid.UUID) -> MessageView | None:
    """Unfiltered, for the generation task acting for the owner who started it."""
    row = await MessageRepository(session).get(message_id)
    return None if row is None else (await _views(session, [row]))[0]


async def keep_followed_text(
    sessionmaker: async_sessionmaker[AsyncSession], message_id: uuid.UUID, content: str
) -> MessageView | None:
    """An interrupted answer with ``content`` kept if a follower received more than was saved
    (so what was streamed and what is stored agree); the answer as stored."""
    async with sessionmaker.begin() as session:
        await MessageRepository(session).extend_interrupted(message_id, content)
        return await load_message(session, message_id)


@dataclass(frozen=True)
class NewExchange:
    """A stored question and the (empty, STREAMING) answer to generate for it."""

    conversation_id: uuid.UUID
    evaluation_id: uuid.UUID | None
    question: MessageView
    answer: MessageView
    # From the viewer's chat feature when the question was asked.
    model: str
    max_answer_tokens: int


async def conversation_to_send_in(
    session: AsyncSession, viewer: User, conversation_id: uuid.UUID
) -> Conversation:
    """The viewer's conversation a question is about to be stored in, its updated_at bumped
    (a conversation list shows recent activity first), or NOT_FOUND. The viewer's send lock
    is held from then on, until the transaction ends (see `quota.check_can_send`). A refused
    send rolls the bump back with the rest of its transaction."""
    conversation = await ConversationRepository(session).touch_owned(viewer, conversation_id)
    if conversation is None:
        raise not_found("conversation")
    return conversation


async def start_exchange(
    session: AsyncSession,
    viewer: User,
    *,
    answer_id: uuid.UUID,
    conversation: Conversation,
    text: str,
    limits: ChatLimits,
    model: str,
    max_answer_tokens: int,
    generator_id: uuid.UUID | None = None,
) -> NewExchange:
    """Stores the viewer's question ``text`` (normalized) and an empty answer ``answer_id``,
    after the quota checks.

    The caller holds the viewer's send lock (`conversation_to_send_in` takes it). The question
    and the answer are counted in the usage ledger in the same transaction, under that lock,
    so the count is exact.
    """
    messages = MessageRepository(session)
    today = utc_day()[0].date()
    await check_can_send(messages, viewer, limits, day=today)
    question, answer = await messages.add_exchange(
        conversation.id,
        viewer.id,
        text,
        answer_id=answer_id,
        model=model,
        generator_id=generator_id,
        usage=UsageKey(viewer.id, today, model),
    )
    return NewExchange(
        conversation_id=conversation.id,
        evaluation_id=conversation.evaluation_id,
        question=message_view(question),
        answer=message_view(answer),
        model=model,
        max_answer_tokens=max_answer_tokens,
    )


# --- Generation context ----------------------------------------------------------------------


async def evaluation_context(
    session: AsyncSession, viewer: User, evaluation_id: uuid.UUID | None
) -> EvaluationContext | None:
    """The linked evaluation as prompt context, if the viewer may (still) read it."""
    if evaluation_id is None:
        return None
    try:
        evaluation = await evaluations.get_evaluation(session, viewer, evaluation_id)
    except NotFound:
        return None
    criteria = [
        CriterionContext(name=c.name, weight=c.weight, score=c.score, notes=c.notes)
        for c in evaluations.criteria_of(evaluation)
    ]
    return EvaluationContext(
        title=evaluation.title,
        company_name=evaluation.company_name,
        project_type=evaluation.project_type,
        status=evaluation.status,
        overall_score=evaluation.overall_score,
        criteria=criteria,
    )


async def history(
    session: AsyncSession, conversation_id: uuid.UUID, *, before: datetime
) -> list[HistoryTurn]:
    rows = await MessageRepository(session).recent(
        conversation_id, before=before, limit=HISTORY_MESSAGES
    )
    return [
        HistoryTurn("user" if role == MessageRole.USER else "assistant", content)
        for role, status, content in rows
        if content and (role == MessageRole.USER or status in HISTORY_STATUSES)
    ]


async def store_sources(
    session: AsyncSession, message_id: uuid.UUID, sources: Sequence[SourceView]
) -> None:
    await MessageRepository(session).add_sources(message_id, sources)


def source_texts(
    sources: Sequence[SourceView],
    contents: Sequence[str],
    heading_paths: Sequence[Sequence[str]],
) -> list[SourceText]:
    return [
        SourceText(index=s.index, title=s.title, content=c, heading_path=tuple(h))
        for s, c, h in zip(sources, contents, heading_paths, strict=True)
    ]


# --- Nested reads (DataLoaders) ------------------------------------------------------------


async def cited_documents(
    session: AsyncSession, viewer: User, document_ids: list[uuid.UUID]
) -> dict[uuid.UUID, Document]:
    return await documents.get_documents(session, viewer, document_ids)


async def cited_chunks(
    session: AsyncSession, viewer: User, chunk_ids: list[uuid.UUID]
) -> dict[uuid.UUID, Chunk]:
    return await MessageRepository(session).cited_chunks(viewer, chunk_ids)


async def linked_evaluations(
    session: AsyncSession, viewer: User, evaluation_ids: list[uuid.UUID]
) -> dict[uuid.UUID, Evaluation]:
    return await ConversationRepository(session).linked_evaluations(viewer, evaluation_ids)


# --- Usage -----------------------------------------------------------------------------------


async def token_totals(
    session: AsyncSession, viewer: User, user_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, TokenTotals | None]:
    """Token sums per account: your own, or anyone's for an admin (None for the others)."""
    start, _ = utc_day()
    totals = await UsageRepository(session).totals(viewer, user_ids, today=start.date())
    return {u: totals.get(u) for u in user_ids}


def usage_day(started_at: datetime) -> date:
    """The ledger day an answer's tokens count on: the UTC day it was asked."""
    return started_at.astimezone(UTC).date()


async def finish_answer(
    session: AsyncSession,
    message_id: uuid.UUID,
    *,
    owner_id: uuid.UUID,
    started_at: datetime,
    status: MessageStatus,
    content: str,
    model: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    error_code: FailureCode | None,
) -> Message | None:
    """Stores an answer's end once and adds its final tokens to the owner's usage.

    Returns None when the answer had already ended or is gone. An answer deleted with its
    conversation while it ran still counts: its tokens were spent.
    """
    return await MessageRepository(session).finish(
        message_id,
        status=status,
        content=content,
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        error_code=error_code,
        usage=UsageKey(owner_id, usage_day(started_at), model or ""),
    )
