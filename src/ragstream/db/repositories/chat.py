"""All SQL about chat: conversations, their messages and sources, and the usage ledger."""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Float,
    Integer,
    Select,
    Text,
    Uuid,
    bindparam,
    cast,
    column,
    delete,
    exists,
    func,
    literal,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.orm import defer

from ragstream.db.driver import DriverStatement, DriverTarget
from ragstream.db.models.chat import Conversation, Message, MessageSource, UsageDaily
from ragstream.db.models.documents import Chunk, Document
from ragstream.db.models.evaluations import Evaluation
from ragstream.db.models.users import User
from ragstream.db.pagination import (
    Page,
    PageRequest,
    ParentPageKey,
    decode_cursor,
    keyset_page,
    page_of,
    paginate,
    paginate_parents,
    parent_page_key,
)
from ragstream.db.repositories.base import ReadableRepository, Repository
from ragstream.db.repositories.documents import DocumentRepository
from ragstream.db.repositories.evaluations import EvaluationRepository
from ragstream.db.repositories.users import UserRepository
from ragstream.db.signed_in_rows import signed_in_rows, split_signed_in
from ragstream.domain.chat.enums import FailureCode, MessageRole, MessageStatus
from ragstream.domain.chat.views import SourceView

# An UPDATE ... RETURNING of whole entities: the returned rows overwrite the objects the
# session holds for them (populate_existing), which is all the synchronising it needs; the ORM's
# own ("auto": evaluating the WHERE clause in Python against the identity map) is skipped.
# A moment: the least step of PostgreSQL's timestamps.
_AFTER = timedelta(microseconds=1)

_RETURNED_ROWS_REFRESH = {"populate_existing": True, "synchronize_session": False}


class ConversationRepository(ReadableRepository[Conversation]):
    """Reads go through `readable` (the owner; an admin reads everyone's), changes through
    `owned` (the owner alone, admins included)."""

    model = Conversation

    @classmethod
    def readable_by(cls, viewer: User) -> ColumnElement[bool]:
        return true() if viewer.is_admin else Conversation.owner_id == viewer.id

    @staticmethod
    def owned(viewer: User) -> Select[Conversation]:
        return select(Conversation).where(Conversation.owner_id == viewer.id)

    async def get_readable(self, viewer: User, conversation_id: uuid.UUID) -> Conversation | None:
        return await self.session.scalar(
            self.readable(viewer).where(Conversation.id == conversation_id)
        )

    async def get_owned(self, viewer: User, conversation_id: uuid.UUID) -> Conversation | None:
        return await self.session.scalar(
            self.owned(viewer).where(Conversation.id == conversation_id)
        )

    async def add(self, conversation: Conversation) -> Conversation:
        """Inserted with its timestamps read back by the INSERT itself (RETURNING)."""
        self.session.add(conversation)
        await self.session.flush()
        return conversation

    async def list_owned(
        self, viewer: User, request: PageRequest, *, evaluation_id: uuid.UUID | None = None
    ) -> Page[Conversation]:
        """The viewer's own conversations, newest first."""
        stmt = self.owned(viewer)
        if evaluation_id is not None:
            stmt = stmt.where(Conversation.evaluation_id == evaluation_id)
        return await paginate(
            self.session,
            stmt,
            keys=[Conversation.created_at, Conversation.id],
            cursor_of=lambda c: (c.created_at, c.id),
            request=request,
            descending=True,
        )

    async def delete_owned(self, viewer: User, conversation_id: uuid.UUID) -> bool:
        """Messages and their sources go with it (ON DELETE CASCADE)."""
        result = await self.session.execute(
            delete(Conversation)
            .where(Conversation.id == conversation_id, Conversation.owner_id == viewer.id)
            .returning(Conversation.id)
        )
        return result.scalar_one_or_none() is not None

    async def linked_evaluations(
        self, viewer: User, evaluation_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, Evaluation]:
        """Evaluations linked to conversations, as far as the viewer may read them."""
        rows = await self.session.scalars(
            select(Evaluation).where(
                Evaluation.id.in_(evaluation_ids), EvaluationRepository.readable_by(viewer)
            )
        )
        return {row.id: row for row in rows}

    async def touch_owned(self, viewer: User, conversation_id: uuid.UUID) -> Conversation | None:
        """The viewer's own conversation with updated_at bumped (so a conversation list can
        show recent activity), about to get a question: read and bumped in one statement,
        which also takes the viewer's send lock (see `_TOUCH`); None when it is not theirs."""
        rows = await _TOUCH.fetch(
            self.session,
            {"conversation_id": conversation_id, "owner_id": viewer.id, "locked": viewer.id},
        )
        return _loaded(_NEW_CONVERSATION, _TOUCH, rows[0][:-1]) if rows else None


