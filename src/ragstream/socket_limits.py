"""Websocket limits that hold before any message is parsed: message size and open sockets.

- A message longer than ``ws_max_message_bytes`` (default: the HTTP body limit) closes the socket
  with 1009 (message too big) before it is decoded. ``ragstream serve`` also gives uvicorn the
  same limit, so a larger frame is refused while it is read instead of after.
- Open sockets are counted per client address (checked on connect) and per signed-in user
  (checked at ``connection_init``); one too many is closed with 4429 ("Too many open sockets").
"""

from __future__ import annotations

import uuid
from collections import Counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MESSAGE_TOO_BIG = 1009
TOO_BIG = "Message too big"
TOO_MANY_SOCKETS = 4429
TOO_MANY_SOCKETS_REASON = "Too many open sockets"
SUBPROTOCOL = "graphql-transport-ws"


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
    def __init__(self, app: ASGIApp, *, registry: SocketRegistry, max_message_bytes: int) -> None:
        self.app = app
        self.registry = registry
        self.max_message_bytes = max_message_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        if not self.registry.open_address(address):
            await _refuse(scope, receive, send)
            return
        closed = False

        async def limited_receive() -> Message:
            nonlocal closed
            message = await receive()
            if message["type"] == "websocket.receive" and _size_over(
                message, self.max_message_bytes
            ):
                closed = True
                await send(
                    {
                        "type": "websocket.close",
                        "code": MESSAGE_TOO_BIG,
                        "reason": "Message too big",
                    }
                )
                return {"type": "websocket.disconnect", "code": MESSAGE_TOO_BIG}
            return message

        async def guarded_send(message: Message) -> None:
            if not closed:  # the socket was closed here; the app has not noticed yet
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        finally:
            self.registry.close_address(address)


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
