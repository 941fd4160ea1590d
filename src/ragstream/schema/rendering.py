"""Subscription events rendered from a plan instead of executed field by field.

graphql-core executes a subscription's selection once per event and per subscriber: for a chat
answer that is one execution per token and per socket. Most of that work repeats itself, since
the selection does not change while the subscription lives. ``RenderingExecutor`` works out once,
when the subscription starts, how its selection renders each event type (graphql-core's own
``collect_fields`` decides which fields apply, so aliases, ``__typename``, fragments, inline
fragments and ``@skip``/``@include`` with variables mean exactly what they mean to execution).
Each event is then rendered by reading its attributes and serializing its leaves with the
schema's own scalars and enums; subscribers whose selections compile to the same plan share the
plan, and an event made only of leaves is rendered once for all of them.

Anything the plan cannot reproduce exactly is executed by graphql-core as before: a field with a
resolver, arguments, permissions or field extensions, schema extensions that wrap resolvers,
``@defer``, and any value that would make execution report an error (a null in a non-null
field, a value of a type the union does not know).

The result is a ``RenderedData``: a plain ``dict`` to everything that reads it, which also
carries its JSON text so the websocket handler sends it without encoding it again.

A subscription whose every event type renders from its plan can skip the per-event pipeline
altogether (Strawberry's result handling and extension hooks, graphql-core's mapping of the
stream): a websocket operation that asks for it (``wanting_direct_events``) gets the
subscription's source as ``DirectEvents`` and reads and renders its events itself. Whatever the
plan cannot render, the source's end and its errors are handed back to the pipeline, which then
treats them exactly as it would have.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from contextvars import ContextVar
from json.encoder import (  # type: ignore[attr-defined]  # the C encoder has no stubs
    c_make_encoder,
    encode_basestring_ascii,
)
from typing import Any, TypeVar, cast

from graphql import (
    ExecutionResult,
    GraphQLEnumType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLUnionType,
    OperationType,
    Undefined,
)
from graphql.execution import Executor
from graphql.execution.collect_fields import (
    FieldDetails,
    collect_fields,
    collect_subfields,
)
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types.base import StrawberryObjectDefinition

T = TypeVar("T")

_DEFINITION = "strawberry-definition"
# Plans shared by subscriptions whose selections compile alike, and the events rendered once.
_PLANS_KEPT = 256
_EVENTS_KEPT = 1024


_COMPACT = json.JSONEncoder(separators=(",", ":"))
# json.dumps builds an encoder, and the encoder its C iterator, on every call (~4 µs, more than
# the encoding of a token event); this one is built once. Without a check for circular
# references: rendered data is made of fresh dicts and lists.
_chunks = (
    None
    if c_make_encoder is None
    else c_make_encoder(
        None, _COMPACT.default, encode_basestring_ascii, None, ":", ",", False, False, True
    )
)


def encode(data: object) -> str:
    """Compact JSON text, exactly as ``json.dumps(data, separators=(",", ":"))`` writes it."""
    if _chunks is None:
        return _COMPACT.encode(data)
    return "".join(_chunks(data, 0))


def next_head(operation_id: str) -> str:
    """What comes before the data in an operation's ``next`` messages (see next_text)."""
    return f'{{"id":{encode(operation_id)},"type":"next","payload":{{"data":'


def next_text(operation_id: str, data: RenderedData) -> str:
    """A graphql-transport-ws ``next`` message with only data, as the view would encode it."""
    return f"{next_head(operation_id)}{data.text}}}}}"


class RenderedData(dict[str, Any]):
    """An event's data, and its JSON text computed once."""

    __slots__ = ("text",)

    def __init__(self, data: dict[str, Any], text: str) -> None:
        super().__init__(data)
        self.text = text


class Unsupported(Exception):
    """The plan cannot reproduce what execution would produce; execute instead."""


# A compiled selection: one entry per response key, in response order.
#   ("typename", key, type name)
#   ("leaf", key, attribute, serialize, nullable)
#   ("object", key, attribute, nullable, selection)
#   ("list", key, attribute, nullable, item nullable, item serialize or None, item selection)
Entry = tuple[Any, ...]
Selection = tuple[Entry, ...]


def _attribute(parent: GraphQLObjectType, name: str) -> str:
    """The Python attribute a plain field reads, or Unsupported for anything that resolves."""
    field = parent.fields[name]
    definition = field.extensions.get(_DEFINITION)
    if (
        definition is None
        or field.args
        or definition.base_resolver is not None
        or definition.permission_classes
        or definition.extensions
    ):
        raise Unsupported(name)
    return cast("str", definition.python_name)