# First key of the two-key advisory locks taken per user by chat ("ch").
_CHAT_LOCK_SPACE = 0x6368


# A conversation's messages in the order they were written (the cursor of Conversation.messages).
_PAGE_KEYS = (Message.created_at, Message.id)


class MessageRepository(ReadableRepository[Message]):
    """Readability follows the conversation a message belongs to (its owner is denormalised)."""

    model = Message

    @classmethod
    def readable_by(cls, viewer: User) -> ColumnElement[bool]:
        """Messages of conversations the viewer may read (own; everyone's for an admin)."""
        return true() if viewer.is_admin else Message.owner_id == viewer.id

    async def get_readable(self, viewer: User, message_id: uuid.UUID) -> Message | None:
        return await self.session.scalar(self.readable(viewer).where(Message.id == message_id))

    async def get_owned(self, viewer: User, message_id: uuid.UUID) -> Message | None:
        return await self.session.scalar(
            select(Message).where(Message.id == message_id, Message.owner_id == viewer.id)
        )

    async def get(self, message_id: uuid.UUID) -> Message | None:
        """Unfiltered: for the generation task, which acts for the owner it was started by."""
        return await self.session.get(Message, message_id, populate_existing=True)

    @staticmethod
    def page_key(conversation_id: uuid.UUID, request: PageRequest) -> ParentPageKey:
        """Raises ``InvalidCursor`` for anything that is not a cursor of a message list."""
        return parent_page_key(conversation_id, request, _PAGE_KEYS)

    async def pages_readable(
        self, viewer: User, keys: Sequence[ParentPageKey]
    ) -> list[Page[Message]]:
        """Conversations' messages in the order they were written, a page per key.

        The first pages of all the conversations are one statement (see `paginate_parents`).
        """
        return await paginate_parents(
            self.session,
            self.readable(viewer),
            parent=Message.conversation_id,
            keys=_PAGE_KEYS,
            cursor_of=lambda m: (m.created_at, m.id),
            requests=keys,
        )

    async def recent(
        self, conversation_id: uuid.UUID, *, before: datetime, limit: int
    ) -> list[tuple[MessageRole, MessageStatus, str]]:
        """The role, status and content of the latest ``limit`` messages written before
        ``before``, oldest first."""
        rows = await _RECENT.fetch(
            self.session, {"conversation_id": conversation_id, "before": before, "limit": limit}
        )
        return [(role, status, content) for role, status, content in reversed(rows)]

    async def add(self, message: Message) -> Message:
        """Inserts the message; what the database fills in (created_at) comes back with the
        INSERT (RETURNING), so the row needs no second read."""
        self.session.add(message)
        await self.session.flush()
        return message

    async def add_exchange(
        self,
        conversation_id: uuid.UUID,
        owner_id: uuid.UUID,
        question: str,
        *,
        answer_id: uuid.UUID,
        model: str,
        generator_id: uuid.UUID | None,
        usage: UsageKey,
    ) -> tuple[Message, Message]:
        """The question (COMPLETE), its empty answer ``answer_id`` (STREAMING) and both
        counted in ``usage``'s ledger row, in one statement; the rows as stored.

        The answer's ``created_at`` is later than the question's, so the two sort in the order
        they were written however fast the clock is read.
        """
        rows = await _EXCHANGE.fetch(
            self.session,
            {
                "question_id": uuid.uuid4(),
                "conversation_id": conversation_id,
                "owner_id": owner_id,
                "question": question,
                "answer_id": answer_id,
                "answer_conversation_id": conversation_id,
                "answer_owner_id": owner_id,
                "model": model,
                "generator_id": generator_id,
                "usage_user_id": usage.user_id,
                "usage_day": usage.day,
                "usage_model": usage.model,
            },
        )
        stored_question, stored_answer = (_loaded(_NEW_MESSAGE, _EXCHANGE, r) for r in rows)
        return stored_question, stored_answer

    async def sources_for(
        self, message_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, list[MessageSource]]:
        result: dict[uuid.UUID, list[MessageSource]] = defaultdict(list)
        if not message_ids:
            return result
        rows = await self.session.scalars(
            select(MessageSource)
            .where(MessageSource.message_id.in_(message_ids))
            .order_by(MessageSource.message_id, MessageSource.index)
        )
        for row in rows:
            result[row.message_id].append(row)
        return result

    async def add_sources(self, message_id: uuid.UUID, sources: Sequence[SourceView]) -> None:
        """The numbered sources of an answer, in one statement (`_ADD_SOURCES`)."""
        if not sources:
            return
        await _ADD_SOURCES.fetch(
            self.session,
            {"message_id": message_id}
            | {name: [getattr(s, name) for s in sources] for name in _SOURCE_FIELDS},
        )

    async def save_partial(
        self, contents: Sequence[tuple[uuid.UUID, str]]
    ) -> list[tuple[uuid.UUID, str | None]]:
        """Write the text streamed so far for many running answers in one statement; returns
        the stops other processes asked for among them (`request_stop`), and the answers whose
        row is gone (deleted with their conversation) with None."""
        if not contents:
            return []
        result = await self.session.execute(
            text(
                "WITH u AS (SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:contents AS text[]))"
                " AS u(id, content)), "
                "saved AS (UPDATE messages AS m SET content = u.content, updated_at = now() "
                "FROM u WHERE m.id = u.id AND m.status = 'STREAMING' "
                "RETURNING m.id, m.stop_requested) "
                "SELECT id, stop_requested FROM saved WHERE stop_requested IS NOT NULL "
                "UNION ALL "
                "SELECT u.id, NULL FROM u "
                "WHERE NOT EXISTS (SELECT FROM messages m WHERE m.id = u.id)"
            ),
            {"ids": [i for i, _ in contents], "contents": [c for _, c in contents]},
        )
        return [(row[0], row[1]) for row in result]

    async def requested_stops(
        self, message_ids: Sequence[uuid.UUID]
    ) -> list[tuple[uuid.UUID, str | None]]:
        """The stops other processes asked for among these running answers, and the answers
        whose row is gone with None."""
        result = await self.session.execute(
            text(
                "SELECT u.id, m.stop_requested FROM unnest(CAST(:ids AS uuid[])) AS u(id) "
                "LEFT JOIN messages m ON m.id = u.id WHERE m.id IS NULL "
                "OR (m.status = 'STREAMING' AND m.stop_requested IS NOT NULL)"
            ),
            {"ids": list(message_ids)},
        )
        return [(row[0], row[1]) for row in result]

    async def request_stop(self, viewer: User, message_id: uuid.UUID, reason: str) -> bool:
        """Leaves the viewer's request to stop their running answer for the process generating
        it (which reads it with its next write of the text); False if the answer is not
        running or not the viewer's."""
        result = await self.session.execute(
            text(
                "UPDATE messages SET stop_requested = :reason "
                "WHERE id = :id AND owner_id = :owner AND status = 'STREAMING'"
            ),
            {"id": message_id, "owner": viewer.id, "reason": reason},
        )
        return bool(getattr(result, "rowcount", 0))

    async def extend_interrupted(self, message_id: uuid.UUID, content: str) -> bool:
        """Store ``content`` for an interrupted answer whose saved text is a shorter start of it
        (text a follower received but its dead process never saved); False if it was not."""
        result = await self.session.execute(
            text(
                "UPDATE messages SET content = :content, updated_at = now() "
                "WHERE id = :id AND status = 'INTERRUPTED' "
                "AND length(content) < length(:content) AND starts_with(:content, content)"
            ),
            {"id": message_id, "content": content},
        )
        return bool(getattr(result, "rowcount", 0))

    async def finish(
        self,
        message_id: uuid.UUID,
        *,
        status: MessageStatus,
        content: str,
        model: str | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        error_code: FailureCode | None,
        usage: UsageKey,
    ) -> Message | None:
        """Store the final state once and add its tokens to ``usage``'s ledger row, in one
        statement; a message that already left STREAMING is not touched.

        The tokens count when the answer ends here, and when it is gone (deleted with its
        conversation while it ran: its tokens were spent); not when it had already ended.
        """
        tokens = {
            "usage_user_id": usage.user_id,
            "usage_day": usage.day,
            "usage_model": usage.model,
            "usage_prompt_tokens": prompt_tokens or 0,
            "usage_completion_tokens": completion_tokens or 0,
        }
        rows = await _FINISH.fetch(
            self.session,
            {
                "message_id": message_id,
                "status": status,
                "content": content,
                "model": model,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "error_code": error_code,
                **tokens,
            },
        )
        if rows:
            return _loaded(_NEW_MESSAGE, _FINISH, rows[0])
        await _COUNT_IF_GONE.fetch(self.session, {"message_id": message_id, **tokens})
        return None

    async def sending_counts(self, owner_id: uuid.UUID, day: date) -> tuple[int, int]:
        """The questions ``owner_id`` asked on ``day`` (in the usage ledger, which deleting
        conversations does not touch) and their answers still STREAMING, in one statement."""
        [(asked, streaming)] = await _COUNTS.fetch(
            self.session, {"owner_id": owner_id, "day": day, "running_owner_id": owner_id}
        )
        return int(asked), int(streaming)

    async def cited_chunks(
        self, viewer: User, chunk_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, Chunk]:
        """Cited chunks the viewer may still look at (their document is visible to them)."""
        rows = await self.session.scalars(
            select(Chunk)
            .join(Document, Document.id == Chunk.document_id)
            .where(Chunk.id.in_(chunk_ids), DocumentRepository.readable_by(viewer))
            .options(defer(Chunk.embedding), defer(Chunk.tsv))
        )
        return {row.id: row for row in rows}

    async def streaming_in_conversation(
        self, conversation_id: uuid.UUID
    ) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
        """The conversation's running answers, each with the process generating it."""
        rows = await self.session.execute(
            select(Message.id, Message.generator_id).where(
                Message.conversation_id == conversation_id,
                Message.status == MessageStatus.STREAMING,
            )
        )
        return [(row.id, row.generator_id) for row in rows]


