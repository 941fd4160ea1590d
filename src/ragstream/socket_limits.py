"""Websocket limits that hold before any message is parsed: message size and open sockets.

- A message longer than ``ws_max_message_bytes`` (default: the HTTP body limit) closes the socket
  with 1009 (message too big) before it is decoded. ``ragstream serve`` also gives uvicorn the
  same limit, so a larger frame is refused while it is read instead of after.
- Open sockets are counted per client address (checked on connect) and per signed-in user
  (checked at ``connection_init``); one too many is closed with 4429 ("Too many open sockets").
- A slow reader: the server sends a message only while the socket's unsent data is under the
  transport's high-water mark (64 KiB), one message at a time whatever the number of operations
  on the socket (the transport lets every waiting sender through at once when it drains, so
  without the turn taking, 50 operations would each add a message to the backlog); the chat
  stream merges what arrives meanwhile into the next message (coalesced catch-up), so a reader
  that lags costs one pending message, not a queue. A message that still cannot be handed over
  after ``ws_send_timeout_seconds`` (its wait for its turn included) ends the socket's
  operations and closes it with 1008 ("Client too slow"). The close frame queues behind the
  unread data: a client that reads again gets it after that data; one that never does is ended
  by the transport's ping timeout (or after ``CLOSE_WAIT_SECONDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Awaitable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MESSAGE_TOO_BIG = 1009
TOO_BIG = "Message too big"
TOO_SLOW = 1008
TOO_SLOW_REASON = "Client too slow"
TOO_MANY_SOCKETS = 4429
TOO_MANY_SOCKETS_REASON = "Too many open sockets"
SUBPROTOCOL = "graphql-transport-ws"
# Longest wait for a slow reader's close frame to be handed over after its operations ended.
CLOSE_WAIT_SECONDS = 60.0


class SocketRegistry:
    """Open sockets per client address and per user, in this process."""

    def __init__(self, *, per_address: int, per_user: int) -> None:
        self.per_address = per_address
        self.per_user = per_user
        self._open: Counter[str] = Counter()

    def _enter(self, key: str, limit: int) -> bool:
        if self._open[key] >= limit:
            return False
        self._open[key] += 1
        return True

    def _leave(self, key: str) -> None:
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]

    def open_address(self, address: str) -> bool:
        return self._enter(f"address:{address}", self.per_address)

    def close_address(self, address: str) -> None:
        self._leave(f"address:{address}")

    def open_user(self, user_id: uuid.UUID) -> bool:
        return self._enter(f"user:{user_id}", self.per_user)

    def close_user(self, user_id: uuid.UUID) -> None:
        self._leave(f"user:{user_id}")

    def open_at(self, address: str) -> int:
        return self._open.get(f"address:{address}", 0)

    def open_for(self, user_id: uuid.UUID) -> int:
        return self._open.get(f"user:{user_id}", 0)


def _size_over(message: Message, limit: int) -> bool:
    text = message.get("text")
    if text is not None:
        # Characters first: the UTF-8 length is only counted when it could matter.
        return len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit)
    data = message.get("bytes")
    return data is not None and len(data) > limit


class WebSocketLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: SocketRegistry,
        max_message_bytes: int,
        send_timeout_seconds: float = 30.0,
        close_wait_seconds: float = CLOSE_WAIT_SECONDS,
    ) -> None:
        self.app = app
        self.registry = registry
        self.max_message_bytes = max_message_bytes
        self.send_timeout_seconds = send_timeout_seconds
        self.close_wait_seconds = close_wait_seconds

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself: an HTTP request gets the inner app's awaitable, so this
        # layer adds no frame to its every resumption.
        if scope["type"] != "websocket":
            return self.app(scope, receive, send)
        return self._websocket(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        address = client[0] if client else "unknown"
        if not self.registry.open_address(address):
            await _refuse(scope, receive, send)
            return
        socket = _Socket(receive, send, self.max_message_bytes, self.send_timeout_seconds)
        try:
            await self.app(scope, socket.receive, socket.send)
        finally:
            self.registry.close_address(address)
            await socket.finish(self.close_wait_seconds)


class _Socket:
    """One websocket's receive and send, with the size and slow-reader rules applied."""

    def __init__(self, receive: Receive, send: Send, max_bytes: int, send_timeout: float) -> None:
        self._receive = receive
        self._send = send
        self.max_bytes = max_bytes
        self.send_timeout = send_timeout
        self.closed_with: int | None = None  # set once this side closed the socket
        self._given_up = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None
        self._turn = asyncio.Lock()  # one message handed to the transport at a time
        # The messages under way (waiting for their turn or being handed over), oldest first:
        # when each started and the task sending it.
        self._since: list[float] = []
        self._senders: list[asyncio.Task[Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._overdue: set[asyncio.Task[Any]] = set()  # senders cancelled for the send timeout

    def _disconnect(self) -> Message:
        return {"type": "websocket.disconnect", "code": self.closed_with}

    async def receive(self) -> Message:
        if self.closed_with is not None:
            return self._disconnect()
        receiving = asyncio.ensure_future(self._receive())
        given_up = asyncio.ensure_future(self._given_up.wait())
        try:
            await asyncio.wait({receiving, given_up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            given_up.cancel()
            if not receiving.done():
                receiving.cancel()
        if not receiving.done() or receiving.cancelled():
            return self._disconnect()
        message = receiving.result()
        if message["type"] == "websocket.receive" and _size_over(message, self.max_bytes):
            self.closed_with = MESSAGE_TOO_BIG
            await self._send(
                {"type": "websocket.close", "code": MESSAGE_TOO_BIG, "reason": TOO_BIG}
            )
            return self._disconnect()
        return message

    async def send(self, message: Message) -> None:
        if self.closed_with is not None:
            return  # closed here; the app has not noticed yet
        if message["type"] != "websocket.send":
            await self._send(message)
            return
        # The server waits while the client has not read what it was sent before. The wait (its
        # turn included) is timed by one timer per socket, armed while a message is under way
        # and re-armed only when it fires: an `asyncio.timeout` per message cost ~10 µs.
        loop = asyncio.get_running_loop()
        self._since.append(loop.time())
        if self._timer is None:
            self._timer = loop.call_at(self._since[0] + self.send_timeout, self._check)
        task = asyncio.current_task()
        assert task is not None
        self._senders.append(task)
        try:
            async with self._turn:
                if self.closed_with is None:  # given up while this message waited its turn
                    await self._send(message)
        except asyncio.CancelledError:
            if task not in self._overdue:
                raise
            self._overdue.discard(task)
            if task.uncancel() > 0:  # also cancelled for another reason
                raise
            if self.closed_with is None:
                self._give_up()
        finally:
            index = self._senders.index(task)
            del self._senders[index], self._since[index]

    def _check(self) -> None:
        """The oldest message under way waited too long: its sender gives up on the socket (the
        messages queued behind it then see it closed)."""
        self._timer = None
        if not self._since:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._since[0] < self.send_timeout:
            self._timer = loop.call_at(self._since[0] + self.send_timeout, self._check)
            return
        self._overdue.add(self._senders[0])
        self._senders[0].cancel()

    def _give_up(self) -> None:
        self.closed_with = TOO_SLOW
        self._given_up.set()  # the app's pending receive answers "disconnected"
        # The close frame waits for the same backlog; the transport's ping timeout ends a
        # client that never reads again.
        self._closing = asyncio.create_task(self._close_when_writable())

    async def _close_when_writable(self) -> None:
        await self._send({"type": "websocket.close", "code": TOO_SLOW, "reason": TOO_SLOW_REASON})

    async def finish(self, close_wait_seconds: float) -> None:
        """Waits (bounded) for the close frame of a slow reader to be handed over."""
        if self._timer is not None:
            self._timer.cancel()
        if self._closing is None:
            return
        with contextlib.suppress(Exception):  # the client went away: nothing left to tell it
            async with asyncio.timeout(close_wait_seconds):
                await asyncio.shield(self._closing)
        if not self._closing.done():
            self._closing.cancel()
            with contextlib.suppress(BaseException):
                await self._closing


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept (so the client sees a close code, not a failed handshake), then close with 4429."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    accept: Message = {"type": "websocket.accept"}
    if SUBPROTOCOL in scope.get("subprotocols", ()):
        accept["subprotocol"] = SUBPROTOCOL
    await send(accept)
    await send(
        {"type": "websocket.close", "code": TOO_MANY_SOCKETS, "reason": TOO_MANY_SOCKETS_REASON}
    )
