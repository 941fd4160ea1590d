"""The hottest reads answered from a compiled plan instead of field-by-field execution.

A frontend sends `{ me { ... } }` and the evaluations list on every page load. graphql-core
resolves such a response one field at a time, through Strawberry's wrappers, and the list reads
its owners through a DataLoader in a statement of their own. Here an operation made only of
those root fields is compiled once (per parsed document; the parser cache keeps the document) into
a plan: which statements to run and how to render each selected field. The plan reads the same
rows through the same domain services and repositories (the owners joined into the page
statement, the viewer check first, no BEGIN or ROLLBACK: see `Context.read_only`), maps them
with the same mappers to the same Strawberry objects and serializes every leaf with the schema's
own scalar and enum types, so the data is the same dictionary execution builds, key for key.

Parsing, validation, every limit, trusted documents, metrics and logs are untouched: the plan
takes over only where graphql-core would start executing the root fields. What it supports:

- query operations whose root fields are `me`, `evaluations` and `conversations` (with `first`
  and `after` only; `conversations` also with a null `evaluationId`), any aliases,
  `__typename`, fragments and inline fragments;
- below them, plain fields (no resolver, no arguments, no permissions, no field extensions),
  `Evaluation.owner`, `Evaluation.criteria`, `totalCount`, and `Conversation.messages` (with
  `first` and `after`, once per conversation, without the messages' `sources`): every listed
  conversation's page of messages is read with the list, in its statement.

Anything else is executed as before: another root field or argument, any directive anywhere in
the operation (`@skip`/`@include` make the selection depend on variables), `@defer`, resolver
middleware, a field this module does not know. At run time, a value execution would report as
an error (a null in a non-null field, an owner the viewer may not read) makes the plan give way
to execution too, which then reports it: nothing is guessed. An error raised while reading
(UNAUTHENTICATED, a bad `first` or cursor, a database failure) is located and propagated exactly
as execution would locate and propagate it from that root field (a bad `first` or cursor of
`messages`, which execution reports at each conversation's field, makes the plan give way);
with several root fields (which graphql-core resolves concurrently) the operation is executed
instead. One difference remains: the conversation list reads its messages in its own
statement, so a database failure there (a statement timeout) is reported once, at the list,
where execution, which reads the messages apart, could report it at each conversation's
`messages`. Either way the data is null and the error is INTERNAL_SERVER_ERROR.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import keyword
import operator
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from graphql import (
    DirectiveNode,
    DocumentNode,
    FieldNode,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLSchema,
    Node,
    OperationDefinitionNode,
    OperationType,
    Undefined,
    VariableNode,
    Visitor,
    get_argument_values,
    visit,
)
from graphql.execution.collect_fields import (
    FieldDetails,
    GroupedFieldSet,
    collect_fields,
    collect_subfields,
)
from graphql.pyutils import Path
from graphql.type.scalars import serialize_boolean, serialize_id, serialize_string
from strawberry.permission import PermissionExtension

from ragstream.db.driver import DriverTarget
from ragstream.db.pagination import Page, PageRequest
from ragstream.db.repositories.chat import ConversationListing
from ragstream.domain.chat import service as chat
from ragstream.domain.chat.enums import FailureCode, MessageRole, MessageStatus
from ragstream.domain.errors import DomainError
from ragstream.domain.evaluations import service as evaluations
from ragstream.domain.flags.service import SignedIn
from ragstream.domain.users.tokens import AccessClaims
from ragstream.resolvers import chat as chat_resolvers
from ragstream.resolvers import evaluations as evaluation_resolvers
from ragstream.resolvers import users as user_resolvers
from ragstream.schema.chat.types import Conversation, to_conversation
from ragstream.schema.context import Context
from ragstream.schema.evaluations.types import (
    resolve_criteria,
    resolve_owner,
    to_evaluation,
)
from ragstream.schema.pagination import Connection
from ragstream.schema.permissions import signed_in
from ragstream.schema.rendering import RenderingExecutor
from ragstream.schema.users.types import User, to_user

_DEFINITION = "strawberry-definition"
_PLANS_KEPT = 512
_ENUM_VALUES_KEPT = 256  # per enum field of a plan
_LIST_ARGUMENTS = frozenset({"first", "after"})
# Arguments of the list the plan serves only when their value is null (the defaults).
_LIST_DEFAULTED = frozenset({"filter", "orderBy"})
_CONVERSATIONS_DEFAULTED = frozenset({"evaluationId"})
# Where a root's arguments carry those of `Conversation.messages` below it (no argument of
# GraphQL may be named so: names starting with "__" are reserved).
_MESSAGES_ARGUMENTS = "__messages"


class Unsupported(Exception):
    """The plan cannot reproduce what execution would produce; execute instead."""


@dataclass
class Reads:
    """What a list's selection needs read, found while compiling it."""

    count: bool = False
    criteria: bool = False
    owners: bool = False
    # The plain attributes read of each object type (by GraphQL name), e.g. "Evaluation".
    attributes: dict[str, set[str]] = field(default_factory=dict)
    # `Conversation.messages` below a conversation list, if selected.
    messages: MessagesRead | None = None

    @functools.cached_property
    def listed_columns(self) -> evaluations.ListedColumns:
        """What a list page reads of each evaluation and its owner: what the selection shows
        (asked for once the plan is compiled)."""
        read = self.attributes.get("Evaluation", set()) | ({"criteria"} if self.criteria else set())
        owner = frozenset(self.attributes.get("User", ())) if self.owners else None
        return evaluations.ListedColumns(frozenset(read), owner)