@dataclass(frozen=True)
class TokenTotals:
    prompt_tokens: int
    completion_tokens: int
    answers: int
    questions_today: int


@dataclass(frozen=True)
class UsageRow:
    """One group of a usage report; ``key`` is its day, user id or model."""

    key: date | uuid.UUID | str
    questions: int
    answers: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class UsageKey:
    """The ledger row an answer's tokens are added to."""

    user_id: uuid.UUID
    day: date
    model: str


_USAGE_COLUMNS = (
    "user_id",
    "day",
    "model",
    "questions",
    "answers",
    "prompt_tokens",
    "completion_tokens",
)


def _adding(stmt: Insert) -> Any:
    """``stmt``, an INSERT into the ledger, adding to the row already there instead: atomic
    per row, so concurrent additions for the same user, day and model all count."""
    return stmt.on_conflict_do_update(
        index_elements=[UsageDaily.user_id, UsageDaily.day, UsageDaily.model],
        set_={
            name: getattr(UsageDaily, name) + getattr(stmt.excluded, name)
            for name in _USAGE_COLUMNS[3:]
        },
    )


# --- The statements of a send and of an answer's end, compiled once (db/driver.py) -----------
# Each runs for every question or answer, and each is a large tree (CTEs, every column
# returned): through the ORM, building it and its cache key cost more than running it.