class _Compiler:
    def __init__(self, executor: Executor[Any]) -> None:
        self.executor = executor

    def _check(self, details: Iterable[FieldDetails], *, root: bool = False) -> None:
        for detail in details:
            if detail.defer_usage is not None or detail.fragment_variable_values is not None:
                raise Unsupported("defer or fragment variables")
            # The root field's arguments were spent on starting the subscription; for each
            # event it only hands the event on.
            if detail.node.arguments and not root:
                raise Unsupported("arguments")

    def root(self, subscription: GraphQLObjectType) -> tuple[str, list[FieldDetails]]:
        e = self.executor
        collected = collect_fields(
            e.schema, e.fragments, e.variable_values, subscription, e.operation
        )
        if collected.new_defer_usages or len(collected.grouped_field_set) != 1:
            raise Unsupported("root")
        ((key, details),) = collected.grouped_field_set.items()
        return key, details

    def selection(self, parent: GraphQLObjectType, details: list[FieldDetails]) -> Selection:
        e = self.executor
        collected = collect_subfields(
            e.schema, e.fragments, e.variable_values, e.operation, parent, details
        )
        if collected.new_defer_usages:
            raise Unsupported("defer")
        entries: list[Entry] = []
        for key, group in collected.grouped_field_set.items():
            self._check(group)
            name = group[0].node.name.value
            if name == "__typename":
                entries.append(("typename", key, parent.name))
                continue
            if name not in parent.fields:
                raise Unsupported(name)
            attribute = _attribute(parent, name)
            entries.append(self._entry(key, attribute, parent.fields[name].type, group))
        return tuple(entries)

    def _entry(
        self, key: str, attribute: str, type_: GraphQLOutputType, group: list[FieldDetails]
    ) -> Entry:
        nullable = not isinstance(type_, GraphQLNonNull)
        inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
        if isinstance(inner, GraphQLScalarType | GraphQLEnumType):
            return ("leaf", key, attribute, inner.serialize, nullable)
        if isinstance(inner, GraphQLObjectType):
            return ("object", key, attribute, nullable, self.selection(inner, group))
        if isinstance(inner, GraphQLList):
            item = inner.of_type
            item_nullable = not isinstance(item, GraphQLNonNull)
            item = item.of_type if isinstance(item, GraphQLNonNull) else item
            if isinstance(item, GraphQLScalarType | GraphQLEnumType):
                return ("list", key, attribute, nullable, item_nullable, item.serialize, None)
            if isinstance(item, GraphQLObjectType):
                selection = self.selection(item, group)
                return ("list", key, attribute, nullable, item_nullable, None, selection)
        raise Unsupported(key)


def _leaf(serialize: Callable[[Any], Any], value: object) -> Any:
    try:
        out = serialize(value)
    except Exception as error:  # execution reports it as a field error
        raise Unsupported("serialization") from error
    if out is None or out is Undefined:
        raise Unsupported("serialized to nothing")
    return out


def _value(entry: Entry, source: object) -> Any:
    kind = entry[0]
    if kind == "typename":
        return entry[2]
    value = getattr(source, entry[2])
    if value is None:
        if not entry[-1 if kind == "leaf" else 3]:
            raise Unsupported("null in a non-null field")
        return None
    if kind == "leaf":
        return _leaf(entry[3], value)
    if kind == "object":
        return _render(entry[4], value)
    _, _, _, _, item_nullable, serialize, selection = entry
    items: list[Any] = []
    for item in value:
        if item is None:
            if not item_nullable:
                raise Unsupported("null in a non-null list item")
            items.append(None)
        elif selection is None:
            items.append(_leaf(serialize, item))
        else:
            items.append(_render(selection, item))
    return items


def _render(selection: Selection, source: object) -> dict[str, Any]:
    return {entry[1]: _value(entry, source) for entry in selection}


class Plan:
    """How one subscription selection renders each event type of its root field."""

    def __init__(self, key: str, by_type: dict[str, Selection | None]) -> None:
        self.key = key
        self.by_type = by_type
        # Event types whose selection reads leaves only: their events are remembered by value.
        self.flat = {
            name
            for name, selection in by_type.items()
            if selection is not None and all(e[0] in ("typename", "leaf") for e in selection)
        }
        self.rendered: OrderedDict[tuple[Any, ...], RenderedData] = OrderedDict()
        # Every event type renders from the plan: no event needs executing, unless its values
        # do (a null in a non-null field), which render() answers with None.
        self.complete = all(selection is not None for selection in by_type.values())

    def render(self, event: object, type_name: str) -> RenderedData | None:
        selection = self.by_type.get(type_name)
        if selection is None:
            return None
        memo: tuple[Any, ...] | None = None
        if type_name in self.flat:
            memo = (type_name, *(getattr(event, e[2]) for e in selection if e[0] == "leaf"))
            try:
                done = self.rendered.get(memo)
            except TypeError:  # a value that cannot be hashed: render it every time
                memo = done = None
            if done is not None:
                return done
        try:
            data = {self.key: _render(selection, event)}
        except Unsupported:
            return None
        rendered = RenderedData(data, encode(data))
        if memo is not None:
            self.rendered[memo] = rendered
            if len(self.rendered) > _EVENTS_KEPT:
                self.rendered.popitem(last=False)
        return rendered


_plans: OrderedDict[tuple[str, tuple[tuple[str, Selection | None], ...]], Plan] = OrderedDict()


