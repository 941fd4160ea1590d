"""A planned subscription's frames are the same whether its events go through Strawberry's
per-result pipeline or are read and rendered by the websocket handler itself.

Every case runs one selection over one script of events twice through ``TransportWSHandler``
over an in-memory ASGI websocket: once with the handler reading events directly, once with
every event going through the pipeline. The frames sent (``next``, ``error`` and ``complete``,
byte for byte and in order) must be identical. The subscription fields yield the real chat
event types from a script; the schema has ragstream's extensions (error contract, limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from typing import Annotated, Any, cast

import pytest
import strawberry
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.extensions import SchemaExtension
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import Operation

from ragstream.domain.errors import NotFound
from ragstream.schema import RagstreamSchema, build_schema
from ragstream.schema.chat.types import ChatEvent, SendMessageInput, TokenDelta
from ragstream.schema.context import Context
from ragstream.schema.rendering import RenderingExecutor
from ragstream.schema.root import Query
from ragstream.settings import Settings
from ragstream.view import GraphQLView
from ragstream.websocket import TransportWSHandler, results_untouched
from tests.test_chat_rendering import ANSWER_ID, CASES, EVENTS

REQUEST_ID = "direct-frames-test"


class Broken(Exception):
    """Raised by a script mid-stream: the client must see it masked."""


@dataclass
class Script:
    """What the subscription yields; an exception in it is raised instead of yielded."""

    items: list[object]
    closed: bool = False
    started: asyncio.Event = field(default_factory=asyncio.Event)
    hold: asyncio.Event | None = None  # when set: wait for it after the items
    sent: asyncio.Event = field(default_factory=asyncio.Event)  # the items were all taken


@dataclass
class ScriptContext:
    """What the script's resolvers read; the error contract reads the request id."""

    script: Script
    request_id: str = REQUEST_ID


async def _play(info: strawberry.Info[ScriptContext, None]) -> AsyncGenerator[ChatEvent, None]:
    script = info.context.script
    script.started.set()
    try:
        for item in script.items:
            if isinstance(item, Exception):
                raise item
            yield cast("ChatEvent", item)
        script.sent.set()
        if script.hold is not None:
            await script.hold.wait()
    finally:
        script.closed = True


@strawberry.type
class ScriptedSubscription:
    @strawberry.subscription
    async def chat(
        self, info: strawberry.Info[ScriptContext, None], input: SendMessageInput
    ) -> AsyncGenerator[ChatEvent, None]:
        async for event in _play(info):
            yield event

    @strawberry.subscription
    async def message_stream(
        self,
        info: strawberry.Info[ScriptContext, None],
        message_id: strawberry.ID,
        from_offset: Annotated[int | None, strawberry.argument()] = 0,
    ) -> AsyncGenerator[ChatEvent, None]:
        async for event in _play(info):
            yield event


class CountingSchema(RagstreamSchema):
    """Counts the results Strawberry's pipeline handles."""

    handled = 0

    async def _handle_execution_result(self, *args: Any, **kwargs: Any) -> Any:
        CountingSchema.handled += 1
        return await super()._handle_execution_result(*args, **kwargs)


@cache
def _schema() -> CountingSchema:
    ragstream = build_schema(Settings(introspection=True))
    return CountingSchema(
        query=Query,
        subscription=ScriptedSubscription,
        extensions=ragstream.extensions,
        config=ragstream.config,
        execution_context_class=RenderingExecutor,
    )


class _View:
    encode_json = GraphQLView.encode_json


class PipelineHandler(TransportWSHandler):
    direct_events = False


@dataclass
class Run:
    frames: list[str]
    handled: int  # results through the pipeline
    closed: bool


def _handler(handler_class: type[TransportWSHandler], script: Script, frames: list[str]) -> Any:
    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError

    async def send(message: Message) -> None:
        assert message["type"] == "websocket.send"
        frames.append(message["text"])

    ws = WebSocket({"type": "websocket", "path": "/graphql", "headers": []}, receive, send)
    ws.client_state = ws.application_state = WebSocketState.CONNECTED
    view = cast("Any", _View())
    return handler_class(
        view,
        ASGIWebSocketAdapter(view, ws, ws),
        cast("Context", ScriptContext(script)),
        None,
        _schema(),
        timedelta(seconds=10),
    )


def _start(handler: Any, query: str, variables: dict[str, Any] | None) -> Operation[Any, Any]:
    operation = Operation(handler, "op-1", query, variables, None)
    operation.task = asyncio.create_task(handler.run_operation(operation))
    handler.operations[operation.id] = operation
    return operation


async def _run(
    handler_class: type[TransportWSHandler],
    query: str,
    variables: dict[str, Any] | None,
    items: list[object],
) -> Run:
    script = Script(list(items))
    frames: list[str] = []
    operation = _start(_handler(handler_class, script, frames), query, variables)
    CountingSchema.handled = 0
    assert operation.task is not None
    await asyncio.wait_for(operation.task, timeout=30)
    return Run(frames, CountingSchema.handled, script.closed)


