"""graphql-transport-ws with ragstream's rules on top of Strawberry's handler.

- A message that is not the protocol's shape (not an object, an id that is not a string, a
  subscribe without a query string) closes the socket with 4400; Strawberry only catches missing
  keys, so a JSON list or a string payload ended the connection with an internal error.
- One operation too many gets a per-operation error with ``extensions.code`` (RATE_LIMITED) and
  the socket stays up; Strawberry's own error had no code.
- A subscription event rendered from its plan (``schema/rendering.py``) is sent as the text
  rendered once for every subscriber of the same selection, not encoded again per socket.
- A subscription whose every event type renders from its plan is read here directly: after its
  first result, each event costs a rendering and a send, not a trip through Strawberry's
  per-result pipeline (``DirectEvents``). Only extension hooks known to act on errors alone may
  be skipped that way; events the plan cannot render, errors and the end go through the pipeline.
- A socket cannot outlive its access token: it is closed (4403) when the token expires, and the
  timer ends with the socket instead of lingering until the token's expiry.
- A user over the open-socket limit is closed with 4429 at ``connection_init`` (see
  socket_limits.py); a failure while accepting it (e.g. the database is down) closes with 1011
  and is logged with the request id, instead of ending the connection without a close code.
- A server too busy to check the viewer in time (no pooled database connection within the pool
  timeout) closes with 1013 "Try again later", WebSocket's code for a temporary overload, which
  clients treat as retryable (1011 is not); nothing was read or changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from datetime import UTC, datetime
from typing import Any, cast

import strawberry
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.websockets import WebSocketDisconnect
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.extensions import SchemaExtension
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.schema.base import BaseSchema
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    Message,
    SubscribeMessage,
)
from strawberry.types.execution import ExecutionResult, PreExecutionError

from ragstream.domain.errors import DomainError
from ragstream.persisted import wants_resolving
from ragstream.schema.context import Context, operation_scope
from ragstream.schema.errors import ErrorContract
from ragstream.schema.observed import ObserveOperations
from ragstream.schema.rendering import (
    DirectEvents,
    RenderedData,
    next_head,
    next_text,
    wanting_direct_events,
)
from ragstream.socket_limits import TOO_MANY_SOCKETS, TOO_MANY_SOCKETS_REASON

logger = logging.getLogger("ragstream.errors")

TOKEN_EXPIRED_CLOSE_CODE = 4403
INTERNAL_ERROR_CLOSE_CODE = 1011
BUSY_CLOSE_CODE = 1013
BUSY_CLOSE_REASON = "Try again later"
TOO_MANY_OPERATIONS = "too many operations in progress on this socket"


class TooManySockets(Exception):
    """The signed-in user already has as many open sockets as allowed."""


def well_formed(message: object) -> bool:
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return False
    kind = message["type"]
    if kind in ("subscribe", "complete") and not isinstance(message.get("id"), str):
        return False
    if kind == "subscribe":
        payload = message.get("payload")
        return (
            isinstance(payload, dict)
            and (isinstance(payload.get("query"), str) or persisted_only(payload))
            and isinstance(payload.get("variables"), dict | None)
            and isinstance(payload.get("operationName"), str | None)
            and isinstance(payload.get("extensions"), dict | None)
        )
    return True


def persisted_only(payload: dict[str, Any]) -> bool:
    """A subscribe that names its document by hash alone (Automatic Persisted Queries)."""
    extensions = payload.get("extensions")
    return (
        ("query" not in payload or payload["query"] is None)
        and isinstance(extensions, dict)
        and isinstance(extensions.get("persistedQuery"), dict)
    )


# Per-result hooks that only touch a result's errors (and note that results were streamed,
# which the first result, always sent through the pipeline, has done): a result that is data
# alone is the same with or without them.
_ERRORS_ONLY_HOOKS = {
    SchemaExtension.on_stream_result,
    ErrorContract.on_stream_result,
    ObserveOperations.on_stream_result,
}
_results_untouched: weakref.WeakKeyDictionary[BaseSchema, bool] = weakref.WeakKeyDictionary()


def results_untouched(schema: BaseSchema) -> bool:
    """Whether the schema's extensions leave a result without errors as it is."""
    known = _results_untouched.get(schema)
    if known is None:
        known = isinstance(schema, strawberry.Schema) and all(
            type(extension).on_stream_result in _ERRORS_ONLY_HOOKS
            and type(extension).get_results is SchemaExtension.get_results
            for extension in schema.get_extensions()
        )
        _results_untouched[schema] = known
    return known


class TransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    expiry_task: asyncio.Task[None] | None = None
    # Read planned subscriptions' events directly (see DirectEvents).
    direct_events = True

    async def handle(self) -> None:
        metrics = self.context.state.metrics
        metrics.websocket(1)
        try:
            await super().handle()
        finally:
            metrics.websocket(-1)

    async def handle_message(self, message: Message) -> None:
        if not well_formed(cast("object", message)):
            await self.handle_invalid_message("Failed to parse message")
            return
        await super().handle_message(message)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        try:
            await super().handle_connection_init(message)
        except TooManySockets:
            await self.websocket.close(code=TOO_MANY_SOCKETS, reason=TOO_MANY_SOCKETS_REASON)
            return
        except (PoolTimeout, TimeoutError):
            # Every pooled connection stayed busy for the pool timeout (or a new one could not
            # be opened in that time): the client may try again, as over HTTP (SERVER_BUSY).
            logger.warning(
                "websocket connection_init: database pool exhausted (request %s)",
                self.context.request_id,
            )
            await self.websocket.close(code=BUSY_CLOSE_CODE, reason=BUSY_CLOSE_REASON)
            return
        except Exception:
            logger.exception(
                "websocket connection_init failed (request %s)", self.context.request_id
            )
            await self.websocket.close(
                code=INTERNAL_ERROR_CLOSE_CODE, reason="Internal server error"
            )
            return
        claims = self.context.claims
        if self.connection_acknowledged and claims is not None and self.expiry_task is None:
            self.expiry_task = asyncio.create_task(self._close_at(claims.expires_at))

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        limit = self.max_subscriptions_per_connection
        if (
            self.connection_acknowledged
            and message["id"] not in self.operations
            and limit is not None
            and len(self.operations) >= limit
        ):
            error: dict[str, Any] = {
                "message": TOO_MANY_OPERATIONS,
                "extensions": {"code": "RATE_LIMITED", "limit": limit},
            }
            await self.send_message(
                cast("Message", {"id": message["id"], "type": "error", "payload": [error]})
            )
            return
        payload = message["payload"]
        extensions = payload.get("extensions")
        persisted = self.context.state.persisted
        if wants_resolving(persisted, extensions) and self.connection_acknowledged:
            # Strawberry passes no extensions on: the document is settled here.
            try:
                payload["query"] = cast("str", persisted.resolve(payload.get("query"), extensions))
            except DomainError as exc:
                refusal = {"message": exc.message, "extensions": {"code": exc.code}}
                await self.send_message(
                    cast("Message", {"id": message["id"], "type": "error", "payload": [refusal]})
                )
                return
        await super().handle_subscribe(message)

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        operation_scope()  # the operation's own task: one viewer check for all of it
        await super().run_operation(operation)

    async def send_message(self, message: Message) -> None:
        payload = cast("dict[str, Any]", message).get("payload")
        if message["type"] == "next" and isinstance(payload, dict) and len(payload) == 1:
            data = payload.get("data")
            adapter = self.websocket
            if isinstance(data, RenderedData) and isinstance(adapter, ASGIWebSocketAdapter):
                # The text the view's encoder would produce, around the event's own text.
                text = next_text(message["id"], data)
                try:
                    await adapter.ws.send_text(text)
                except WebSocketDisconnect as exc:
                    raise WebSocketDisconnected from exc
                return
        await super().send_message(message)

    async def _send_result_stream(
        self, operation: Operation[Context, None], result_source: Any
    ) -> None:
        # Strawberry's loop, with planned subscriptions' events sent as they are rendered.
        wanted = (
            wanting_direct_events()
            if self.direct_events and results_untouched(self.schema)
            else None
        )
        first = True
        async for result in result_source:
            if first and isinstance(result, PreExecutionError):
                await self._handle_pre_execution_error(operation, result)
                return
            if not isinstance(result, ExecutionResult):
                await self._reject_incremental_delivery(operation)
                return
            await operation.send_next(result)
            first = False
            if wanted is not None and wanted.events is not None:
                await self._send_direct(operation, wanted.events)

    async def _send_direct(self, operation: Operation[Context, None], events: DirectEvents) -> None:
        """Send rendered events until the source hands one back to the pipeline."""
        adapter = self.websocket
        assert isinstance(adapter, ASGIWebSocketAdapter)
        ws = adapter.ws
        head = next_head(operation.id)  # next_text's frame, its first part encoded once
        while (rendered := await events.next_rendered()) is not None:
            if operation.completed:
                continue
            try:
                await ws.send_text(f"{head}{rendered.text}}}}}")
            except WebSocketDisconnect as exc:
                raise WebSocketDisconnected from exc

    async def shutdown(self) -> None:
        if self.expiry_task is not None:
            self.expiry_task.cancel()
        try:
            await super().shutdown()
        finally:
            for release in self.context.on_close:
                release()

    async def _close_at(self, expires_at: datetime) -> None:
        await asyncio.sleep(max((expires_at - datetime.now(UTC)).total_seconds(), 0))
        with contextlib.suppress(RuntimeError, OSError):
            await self.websocket.close(code=TOKEN_EXPIRED_CLOSE_CODE, reason="Token expired")