_MESSAGE_COLUMNS = Message.__table__.c


# A `SourceView`'s fields, in the order of `_ADD_SOURCES`' columns (its parameters' names).
_SOURCE_FIELDS = ("index", "document_id", "chunk_id", "title", "excerpt", "page", "score")
# An answer's sources as one INSERT of a row per array element: no ORM flush, and with the
# session in autocommit, no BEGIN and COMMIT around it.
_ADD_SOURCES = DriverStatement(
    text(
        "WITH added AS (INSERT INTO message_sources"
        " (message_id, index, document_id, chunk_id, title, excerpt, page, score)"
        " SELECT :message_id, s.* FROM unnest(:index, :document_id, :chunk_id, :title,"
        " :excerpt, :page, :score) AS s RETURNING 1)"
        " SELECT count(*) AS added FROM added"
    )
    .bindparams(
        bindparam("message_id", type_=Uuid),
        bindparam("index", type_=ARRAY(Integer)),
        bindparam("document_id", type_=ARRAY(Uuid)),
        bindparam("chunk_id", type_=ARRAY(Uuid)),
        bindparam("title", type_=ARRAY(Text)),
        bindparam("excerpt", type_=ARRAY(Text)),
        bindparam("page", type_=ARRAY(Integer)),
        bindparam("score", type_=ARRAY(Float)),
    )
    .columns(column("added", Integer)),
    writes=True,
)
_NEW_MESSAGE: Callable[[], Message] = Message._sa_class_manager.new_instance  # type: ignore[attr-defined]
_NEW_CONVERSATION: Callable[[], Conversation] = Conversation._sa_class_manager.new_instance  # type: ignore[attr-defined]