@dataclass(frozen=True)
class MessagesRead:
    """`Conversation.messages` as a conversation list's selection reads it: the field, where
    it is written (its arguments are read for each request) and what its selection reads."""

    field: GraphQLField
    node: FieldNode
    reads: Reads


@dataclass
class Env:
    """Per-request values a rendering reads besides its source object."""

    owners: dict[uuid.UUID, User] = field(default_factory=dict)
    # The page of messages of each listed conversation, by the conversation's ID.
    messages: dict[str, _PlanConnection] = field(default_factory=dict)


# Renders one response value from its parent object (or, for a root, from what was read).
Render = Callable[[Any, Env], Any]
# A resolver this module knows, as the function reading the field's value from its parent.
Known = Callable[[Any, Env], Any]


def _resolver(definition: Any) -> Callable[..., Any] | None:
    resolver = definition.base_resolver
    wrapped: Callable[..., Any] | None = None if resolver is None else resolver.wrapped_func
    return wrapped


def _total_count() -> Callable[..., Any] | None:
    definition = Connection.__strawberry_definition__  # type: ignore[attr-defined]
    return _resolver(definition.get_field("total_count"))


def _is_messages(graphql_field: GraphQLField) -> bool:
    """Whether the field is `Conversation.messages` (with no permission or extension)."""
    definition = graphql_field.extensions.get(_DEFINITION)
    messages = Conversation.__strawberry_definition__.get_field("messages")  # type: ignore[attr-defined]
    return (
        definition is not None
        and _resolver(definition) is _resolver(messages)
        and not definition.permission_classes
        and not definition.extensions
    )


def _read_messages(source: Any, env: Env) -> Any:
    return env.messages[source.id]


