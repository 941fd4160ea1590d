"""The HTTP edge: request bodies are checked before GraphQL sees them, and every refusal (or
unexpected failure) answers JSON with ``extensions.code``; the request id middleware adds
``X-Request-ID``.

- JSON must be UTF-8, an object at the top (an array reaches the batch refusal) and at most
  ``max_json_depth`` levels deep, for POST bodies, GET ``variables`` / ``extensions``, multipart
  ``operations`` and websocket messages alike. Python's parser gives up on deep nesting with a
  RecursionError; here that is an ordinary malformed request.
- Text with a NUL character or an unpaired surrogate is refused in strings of every kind by
  ``StringGuard`` (schema/strings.py), before any resolver runs.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import orjson
from cross_web import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragstream.domain.errors import DomainError
from ragstream.schema.errors import MASKED_MESSAGE

logger = logging.getLogger("ragstream.errors")


class MalformedJSON(json.JSONDecodeError):
    """A body or message that is not acceptable JSON; a JSONDecodeError, so a websocket that
    sends one is closed with 4400 by the protocol handler."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, "", 0)
        self.reason = reason


def _shape(value: object, max_depth: int) -> tuple[bool, bool]:
    """Whether arrays and objects nest more than ``max_depth`` levels, and whether any value
    is a float, in one walk."""
    stack: list[tuple[object, int]] = [(value, 1)]
    floats = False
    while stack:
        item, depth = stack.pop()
        children: Any
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return True, floats
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            elif isinstance(child, float):
                floats = True
    return False, floats


# 19 digits or more in a row: possibly an integer beyond 64 bits (or a long fraction, which
# both parsers read alike).
_LONG_NUMBER = re.compile(r"\d{19}")
_LONG_NUMBER_BYTES = re.compile(rb"\d{19}")


def _long_number(data: str | bytes) -> bool:
    if isinstance(data, str):
        return _LONG_NUMBER.search(data) is not None
    return _LONG_NUMBER_BYTES.search(data) is not None


def decode_json(data: str | bytes, *, max_depth: int) -> object:
    """Parse one JSON document under the edge's rules; MalformedJSON says what is wrong."""
    strict = False
    try:
        # orjson is several times faster; what it refuses (or nests too deep for it) is
        # decided by the standard parser, whose rules and messages the edge has always had.
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        value, strict = _decode_strictly(data, max_depth), True
    deep, floats = _shape(value, max_depth)
    if floats and not strict and _long_number(data):
        # orjson reads an integer beyond 64 bits as a float; the standard parser keeps it.
        # Only a document with a float can hold one, so the text is searched only then.
        value = _decode_strictly(data, max_depth)
        deep, _ = _shape(value, max_depth)
    if not isinstance(value, dict | list):
        raise MalformedJSON("a GraphQL request must be a JSON object")
    if deep:
        raise MalformedJSON(f"JSON nested deeper than {max_depth} levels")
    return value


def _decode_strictly(data: str | bytes, max_depth: int) -> object:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedJSON("the request body is not valid UTF-8") from None
    try:
        value = json.loads(data)
    except RecursionError:
        raise MalformedJSON(f"JSON nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError:
        raise MalformedJSON("the request body is not valid JSON") from None
    return value


def error_body(message: str, code: str, **extensions: object) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code, **extensions}}]}


def http_error_response(exc: HTTPException) -> JSONResponse:
    """A transport-level refusal (bad body, method, content type) as a GraphQL error document."""
    code = "NOT_FOUND" if exc.status_code == 404 else "BAD_USER_INPUT"
    return JSONResponse(error_body(exc.reason, code), status_code=exc.status_code)


def domain_error_response(error: DomainError, status_code: int = 400) -> JSONResponse:
    extensions = {"field": error.field} if error.field is not None else {}
    return JSONResponse(
        error_body(error.message, error.code, **extensions), status_code=status_code
    )


class UnexpectedErrorMiddleware:
    """Anything that escapes the app on HTTP answers a masked JSON 500 and is logged once, with
    the request id (Starlette's own fallback is a plain-text page without one)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            request_id = scope.get("state", {}).get("request_id", "-")
            logger.exception("unexpected error (request %s) at the HTTP edge", request_id)
            if started:
                raise
            response = JSONResponse(
                error_body(MASKED_MESSAGE, "INTERNAL_SERVER_ERROR", requestId=request_id),
                status_code=500,
            )
            await response(scope, receive, send)