def _shared(key: str, by_type: dict[str, Selection | None]) -> Plan:
    identity = (key, tuple(sorted(by_type.items(), key=lambda item: item[0])))
    try:
        plan = _plans.get(identity)
    except TypeError:  # a serializer that cannot be hashed: keep the plan to itself
        return Plan(key, by_type)
    if plan is None:
        plan = _plans[identity] = Plan(key, by_type)
        if len(_plans) > _PLANS_KEPT:
            _plans.popitem(last=False)
    return plan


def compile_plan(executor: Executor[Any]) -> Plan | None:
    """The plan of a subscription executor's selection, or None to execute every event."""
    manager = executor.middleware_manager
    subscription = executor.schema.subscription_type
    if (manager is not None and manager.middlewares) or subscription is None:
        return None
    compiler = _Compiler(executor)
    try:
        key, details = compiler.root(subscription)
        compiler._check(details, root=True)
        name = details[0].node.name.value
        root_field = subscription.fields.get(name)
        if root_field is None:
            return None
        field_type = root_field.type
        inner = field_type.of_type if isinstance(field_type, GraphQLNonNull) else field_type
        if isinstance(inner, GraphQLUnionType):
            members = list(inner.types)
        elif isinstance(inner, GraphQLObjectType):
            members = [inner]
        else:
            return None
    except Unsupported:
        return None
    by_type: dict[str, Selection | None] = {}
    for member in members:
        try:
            by_type[member.name] = compiler.selection(member, details)
        except Unsupported:
            by_type[member.name] = None
    return _shared(key, by_type)


def _type_name(event: object) -> str | None:
    definition = getattr(type(event), "__strawberry_definition__", None)
    if not isinstance(definition, StrawberryObjectDefinition):
        return None
    return definition.name


class DirectEvents:
    """A planned subscription's source, read either by the pipeline or by its consumer.

    The pipeline (graphql-core's mapping of the source to results) iterates this object; a
    consumer that renders the events itself calls ``next_rendered`` instead. What the consumer
    does not render is kept and handed to the pipeline's next read: an event the plan cannot
    render (executed as before), the end of the source, or the error it raised (which the
    pipeline reports and masks as it always does).
    """

    _END: Any = object()

    def __init__(self, source: AsyncIterable[Any], plan: Plan) -> None:
        self._source = source
        self._items: AsyncIterator[Any] = aiter(source)
        self._plan = plan
        self._handed: tuple[Any, BaseException | None] | None = None

    def __aiter__(self) -> DirectEvents:
        return self

    async def __anext__(self) -> Any:
        handed = self._handed
        if handed is None:
            return await anext(self._items)
        self._handed = None
        item, error = handed
        if error is not None:
            raise error
        if item is self._END:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()

    async def next_rendered(self) -> RenderedData | None:
        """The next event rendered, or None once something was handed back to the pipeline."""
        try:
            event = await anext(self._items)
        except StopAsyncIteration:
            self._handed = (self._END, None)
            return None
        except Exception as error:  # the pipeline turns it into the operation's error
            self._handed = (None, error)
            return None
        name = _type_name(event)
        rendered = None if name is None else self._plan.render(event, name)
        if rendered is None:
            self._handed = (event, None)
        return rendered


class DirectEventsWanted:
    """Where a subscription started under ``wanting_direct_events`` leaves its DirectEvents."""

    events: DirectEvents | None = None


_wanted: ContextVar[DirectEventsWanted | None] = ContextVar("direct_events", default=None)


def wanting_direct_events() -> DirectEventsWanted:
    """Ask for the DirectEvents of a subscription started from now on in this task."""
    wanted = DirectEventsWanted()
    _wanted.set(wanted)
    return wanted


class _RenderedEvent:
    """Stands in for a per-event executor whose result is already known."""

    def __init__(self, data: RenderedData) -> None:
        self.data = data

    def execute_operation(self, serially: bool | None = None) -> ExecutionResult:
        return ExecutionResult(data=self.data)


class RenderingExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor; subscription events are rendered from a plan when possible."""

    _plan: Plan | None = None
    _planned = False

    def _plan_once(self) -> Plan | None:
        if not self._planned:
            self._planned = True
            self._plan = compile_plan(self)
        return self._plan

    def cancellable_iterable(self, iterable: AsyncIterable[T]) -> AsyncIterable[T]:
        iterable = super().cancellable_iterable(iterable)
        wanted = _wanted.get()
        if (
            wanted is None
            or wanted.events is not None
            or self.operation.operation is not OperationType.SUBSCRIPTION
        ):
            return iterable
        plan = self._plan_once()
        if plan is None or not plan.complete:
            return iterable
        wanted.events = DirectEvents(iterable, plan)
        return cast("AsyncIterable[T]", wanted.events)

    def build_per_event_executor(self, payload: Any) -> Executor[Any]:
        plan = self._plan_once()
        if plan is not None:
            name = _type_name(payload)
            rendered = None if name is None else plan.render(payload, name)
            if rendered is not None:
                return cast("Executor[Any]", _RenderedEvent(rendered))
        return super().build_per_event_executor(payload)