class _Compiler:
    def __init__(self, executor: RenderingExecutor) -> None:
        self.executor = executor
        self.reads = Reads()
        total_count = _total_count()
        self.known: dict[Callable[..., Any] | None, tuple[str, Known]] = {
            resolve_owner: ("owners", lambda source, env: env.owners[source.owner_id]),
            resolve_criteria: ("criteria", lambda source, env: resolve_criteria(source)),
            total_count: ("count", lambda source, env: source.counted),
        }

    def _fields(
        self, parent: GraphQLObjectType, details: Sequence[FieldDetails]
    ) -> GroupedFieldSet:
        e = self.executor
        collected = collect_subfields(
            e.schema, e.fragments, e.variable_values, e.operation, parent, list(details)
        )
        if collected.new_defer_usages:
            raise Unsupported("defer")
        for group in collected.grouped_field_set.values():
            for detail in group:
                if detail.defer_usage is not None or detail.fragment_variable_values is not None:
                    raise Unsupported("defer or fragment variables")
        return collected.grouped_field_set

    def object(self, parent: GraphQLObjectType, details: Sequence[FieldDetails]) -> Render:
        """Renders the selection of ``details`` on an object of type ``parent``."""
        entries: list[tuple[str, _Entry]] = []
        for key, group in self._fields(parent, details).items():
            name = group[0].node.name.value
            if name == "__typename":
                entries.append((key, _Constant(parent.name)))
                continue
            graphql_field = parent.fields.get(name)
            if graphql_field is None:
                raise Unsupported(name)
            if _is_messages(graphql_field):
                entries.append((key, self._messages(graphql_field, group)))
                continue
            if any(detail.node.arguments for detail in group):
                raise Unsupported("arguments below the root")
            read = self._read(graphql_field)
            if isinstance(read, str):
                self.reads.attributes.setdefault(parent.name, set()).add(read)
            entries.append((key, self._value(read, graphql_field.type, group)))
        return _object_renderer(entries)

    def _messages(self, graphql_field: GraphQLField, group: list[FieldDetails]) -> _Entry:
        """`Conversation.messages`: each conversation's page, read with the list's."""
        type_ = graphql_field.type
        if self.reads.messages is not None or not (
            isinstance(type_, GraphQLNonNull) and isinstance(type_.of_type, GraphQLObjectType)
        ):
            raise Unsupported("messages selected twice")
        nested = _Compiler(self.executor)
        render = nested.object(type_.of_type, group)
        if "sources" in nested.reads.attributes.get("Message", ()):
            raise Unsupported("sources of messages")  # not read with the list
        self.reads.messages = MessagesRead(graphql_field, group[0].node, nested.reads)
        return _Completed(_read_messages, render, nullable=False)

    def _read(self, graphql_field: GraphQLField) -> str | Known:
        """The attribute a plain field reads, or the function reading a known resolver's value."""
        definition = graphql_field.extensions.get(_DEFINITION)
        if (
            definition is None
            or graphql_field.args
            or definition.permission_classes
            or definition.extensions
        ):
            raise Unsupported("a field that is not plain")
        resolver = _resolver(definition)
        if resolver is None:
            attribute: str = definition.python_name
            return attribute
        if resolver not in self.known:
            raise Unsupported("a resolver")
        need, read = self.known[resolver]
        setattr(self.reads, need, True)
        return read

    def _value(
        self, read: str | Known, type_: GraphQLOutputType, group: list[FieldDetails]
    ) -> _Entry:
        nullable = not isinstance(type_, GraphQLNonNull)
        inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
        if isinstance(read, str) and isinstance(inner, GraphQLScalarType | GraphQLEnumType):
            # The bulk of a response: a plain attribute holding a leaf.
            serialize = _remembered(inner.serialize) if isinstance(inner, GraphQLEnumType) else None
            return _Leaf(read, serialize or inner.serialize, _EXACT.get(inner.serialize), nullable)
        return _Completed(read, self._complete(inner, group), nullable)

    def _complete(self, type_: GraphQLOutputType, group: list[FieldDetails]) -> Render:
        """Renders a value known not to be None, as graphql-core's `complete_value` would."""
        if isinstance(type_, GraphQLScalarType | GraphQLEnumType):
            return _leaf(type_.serialize)
        if isinstance(type_, GraphQLObjectType):
            if type_.is_type_of is not None:
                raise Unsupported("is_type_of")
            return self.object(type_, group)
        if isinstance(type_, GraphQLList):
            item = type_.of_type
            item_nullable = not isinstance(item, GraphQLNonNull)
            complete_item = self._complete(
                item.of_type if isinstance(item, GraphQLNonNull) else item, group
            )

            def render(value: Any, env: Env) -> list[Any]:
                items: list[Any] = []
                for each in value:
                    if each is None:
                        if not item_nullable:
                            raise Unsupported("null in a non-null list item")
                        items.append(None)
                    else:
                        items.append(complete_item(each, env))
                return items

            return render
        raise Unsupported("an abstract type")


@dataclass(frozen=True)
class _Constant:
    """A value the selection alone decides (``__typename``)."""

    value: str


@dataclass(frozen=True)
class _Leaf:
    """A plain attribute holding a scalar or an enum value, serialized with its type's own
    serializer; ``exact``: the type a value is returned unchanged in (no call)."""

    attribute: str
    serialize: Callable[[Any], Any]
    exact: type | None
    nullable: bool

    @property
    def isoformat(self) -> bool:
        """Whether the serializer is ``value.isoformat()`` (Strawberry's DateTime)."""
        serialize = self.serialize
        return isinstance(serialize, operator.methodcaller) and serialize.__reduce__() == (
            operator.methodcaller,
            ("isoformat",),
        )


@dataclass(frozen=True)
class _Completed:
    """An attribute, or a known resolver, whose value (unless None) ``complete`` renders."""

    read: str | Known
    complete: Render
    nullable: bool