_RECENT = DriverStatement(
    select(Message.role, Message.status, Message.content)
    .where(
        Message.conversation_id == bindparam("conversation_id"),
        Message.created_at < bindparam("before"),
    )
    .order_by(Message.created_at.desc(), Message.id.desc())
    .limit(bindparam("limit", type_=Integer))
)

_TOUCHED = (
    update(Conversation)
    .where(
        Conversation.id == bindparam("conversation_id"),
        Conversation.owner_id == bindparam("owner_id"),
    )
    .values(updated_at=func.now())
    .returning(*Conversation.__table__.c)
    .cte("touched")
)
# The conversation bumped, and the owner's send lock taken until the transaction ends: it
# serialises one user's sends, so the limits they check are exact.
_TOUCH = DriverStatement(
    select(
        *_TOUCHED.c,
        func.pg_advisory_xact_lock(
            literal(_CHAT_LOCK_SPACE),
            func.hashtext(cast(bindparam("locked", type_=Uuid), Text)),
        ).label("locked"),
    ),
    writes=True,
)

_COUNTS = DriverStatement(
    select(
        select(func.coalesce(func.sum(UsageDaily.questions), 0))
        .where(UsageDaily.user_id == bindparam("owner_id"), UsageDaily.day == bindparam("day"))
        .scalar_subquery(),
        select(func.count())
        .select_from(Message)
        .where(
            Message.owner_id == bindparam("running_owner_id"),
            Message.status == MessageStatus.STREAMING,
        )
        .scalar_subquery(),
    )
)


def _usage_row(questions: int, answers: int, tokens: bool) -> list[ColumnElement[Any]]:
    """A ledger row's values in `_USAGE_COLUMNS` order, for an INSERT ... SELECT."""
    kinds = UsageDaily.__table__.c
    return [
        bindparam("usage_user_id", type_=kinds.user_id.type),
        bindparam("usage_day", type_=kinds.day.type),
        bindparam("usage_model", type_=kinds.model.type),
        literal(questions),
        literal(answers),
        bindparam("usage_prompt_tokens", type_=Integer) if tokens else literal(0),
        bindparam("usage_completion_tokens", type_=Integer) if tokens else literal(0),
    ]


_ASKED = (
    insert(Message)
    .values(
        id=bindparam("question_id"),
        conversation_id=bindparam("conversation_id"),
        owner_id=bindparam("owner_id"),
        role=MessageRole.USER,
        content=bindparam("question"),
        status=MessageStatus.COMPLETE,
    )
    .returning(*_MESSAGE_COLUMNS)
    .cte("asked")
)
# The answer is written after the question: at least a microsecond later, so the two sort
# in the order they were written however fast the clock is read.
_STARTED = (
    insert(Message)
    .from_select(
        [
            "id",
            "conversation_id",
            "owner_id",
            "role",
            "content",
            "status",
            "model",
            "generator_id",
            "created_at",
        ],
        select(
            bindparam("answer_id", type_=Uuid),
            bindparam("answer_conversation_id", type_=Uuid),
            bindparam("answer_owner_id", type_=Uuid),
            literal(MessageRole.ASSISTANT, _MESSAGE_COLUMNS.role.type),
            literal(""),
            literal(MessageStatus.STREAMING, _MESSAGE_COLUMNS.status.type),
            bindparam("model", type_=_MESSAGE_COLUMNS.model.type),
            bindparam("generator_id", type_=Uuid),
            func.greatest(func.clock_timestamp(), _ASKED.c.created_at + _AFTER),
        ).select_from(_ASKED),
    )
    .returning(*_MESSAGE_COLUMNS)
    .cte("started")
)
_EXCHANGE_ROWS = union_all(select(_ASKED), select(_STARTED)).subquery("exchange")
# The question, its answer, and both counted in the ledger.
_EXCHANGE = DriverStatement(
    select(*_EXCHANGE_ROWS.c)
    .add_cte(
        _adding(
            insert(UsageDaily).from_select(_USAGE_COLUMNS, select(*_usage_row(1, 1, False)))
        ).cte("counted")
    )
    .order_by(_EXCHANGE_ROWS.c.created_at),
    writes=True,
)