async def _both(query: str, variables: dict[str, Any] | None, items: list[object]) -> Run:
    direct = await _run(TransportWSHandler, query, variables, items)
    pipeline = await _run(PipelineHandler, query, variables, items)

    assert direct.frames == pipeline.frames
    # The pipeline handled every frame but the complete; both closed the script alike.
    completed = pipeline.frames[-1] == '{"id":"op-1","type":"complete"}'
    assert pipeline.handled == len(pipeline.frames) - completed
    assert direct.closed == pipeline.closed
    return direct


BROKEN_DELTA = TokenDelta(message_id=ANSWER_ID, offset=0, delta=None)  # type: ignore[arg-type]
SCRIPTS: dict[str, list[object]] = {
    "events": EVENTS,
    "unrenderable event in the middle": [*EVENTS[:3], BROKEN_DELTA, *EVENTS[3:]],
    "failure in the middle": [*EVENTS[:4], Broken("provider text, never shown")],
    "domain error in the middle": [*EVENTS[:3], NotFound("message")],
    "only the first event": EVENTS[:1],
}


@pytest.mark.parametrize("script", list(SCRIPTS), ids=list(SCRIPTS))
@pytest.mark.parametrize(("query", "variables", "_"), CASES)
async def test_frames_are_identical_on_both_paths(
    query: str, variables: dict[str, Any] | None, _: bool, script: str
) -> None:
    await _both(query, variables, SCRIPTS[script])


async def test_events_after_the_first_skip_the_pipeline() -> None:
    run = await _both(CASES[0][0], None, EVENTS)

    assert run.handled == 1
    assert [json.loads(f)["type"] for f in run.frames] == ["next"] * len(EVENTS) + ["complete"]


async def test_a_selection_with_a_resolver_goes_through_the_pipeline() -> None:
    query = (
        'subscription { chat(input: {conversationId: "c", content: "q"}) { '
        "... on SourcesRetrieved { sources { document { id } } } ... on TokenDelta { delta } } }"
    )
    run = await _both(query, None, EVENTS)

    assert run.handled == len(EVENTS)


async def test_what_the_plan_cannot_render_is_executed_and_the_rest_rendered() -> None:
    query = CASES[0][0]
    run = await _both(query, None, SCRIPTS["unrenderable event in the middle"])

    # The first event and the broken one went through the pipeline.
    assert run.handled == 2
    broken = json.loads(run.frames[3])["payload"]
    assert broken["data"] is None
    assert broken["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert [json.loads(f)["type"] for f in run.frames[4:]] == ["next"] * 6 + ["complete"]


async def test_a_failure_mid_stream_is_masked_then_completes() -> None:
    run = await _both(CASES[0][0], None, SCRIPTS["failure in the middle"])

    *_, failed, complete = (json.loads(f) for f in run.frames)
    assert failed["payload"]["errors"][0]["message"] == "Internal server error"
    assert failed["payload"]["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert "provider text" not in run.frames[-2]
    assert complete == {"id": "op-1", "type": "complete"}


async def test_a_domain_error_mid_stream_keeps_its_code() -> None:
    run = await _both(CASES[0][0], None, SCRIPTS["domain error in the middle"])

    failed = json.loads(run.frames[-2])
    assert failed["payload"]["errors"][0]["extensions"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize("handler_class", [TransportWSHandler, PipelineHandler])
async def test_a_complete_from_the_client_cancels_and_closes_the_source(
    handler_class: type[TransportWSHandler],
) -> None:
    script = Script(list(EVENTS[:4]), hold=asyncio.Event())
    frames: list[str] = []
    handler = _handler(handler_class, script, frames)
    operation = _start(handler, CASES[0][0], None)
    await asyncio.wait_for(script.sent.wait(), timeout=30)

    await handler.handle_complete({"id": operation.id, "type": "complete"})
    assert operation.task is not None
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(operation.task, timeout=30)

    assert operation.task.cancelled()
    assert script.closed
    assert len(frames) == 4  # no complete is sent for an operation the client completed
    assert operation.id not in handler.operations


def test_the_direct_path_is_on_for_ragstream_schemas() -> None:
    contract_only = Settings(metrics=False, log_requests=False)
    observing = Settings(metrics=True, log_requests=True)
    assert not contract_only.observe_operations
    assert observing.observe_operations
    assert results_untouched(build_schema(contract_only))
    assert results_untouched(build_schema(observing))
    assert results_untouched(_schema())


class Stamped(SchemaExtension):
    """Adds to every result: no result may skip it."""

    def get_results(self) -> dict[str, Any]:
        return {"stamp": 1}


async def test_an_extension_that_adds_to_results_keeps_every_event_in_the_pipeline() -> None:
    stamped = CountingSchema(
        query=Query,
        subscription=ScriptedSubscription,
        extensions=[*_schema().extensions, Stamped],
        config=_schema().config,
        execution_context_class=RenderingExecutor,
    )
    assert not results_untouched(stamped)
    script = Script(list(EVENTS))
    frames: list[str] = []
    handler = _handler(TransportWSHandler, script, frames)
    handler.schema = stamped
    operation = _start(handler, CASES[0][0], None)
    CountingSchema.handled = 0
    assert operation.task is not None
    await asyncio.wait_for(operation.task, timeout=30)

    assert CountingSchema.handled == len(EVENTS)
    assert all(json.loads(f)["payload"]["extensions"] == {"stamp": 1} for f in frames[:-1])