_Entry = _Constant | _Leaf | _Completed


def _object_renderer(entries: Sequence[tuple[str, _Entry]]) -> Render:
    """One function rendering an object's selection, entry by entry, as graphql-core completes
    each field: a dict in the selection's order, None where a nullable value is None, and
    Unsupported (execution then reports the error) for a null in a non-null field or a leaf
    that serializes to nothing.

    It is written as Python source and compiled once per plan: every plain leaf read and
    serialized inline, with no call per field and no comprehension over closures, which was
    most of rendering a list page.
    """
    names: dict[str, Any] = {
        "Unsupported": Unsupported,
        "Undefined": Undefined,
        "datetime": datetime,
        "UTC": UTC,
        "dumps": orjson.dumps,
    }
    body: list[str] = []
    items: list[str] = []
    for index, (key, entry) in enumerate(entries):
        value = f"v{index}"
        items.append(f"{key!r}: {value}")
        if isinstance(entry, _Constant):
            names[value] = entry.value
            continue
        if isinstance(entry, _Leaf):
            read = _read_source(entry.attribute)
        elif isinstance(entry.read, str):
            read = _read_source(entry.read)
        else:
            names[f"known{index}"] = entry.read
            read = f"known{index}(source, env)"
        if_none = "pass" if entry.nullable else 'raise Unsupported("null in a non-null field")'
        body += [f"    {value} = {read}", f"    if {value} is None:", f"        {if_none}"]
        if isinstance(entry, _Completed):
            names[f"complete{index}"] = entry.complete
            body += ["    else:", f"        {value} = complete{index}({value}, env)"]
            continue
        names[f"serialize{index}"] = entry.serialize
        if entry.isoformat:
            # A UTC datetime (what the driver reads from a timestamptz column) is written by
            # orjson exactly as `isoformat` writes it, in a third of the time: a page of 20
            # evaluations spent a twentieth of its CPU in `isoformat`.
            body += [
                f"    elif type({value}) is datetime and {value}.tzinfo is UTC:",
                f"        {value} = dumps({value})[1:-1].decode()",
            ]
        if entry.exact is not None:  # a value of exactly that type serializes to itself
            names[f"exact{index}"] = entry.exact
            body.append(f"    elif type({value}) is not exact{index}:")
        else:
            body.append("    else:")
        body += [
            f"        {value} = serialize{index}({value})",
            f"        if {value} is None or {value} is Undefined:",
            '            raise Unsupported("serialized to nothing")',
        ]
    source = "\n".join(["def render(source, env):", *body, "    return {" + ", ".join(items) + "}"])
    exec(compile(source, "<compiled plan>", "exec"), names)  # noqa: S102  # built above
    render: Render = names["render"]
    return render


def _read_source(attribute: str) -> str:
    """The expression reading ``attribute`` from ``source`` in a generated renderer."""
    if not attribute.isidentifier() or keyword.iskeyword(attribute):
        raise Unsupported("an attribute that is not a Python name")  # never from Strawberry
    return f"source.{attribute}"


# Serializers that return a value of exactly this type unchanged (graphql-core's own).
_EXACT: dict[Callable[[Any], Any], type] = {
    serialize_string: str,
    serialize_id: str,
    serialize_boolean: bool,
}