_FINISHED = (
    update(Message)
    .where(Message.id == bindparam("message_id"), Message.status == MessageStatus.STREAMING)
    .values(
        status=bindparam("status"),
        content=bindparam("content"),
        model=bindparam("model"),
        prompt_tokens=bindparam("prompt_tokens"),
        completion_tokens=bindparam("completion_tokens"),
        error_code=bindparam("error_code"),
        completed_at=func.now(),
        updated_at=func.now(),
    )
    .returning(*_MESSAGE_COLUMNS)
    .cte("finished")
)
# The end stored once, and its tokens counted with it.
_FINISH = DriverStatement(
    select(*_FINISHED.c).add_cte(
        _adding(
            insert(UsageDaily).from_select(
                _USAGE_COLUMNS,
                select(*_usage_row(0, 0, True)).where(exists(select(_FINISHED.c.id))),
            )
        ).cte("counted")
    ),
    writes=True,
)
# An answer's tokens when the answer is gone (deleted with its conversation while it ran: its
# tokens were spent). A statement of its own, after the end found nothing to store: its
# snapshot sees a delete the end's UPDATE waited for, which the end's own snapshot does not.
_GONE_COUNTED = _adding(
    insert(UsageDaily).from_select(
        _USAGE_COLUMNS,
        select(*_usage_row(0, 0, True)).where(
            ~exists(select(Message.id).where(Message.id == bindparam("message_id")))
        ),
    )
).returning(UsageDaily.user_id)
_COUNT_IF_GONE = DriverStatement(select(_GONE_COUNTED.cte("counted").c.user_id), writes=True)

T = TypeVar("T")


def _loaded(new: Callable[[], T], statement: DriverStatement, row: Sequence[Any]) -> T:
    """A transient instance with the row's columns set, as the ORM's loading would."""
    instance = new()
    instance.__dict__.update(zip(statement.keys, row, strict=False))
    return instance


class UsageRepository(Repository):
    async def report(self, start: date, end: date, group: str, limit: int) -> list[UsageRow]:
        """Sums over the days ``start`` to ``end`` (both included) per day, user or model.

        Days in date order; users and models by tokens used, most first. One statement.
        """
        key: Any = {"DAY": UsageDaily.day, "USER": UsageDaily.user_id, "MODEL": UsageDaily.model}[
            group
        ]
        prompt = func.sum(UsageDaily.prompt_tokens)
        completion = func.sum(UsageDaily.completion_tokens)
        order = [key] if group == "DAY" else [(prompt + completion).desc(), key]
        rows = await self.session.execute(
            select(
                key,
                func.sum(UsageDaily.questions),
                func.sum(UsageDaily.answers),
                prompt,
                completion,
            )
            .where(UsageDaily.day >= start, UsageDaily.day <= end)
            .group_by(key)
            .order_by(*order)
            .limit(limit)
        )
        return [
            UsageRow(value, int(questions), int(answers), int(p), int(c))
            for value, questions, answers, p, c in rows
        ]

    async def totals(
        self, viewer: User, user_ids: Sequence[uuid.UUID], *, today: date
    ) -> dict[uuid.UUID, TokenTotals]:
        """All-time token and answer sums, and questions today, of each account among
        ``user_ids`` the viewer may read (itself; anyone for an admin), in one statement."""
        rows = await self.session.execute(
            select(
                User.id,
                func.coalesce(func.sum(UsageDaily.prompt_tokens), 0),
                func.coalesce(func.sum(UsageDaily.completion_tokens), 0),
                func.coalesce(func.sum(UsageDaily.answers), 0),
                func.coalesce(func.sum(UsageDaily.questions).filter(UsageDaily.day == today), 0),
            )
            .select_from(User)
            .outerjoin(UsageDaily, UsageDaily.user_id == User.id)
            .where(User.id.in_(user_ids), UserRepository.readable_by(viewer))
            .group_by(User.id)
        )
        return {
            user: TokenTotals(int(prompt), int(completion), int(answers), int(questions))
            for user, prompt, completion, answers, questions in rows
        }


# --- A conversation list page with each conversation's messages, in one statement ------------
# The `conversations` list a frontend shows, read by the compiled plan (schema/compiled.py) on
# the driver: the conversations' page and, through a LATERAL join, each conversation's page of
# messages (and, if asked for, their number), with the same rules, order and bounds as
# `ConversationRepository.list_owned` and `MessageRepository.pages_readable`.

# The cursor of the conversation list (`list_owned`): newest first.
_LIST_KEYS = (Conversation.created_at, Conversation.id)


