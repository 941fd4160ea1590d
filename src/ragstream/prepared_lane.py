"""The prepared lane: a prepared read (schema/prepared.py) answered in front of the middleware.

A prepared read is the server's most frequent request and its cheapest; most of what it still
costs is the way in and out: seven middleware layers, the router and the view, each a call and
a resumption for every wait, each wrapping ``send``, for a request none of them changes. The
lane sits in front of them all (`App` in app.py) and does for such a request exactly what the
layers do, in one frame:

- the request id (`RequestLogMiddleware`: a sane incoming ``X-Request-ID`` or a new one, set for
  every log record made meanwhile) and the request's log line when it ends;
- the response headers the layers add, in their order: ``Vary: Origin`` (CORS, for a request
  without an ``Origin``), ``X-Content-Type-Options: nosniff``, ``X-Request-ID``;
- the body limit (the lane takes only a declared length under it).

The operation's metrics and its part of the log line are recorded by the prepared read itself,
as before. Whatever the lane cannot answer in those same bytes it leaves to the full stack, the
body it read replayed: another path or method, a request with an ``Origin`` (CORS), a body with
no declared length or a long one, any request the view would not prepare (see
`GraphQLView.may_prepare`), a document not prepared yet, a read that gives way, and any
exception before the response starts (the full stack then answers, and reports, as it always
does). The request keeps its id through the stack.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from ragstream.observability.logs import REQUEST_ID, STATUS_KEY, log_request, request_id_for

if TYPE_CHECKING:
    from ragstream.view import GraphQLView

logger = logging.getLogger("ragstream.errors")

# Longer bodies are left to the full stack: a prepared document is at most 16 KiB, and a body
# read here for nothing would be read twice.
_MAX_BODY = 64 * 1024
# Added, in this order, by CORSMiddleware (no Origin) and SecurityHeadersMiddleware.
_LAYER_HEADERS = ((b"vary", b"Origin"), (b"x-content-type-options", b"nosniff"))


class PreparedLane:
    def __init__(self, view: GraphQLView, *, max_body_bytes: int, log_requests: bool) -> None:
        self.view = view
        self.max_body = min(max_body_bytes, _MAX_BODY)
        self.log_requests = log_requests
        self.answered = 0  # requests answered here

    def takes(self, scope: Scope) -> bool:
        """Whether the request may be a prepared read this lane can answer (before its body)."""
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != "/graphql"
            or scope.get("root_path")
        ):
            return False
        length = b""
        for name, value in scope["headers"]:
            if name == b"origin":
                return False
            if name == b"content-length":
                length = value
        return length.isdigit() and int(length) <= self.max_body and self.view.may_prepare(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Answers the request, or returns what the full stack then receives (the body read
        here first)."""
        read: list[Message] = []
        body = b""
        while True:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":
                return _replay(read, receive)  # the client went away: the stack sees it
            body += message.get("body", b"")
            if len(body) > self.max_body:
                return _replay(read, receive)
            if not message.get("more_body", False):
                break
        state = scope.setdefault("state", {})
        request_id = state["request_id"] = request_id_for(scope)
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        given_way = False
        try:
            request = Request(scope, _replay(read, receive))
            try:
                response = await self.view.prepared_response(request, body)
            except Exception:  # the full stack runs it again, and reports what it finds
                logger.debug("a prepared read gave way to the full stack", exc_info=True)
                response = None
            if response is None:
                given_way = True
                scope[PREPARED_TRIED] = True
                return _replay(read, receive)
            headers = [
                *response.raw_headers,
                *_LAYER_HEADERS,
                (b"x-request-id", request_id.encode()),
            ]
            state[STATUS_KEY] = response.status_code
            start = {"type": "http.response.start", "status": response.status_code}
            try:
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": response.body})
            except Exception:
                # As UnexpectedErrorMiddleware reports a failure once the response started.
                logger.exception("unexpected error (request %s) at the HTTP edge", request_id)
                raise
            self.answered += 1
            return None
        finally:
            # As RequestLogMiddleware, whatever the outcome (a cancelled request: 500), unless
            # the full stack serves the request and writes its line.
            if self.log_requests and not given_way:
                log_request(scope, state, time.perf_counter() - started)
            REQUEST_ID.reset(token)


# Set on a request the lane tried and left to the stack: the view does not try it again.
PREPARED_TRIED = "ragstream.prepared_tried"


def _replay(read: list[Message], receive: Receive) -> Receive:
    """``receive`` giving the messages already read first."""
    waiting = list(read)

    async def replay() -> Message:
        if waiting:
            return waiting.pop(0)
        return await receive()

    return replay