def _remembered(serialize: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """An enum's serializer remembering what each member serializes to (a member's name does
    not change); what it refuses is refused again every time."""
    known: dict[tuple[type, Any], Any] = {}

    def remembered(value: Any) -> Any:
        key = (value.__class__, value)  # a StrEnum member equals its text: kept apart
        try:
            return known[key]
        except (KeyError, TypeError):
            out = serialize(value)
            if out is not None and out is not Undefined and len(known) < _ENUM_VALUES_KEPT:
                with contextlib.suppress(TypeError):  # unhashable: not kept
                    known[key] = out
            return out

    return remembered


def _leaf(serialize: Callable[[Any], Any]) -> Render:
    def render(value: Any, env: Env) -> Any:
        out = serialize(value)
        if out is None or out is Undefined:
            raise Unsupported("serialized to nothing")  # execution reports a field error
        return out

    return render


@dataclass(frozen=True)
class _Root:
    key: str
    details: list[FieldDetails]
    field: GraphQLField
    # Reads what the field resolves to: (its value, what rendering it needs besides).
    read: Callable[[Context, dict[str, Any]], Awaitable[tuple[Any, Env]]]
    render: Render
    # Whether the plan serves these argument values (else the operation is executed).
    accepts: Callable[[dict[str, Any]], bool] = lambda arguments: True
    # `Conversation.messages` below the field, whose arguments are handed to `read` too.
    inner: MessagesRead | None = None

    def arguments(self, operation: PlanOperation) -> dict[str, Any]:
        """The field's argument values, with those of `inner` under `_MESSAGES_ARGUMENTS`."""
        values = self._arguments(operation)
        inner = self.inner
        if inner is None:
            return values
        nested = get_argument_values(inner.field, inner.node, operation.variable_values)
        return {**values, _MESSAGES_ARGUMENTS: nested}

    def _arguments(self, operation: PlanOperation) -> dict[str, Any]:
        """The field's argument values (read only by the plan: the same dict may be handed
        to every request when the values are written in the document)."""
        node = self.details[0].node
        if not node.arguments:
            return {}
        written = self._written
        if written is not None:
            return written
        values = get_argument_values(self.field, node, operation.variable_values)
        if not _HasVariable.in_(node):
            object.__setattr__(self, "_written", values)  # the same for every request
        return values

    _written: dict[str, Any] | None = dataclasses.field(default=None, init=False, compare=False)


async def _read_me(context: Context, arguments: dict[str, Any]) -> tuple[Any, Env]:
    # What the permission (IsAuthenticated) and the resolver (`users.me`) do, in one call.
    return to_user(await context.viewer()), Env()


def _list_reader(
    reads: Reads,
) -> Callable[[Context, dict[str, Any]], Awaitable[tuple[Any, Env]]]:
    async def read(context: Context, arguments: dict[str, Any]) -> tuple[Any, Env]:
        page = await _folded_page(context, arguments, reads)
        if page is None:
            # As IsAuthenticated and `resolvers.evaluations.evaluations` do, in the same
            # order: the viewer first, then the page size and the cursor.
            viewer = await context.viewer()
            async with context.reads() as on:
                page = await evaluations.list_evaluation_rows(
                    on,
                    viewer,
                    first=arguments.get("first"),
                    after=arguments.get("after"),
                    count=reads.count,
                    columns=reads.listed_columns,
                )
        env = Env()
        if reads.owners:
            for _, owner in page.items:
                if owner is None:
                    # Execution reports this owner as NOT_FOUND (its loader's answer).
                    raise Unsupported("an owner the viewer may not read")
                if owner.id not in env.owners:
                    env.owners[owner.id] = to_user(owner)
        return _PlanConnection(page, [to_evaluation(row[0]) for row in page.items]), env

    return read


async def _folded_page(
    context: Context, arguments: dict[str, Any], reads: Reads
) -> Page[evaluations.ListedRow] | None:
    """The page read in the viewer check's statement (one round trip), when the viewer is
    still to be checked, no count is asked for and the page size and cursor are sound; else
    None. Refusals are left to the order above (a bad cursor from a token that is no longer
    valid is UNAUTHENTICATED), and so is a token that fails before any read."""
    if reads.count or context.viewer_checked:
        return None
    try:
        request = evaluations.listing_request(arguments.get("first"), arguments.get("after"))
    except DomainError:
        return None
    settings = context.state.settings

    async def read(
        on: DriverTarget, claims: AccessClaims
    ) -> tuple[SignedIn, Page[evaluations.ListedRow]] | None:
        return await evaluations.signed_in_evaluation_rows(
            on,
            claims,
            request,
            environment=settings.environment,
            defaults=context.state.feature_defaults,
            columns=reads.listed_columns,
        )

    return await context.signed_in_with(read)


def _conversations_reader(
    reads: Reads,
) -> Callable[[Context, dict[str, Any]], Awaitable[tuple[Any, Env]]]:
    messages = reads.messages

    def requests(arguments: dict[str, Any]) -> tuple[PageRequest, PageRequest | None]:
        """The list's page and its messages', or a refusal: the list's arguments raise as
        `resolvers.chat.conversations` raises, those of messages make the plan give way
        (execution reports them at each conversation's field, or not at all if none is
        listed)."""
        request = chat.listing_request(
            arguments.get("first"), arguments.get("after"), count=reads.count
        )
        if messages is None:
            return request, None
        given = arguments[_MESSAGES_ARGUMENTS]
        try:
            nested = chat.listing_request(
                given.get("first"), given.get("after"), count=messages.reads.count, of_messages=True
            )
        except DomainError as error:
            raise Unsupported("the messages' arguments") from error
        return request, nested

    async def read(context: Context, arguments: dict[str, Any]) -> tuple[Any, Env]:
        listing = await _folded_listing(context, arguments, reads, requests)
        if listing is None:
            # As IsAuthenticated and `resolvers.chat.conversations` do, in the same order:
            # the viewer first, then the page size and the cursor.
            viewer = await context.viewer()
            request, nested = requests(arguments)
            async with context.reads() as on:
                listing = await chat.list_conversation_rows(on, viewer, request, nested)
        env = Env()
        if listing.messages is not None:
            for conversation_id, page in listing.messages.items():
                nodes = [_PlanMessage(*row) for row in page.items]
                env.messages[str(conversation_id)] = _PlanConnection(page, nodes)
        return _PlanConnection(
            listing.page, [to_conversation(row) for row in listing.page.items]
        ), env

    return read


async def _folded_listing(
    context: Context,
    arguments: dict[str, Any],
    reads: Reads,
    requests: Callable[[dict[str, Any]], tuple[PageRequest, PageRequest | None]],
) -> ConversationListing | None:
    """The list read in the viewer check's statement (one round trip), when the viewer is
    still to be checked, no count is asked for and every argument is sound; else None (see
    `_folded_page`)."""
    if reads.count or context.viewer_checked:
        return None
    try:
        request, nested = requests(arguments)
    except (DomainError, Unsupported):
        return None
    settings = context.state.settings

    async def read(
        on: DriverTarget, claims: AccessClaims
    ) -> tuple[SignedIn, ConversationListing] | None:
        return await chat.signed_in_conversation_listing(
            on,
            claims,
            request,
            nested,
            environment=settings.environment,
            defaults=context.state.feature_defaults,
        )

    return await context.signed_in_with(read)


class _PlanMessage:
    """What `to_message` builds of a listed message, as the plan reads it: the same attribute
    values (ids as text, the row's enum members), without a `MessageView` and a Strawberry
    object for each of a page's hundred messages. No sources: a selection of them is executed."""

    __slots__ = (
        "completed_at",
        "completion_tokens",
        "content",
        "conversation_id",
        "created_at",
        "error_code",
        "id",
        "model",
        "prompt_tokens",
        "role",
        "status",
    )

    def __init__(
        self,
        id: uuid.UUID,
        conversation_id: uuid.UUID,
        owner_id: uuid.UUID,
        role: MessageRole,
        content: str,
        status: MessageStatus,
        model: str | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        error_code: FailureCode | None,
        created_at: datetime,
        completed_at: datetime | None,
    ) -> None:
        self.id = str(id)
        self.conversation_id = str(conversation_id)
        self.role = role
        self.content = content
        self.status = status
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.error_code = None if error_code is None else str(error_code)
        self.created_at = created_at
        self.completed_at = completed_at


class _PlanEdge:
    """What a plan renders of an edge (the attributes of `Edge`), its cursor encoded only if
    the selection reads it."""

    __slots__ = ("_cursors", "_index", "node")

    def __init__(self, node: Any, cursors: Sequence[str], index: int) -> None:
        self.node = node
        self._cursors = cursors
        self._index = index

    @property
    def cursor(self) -> str:
        return self._cursors[self._index]


class _PlanPageInfo:
    """The attributes of `PageInfo`, the cursors encoded only if read."""

    __slots__ = ("_cursors", "has_next_page", "has_previous_page")

    def __init__(self, page: Page[Any]) -> None:
        self.has_next_page = page.has_next_page
        self.has_previous_page = page.has_previous_page
        self._cursors = page.cursors

    @property
    def start_cursor(self) -> str | None:
        return self._cursors[0] if self._cursors else None

    @property
    def end_cursor(self) -> str | None:
        return self._cursors[-1] if self._cursors else None


class _PlanConnection:
    """What `to_connection` builds, as the plan reads it: the same attribute values."""

    __slots__ = ("counted", "edges", "page_info")

    def __init__(self, page: Page[Any], nodes: list[Any]) -> None:
        self.edges = [_PlanEdge(node, page.cursors, i) for i, node in enumerate(nodes)]
        self.page_info = _PlanPageInfo(page)
        self.counted = page.total_count


def _list_defaulted(arguments: dict[str, Any]) -> bool:
    return all(arguments.get(name) is None for name in _LIST_DEFAULTED)


def _is_signed_in_field(graphql_field: GraphQLField, resolver: Callable[..., Any]) -> bool:
    definition = graphql_field.extensions.get(_DEFINITION)
    return (
        definition is not None
        and _resolver(definition) is resolver
        and list(definition.permission_classes) == signed_in
        and all(isinstance(e, PermissionExtension) for e in definition.extensions)
    )


def _compile_root(
    executor: RenderingExecutor, root_type: GraphQLObjectType, key: str, group: list[FieldDetails]
) -> _Root:
    name = group[0].node.name.value
    graphql_field = root_type.fields.get(name)
    if graphql_field is None:
        raise Unsupported(name)
    for detail in group:
        if detail.defer_usage is not None or detail.fragment_variable_values is not None:
            raise Unsupported("defer or fragment variables")
    compiler = _Compiler(executor)
    type_ = graphql_field.type
    if not isinstance(type_, GraphQLNonNull) or not isinstance(type_.of_type, GraphQLObjectType):
        raise Unsupported("root type")
    render = compiler.object(type_.of_type, group)
    if name == "me" and _is_signed_in_field(graphql_field, user_resolvers.me):
        if group[0].node.arguments:
            raise Unsupported("arguments")
        return _Root(key, group, graphql_field, _read_me, render)
    if name == "evaluations" and _is_signed_in_field(
        graphql_field, evaluation_resolvers.evaluations
    ):
        given = {argument.name.value for argument in group[0].node.arguments or ()}
        if not given <= _LIST_ARGUMENTS | _LIST_DEFAULTED:
            raise Unsupported("list arguments")
        return _Root(
            key, group, graphql_field, _list_reader(compiler.reads), render, _list_defaulted
        )
    if name == "conversations" and _is_signed_in_field(graphql_field, chat_resolvers.conversations):
        given = {argument.name.value for argument in group[0].node.arguments or ()}
        if not given <= _LIST_ARGUMENTS | _CONVERSATIONS_DEFAULTED:
            raise Unsupported("list arguments")
        reads = compiler.reads
        return _Root(
            key,
            group,
            graphql_field,
            _conversations_reader(reads),
            render,
            _conversations_defaulted,
            reads.messages,
        )
    raise Unsupported(name)


def _conversations_defaulted(arguments: dict[str, Any]) -> bool:
    return all(arguments.get(name) is None for name in _CONVERSATIONS_DEFAULTED)


class _HasVariable(Visitor):
    found = False

    def enter_variable(self, node: VariableNode, *args: Any) -> Any:
        self.found = True
        return self.BREAK

    @classmethod
    def in_(cls, node: Node) -> bool:
        visitor = cls()
        visit(node, visitor)
        return visitor.found


class _HasDirective(Visitor):
    found = False

    def enter_directive(self, node: DirectiveNode, *args: Any) -> Any:
        self.found = True
        return self.BREAK


def _has_directives(executor: RenderingExecutor) -> bool:
    """Whether the operation or any fragment of its document carries a directive."""
    for node in (executor.operation, *executor.fragment_definitions.values()):
        visitor = _HasDirective()
        visit(node, visitor)
        if visitor.found:
            return True
    return False


@dataclass(frozen=True)
class Plan:
    roots: tuple[_Root, ...]


# Plans by (schema, operation) identity; each entry keeps both alive, so an id is never reused
# while its entry stands. None: the operation is executed.
_plans: OrderedDict[tuple[int, int], tuple[object, object, Plan | None]] = OrderedDict()


def _compile(
    executor: RenderingExecutor, root_type: GraphQLObjectType, grouped: GroupedFieldSet
) -> Plan | None:
    if _has_directives(executor):
        return None
    try:
        roots = tuple(
            _compile_root(executor, root_type, key, group) for key, group in grouped.items()
        )
    except Unsupported:
        return None
    return Plan(roots) if roots else None


def plan_for(
    executor: RenderingExecutor, root_type: GraphQLObjectType, grouped: GroupedFieldSet
) -> Plan | None:
    """The operation's plan, compiled on first use; None when it must be executed."""
    operation: OperationDefinitionNode = executor.operation
    if operation.operation is not OperationType.QUERY:
        return None
    manager = executor.middleware_manager
    if manager is not None and manager.middlewares:
        return None
    identity = (id(executor.schema), id(operation))
    entry = _plans.get(identity)
    if entry is not None and entry[0] is executor.schema and entry[1] is operation:
        _plans.move_to_end(identity)
        return entry[2]
    plan = _compile(executor, root_type, grouped)
    _plans[identity] = (executor.schema, operation, plan)
    if len(_plans) > _PLANS_KEPT:
        _plans.popitem(last=False)
    return plan


def compiled_reads_enabled(context: object) -> bool:
    return isinstance(context, Context) and context.state.settings.compiled_reads


class PlanOperation(Protocol):
    """What running a plan reads of its operation: an executor, or a prepared read."""

    @property
    def context_value(self) -> Any: ...

    @property
    def variable_values(self) -> Any: ...

    def handle_field_error(
        self,
        raw_error: Exception,
        return_type: GraphQLOutputType,
        field_details_list: list[FieldDetails],
        path: Path,
    ) -> None: ...


async def run_plan(
    executor: PlanOperation,
    plan: Plan,
    root_type: GraphQLObjectType,
    execute: Callable[[], Any],
) -> dict[str, Any]:
    """The data of the operation; ``execute`` runs graphql-core's execution instead."""
    context = executor.context_value
    assert isinstance(context, Context)
    given: list[dict[str, Any]] = []
    for root in plan.roots:
        try:
            arguments = root.arguments(executor)
        except Exception:  # execution reports it, located at its field
            return await _executed(executor, execute)
        if not root.accepts(arguments):
            return await _executed(executor, execute)
        given.append(arguments)
    if not context.is_websocket:
        context.read_only()
    data: dict[str, Any] = {}
    for root, arguments in zip(plan.roots, given, strict=True):
        try:
            value, env = await root.read(context, arguments)
        except Unsupported:
            return await _executed(executor, execute)
        except Exception as error:
            if len(plan.roots) > 1:
                return await _executed(executor, execute)
            # Located and raised as graphql-core does for a failing non-null root field.
            path = Path(None, root.key, root_type.name)
            executor.handle_field_error(error, root.field.type, root.details, path)
            raise
        try:
            data[root.key] = root.render(value, env)
        except Exception:  # Unsupported, or anything rendering did not expect
            return await _executed(executor, execute)
    context.answered_by_plan = True
    return data


async def _executed(executor: PlanOperation, execute: Callable[[], Any]) -> dict[str, Any]:
    result = execute()
    if inspect.isawaitable(result):
        result = await result
    data: dict[str, Any] = result
    return data


class CompiledReadsExecutor(RenderingExecutor):
    """The schema's executor: compiled reads (above) and rendered subscription events."""

    def execute_collected_root_fields(
        self,
        root_type: GraphQLObjectType,
        root_value: Any,
        grouped_field_set: GroupedFieldSet,
        serially: bool,
        new_defer_usages: Sequence[Any],
    ) -> Any:
        def execute() -> Any:
            return super(CompiledReadsExecutor, self).execute_collected_root_fields(
                root_type, root_value, grouped_field_set, serially, new_defer_usages
            )

        if not new_defer_usages and compiled_reads_enabled(self.context_value):
            plan = plan_for(self, root_type, grouped_field_set)
            if plan is not None:
                return run_plan(self, plan, root_type, execute)
        return execute()


def compiles(
    schema: GraphQLSchema,
    document: DocumentNode,
    *,
    operation_name: str | None = None,
    variables: dict[str, Any] | None = None,
) -> bool:
    """Whether an operation with these variables is answered from a plan (unless what it reads
    makes the plan give way, see the module's docstring)."""
    executor = CompiledReadsExecutor.build(
        schema, document, raw_variable_values=variables, operation_name=operation_name
    )
    if isinstance(executor, list):  # the variables do not fit: nothing runs
        return False
    assert isinstance(executor, CompiledReadsExecutor)
    root_type = schema.get_root_type(executor.operation.operation)
    if root_type is None:
        return False
    collected = collect_fields(
        schema, executor.fragments, executor.variable_values, root_type, executor.operation
    )
    if collected.new_defer_usages:
        return False
    plan = plan_for(executor, root_type, collected.grouped_field_set)
    if plan is None:
        return False
    try:
        return all(root.accepts(root.arguments(executor)) for root in plan.roots)
    except GraphQLError:
        return False