class ListedConversation(NamedTuple):
    """A conversation of a list page as plain values, named as the model's attributes."""

    id: uuid.UUID
    title: str
    created_at: datetime
    updated_at: datetime
    evaluation_id: uuid.UUID | None


class ListedMessage(NamedTuple):
    """A message of a conversation's page as plain values, named as the model's attributes."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    owner_id: uuid.UUID
    role: MessageRole
    content: str
    status: MessageStatus
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    error_code: FailureCode | None
    created_at: datetime
    completed_at: datetime | None


class ConversationListShape(NamedTuple):
    """What the SQL text of a list page depends on (values travel as parameters)."""

    admin: bool
    after: bool  # the list continues after a cursor
    messages: bool  # each conversation's page of messages is read
    messages_after: bool  # ... after a cursor
    message_count: bool  # ... with the number of its messages


@dataclass(frozen=True)
class ConversationListing:
    """A page of conversations; with ``messages``, each one's page of messages by its id."""

    page: Page[ListedConversation]
    messages: dict[uuid.UUID, Page[ListedMessage]] | None


class _ListViewer(NamedTuple):
    """A viewer whose id is the statement's ``viewer_id`` parameter, so the rules written
    once (`owned`, `readable_by`) hold in a statement compiled once for every viewer."""

    is_admin: bool
    id: Any


def _list_viewer(admin: bool) -> Any:
    return _ListViewer(admin, bindparam("viewer_id", type_=Uuid))


def _after_parameters(prefix: str, keys: Sequence[Any]) -> list[Any]:
    return [bindparam(f"{prefix}_{key.key}", type_=key.type) for key in keys]


def _conversation_list_select(shape: ConversationListShape, viewer: Any) -> Select[Any]:
    """A list page and its conversations' messages for ``viewer`` (whose id may be a
    parameter or a column)."""
    page_limit = bindparam("page_limit", type_=Integer)
    listed_columns = [getattr(Conversation, name) for name in ListedConversation._fields]
    if shape.messages:
        # Each row's place in the page: the last of `page_limit` rows only tells whether
        # there is a next page, and its messages are not read (see `readable`).
        listed_columns.append(
            func.row_number().over(order_by=[key.desc() for key in _LIST_KEYS]).label("place")
        )
    conversations = keyset_page(
        ConversationRepository.owned(viewer).with_only_columns(*listed_columns),
        _LIST_KEYS,
        descending=True,
        after=_after_parameters("after", _LIST_KEYS) if shape.after else None,
        limit=page_limit,
    ).subquery("listed")
    columns: list[Any] = [conversations.c[name] for name in ListedConversation._fields]
    ordering: list[Any] = [conversations.c.created_at.desc(), conversations.c.id.desc()]
    stmt = select()
    if shape.messages:
        readable = (
            Message.conversation_id == conversations.c.id,
            MessageRepository.readable_by(viewer),
            conversations.c.place < page_limit,
        )
        messages = keyset_page(
            select(*(getattr(Message, name) for name in ListedMessage._fields)).where(*readable),
            _PAGE_KEYS,
            descending=False,
            after=_after_parameters("message_after", _PAGE_KEYS) if shape.messages_after else None,
            limit=bindparam("message_limit", type_=Integer),
        ).lateral("message_page")
        columns += [column.label(f"m_{column.key}") for column in messages.c]
        ordering += [messages.c.created_at, messages.c.id]
        joined = conversations.outerjoin(messages, true())
        if shape.message_count:
            counted = (
                select(func.count().label("message_count")).where(*readable).lateral("counted")
            )
            columns.append(counted.c.message_count)
            joined = joined.join(counted, true())
        stmt = stmt.select_from(joined)
    return stmt.add_columns(*columns).order_by(*ordering)


@functools.lru_cache(maxsize=64)
def _conversation_list(shape: ConversationListShape) -> DriverStatement:
    return DriverStatement(_conversation_list_select(shape, _list_viewer(shape.admin)))


@functools.lru_cache(maxsize=64)
def _signed_in_conversation_list(shape: ConversationListShape) -> DriverStatement:
    """The viewer check and `_conversation_list` in one statement (see `signed_in_rows`)."""

    def page(is_admin: bool, viewer_id: Any) -> Select[Any]:
        viewer = _ListViewer(is_admin, viewer_id)
        return _conversation_list_select(shape._replace(admin=is_admin), viewer)

    def ordering(columns: Any) -> list[Any]:
        keys = [columns.p_created_at.desc(), columns.p_id.desc()]
        return [*keys, columns.p_m_created_at, columns.p_m_id] if shape.messages else keys

    return DriverStatement(signed_in_rows(page, ordering))


@functools.cache
def _conversation_count() -> DriverStatement:
    owned = ConversationRepository.owned(_list_viewer(False))
    return DriverStatement(
        owned.with_only_columns(func.count(), maintain_column_froms=True).order_by(None)
    )


def _after_values(prefix: str, request: PageRequest, keys: Sequence[Any]) -> dict[str, Any]:
    """Raises ``InvalidCursor`` for an ``after`` that is not a cursor of a list by ``keys``."""
    if request.after is None:
        return {}
    values = decode_cursor(request.after, keys)
    return {f"{prefix}_{key.key}": value for key, value in zip(keys, values, strict=True)}


def check_list_cursor(request: PageRequest, *, of_messages: bool) -> None:
    """Raises ``InvalidCursor`` when ``request.after`` is not a cursor of the conversation list
    (``of_messages``: of a conversation's messages)."""
    _after_values("after", request, _PAGE_KEYS if of_messages else _LIST_KEYS)


def _list_parameters(
    viewer_id: Any, request: PageRequest, messages: PageRequest | None
) -> tuple[ConversationListShape, dict[str, Any]]:
    shape = ConversationListShape(
        False,
        request.after is not None,
        messages is not None,
        messages is not None and messages.after is not None,
        messages is not None and messages.count,
    )
    params: dict[str, Any] = {"viewer_id": viewer_id, "page_limit": request.first + 1}
    params |= _after_values("after", request, _LIST_KEYS)
    if messages is not None:
        params["message_limit"] = messages.first + 1
        params |= _after_values("message_after", messages, _PAGE_KEYS)
    return shape, params


async def conversation_list_rows(
    on: DriverTarget, viewer: User, request: PageRequest, messages: PageRequest | None
) -> ConversationListing:
    """`list_owned` (without a filter) as plain rows and, with ``messages``, each listed
    conversation's `pages_readable` page for that request: the same items, cursors and
    counts, in one statement (a second one counts the list when ``request.count``)."""
    shape, params = _list_parameters(viewer.id, request, messages)
    shape = shape._replace(admin=viewer.is_admin)
    total = None
    if request.count:
        total = int((await _conversation_count().fetch(on, params))[0][0])
    rows = await _conversation_list(shape).fetch(on, params)
    return _listing(rows, shape, request, messages, total)


async def signed_in_conversation_rows(
    on: DriverTarget,
    signed_in: Mapping[str, Any],
    request: PageRequest,
    messages: PageRequest | None,
) -> tuple[tuple[User, str], ConversationListing] | None:
    """The viewer check (`FlagRepository.signed_in_with_flags`, with ``signed_in``'s
    parameters) and `conversation_list_rows` for that viewer without a count, in one
    statement; None when no live account signed in."""
    shape, params = _list_parameters(None, request, messages)
    params.update(signed_in)
    found = split_signed_in(await _signed_in_conversation_list(shape).fetch(on, params))
    if found is None:
        return None
    viewer, rows = found
    return viewer, _listing(rows, shape, request, messages, None)


def _listing(
    rows: Sequence[Sequence[Any]],
    shape: ConversationListShape,
    request: PageRequest,
    messages: PageRequest | None,
    total: int | None,
) -> ConversationListing:
    width = len(ListedConversation._fields)
    new = tuple.__new__
    listed: list[ListedConversation] = []
    found: dict[uuid.UUID, list[ListedMessage]] = {}
    counts: dict[uuid.UUID, int] = {}
    for row in rows:
        conversation_id = row[0]
        if conversation_id not in found:
            listed.append(new(ListedConversation, row[:width]))
            found[conversation_id] = []
            if shape.message_count:
                counts[conversation_id] = int(row[-1])
        if shape.messages and row[width] is not None:
            found[conversation_id].append(
                new(ListedMessage, row[width : width + len(ListedMessage._fields)])
            )
    page = page_of(listed, request, _list_cursor, total)
    if messages is None:
        return ConversationListing(page, None)
    pages = {
        item.id: page_of(found[item.id], messages, _message_cursor, counts.get(item.id))
        for item in page.items
    }
    return ConversationListing(page, pages)


def _list_cursor(item: ListedConversation) -> tuple[datetime, uuid.UUID]:
    return (item.created_at, item.id)


def _message_cursor(item: ListedMessage) -> tuple[datetime, uuid.UUID]:
    return (item.created_at, item.id)
