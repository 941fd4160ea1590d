"""HTTP/1.1 for long streamed responses, straight on asyncio's protocols: an httpx transport.

(httpx here is `httpx2`, the HTTP client the openai library is built on.) A streamed chat
completion is one small read per token for as long as the answer lasts. Through the default
transport every read climbs the connection-pool and stream layers, h11 and an anyio cancel
scope: about 100 µs of CPU per token, more than the rest of ragstream's work on it.
Here the socket is an `asyncio.Protocol`: httptools (the C parser uvicorn uses) decodes the
response as bytes arrive, the body pieces gather in a list, and the reader takes everything
gathered so far at once, woken at most once per read.

The openai client keeps building requests and turning statuses into errors: only the bytes on
the wire are handled here. Failures are httpx's own exceptions (connect errors and timeouts,
`ReadTimeout`, `RemoteProtocolError` for a connection that breaks mid-response), so callers see
what the default transport would raise. Proxies from the environment are httpx's business: it
routes those requests through its own proxy transports.

Idle keep-alive connections are kept per origin (up to `max_idle` for `keepalive_expiry`
seconds); a request whose reused connection turns out closed before any response byte is sent
once more on a fresh one.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import AsyncIterator, Callable

import httptools
import httpx2 as httpx

from ragstream.domain.llm.pace import READ_PACE, ReadPace

Origin = tuple[str, str, int]

# While at least this many paced responses are being read, a tick holds back until the next
# one the connections that found nothing to read (`_Pacer`); with fewer, what they wait for is
# read as it arrives. At 20 deltas a second per answer and a 30 ms grid, holding them back took
# a fifth off the little CPU 10 to 15 answers cost (45-60 µs per token) and made every delta
# wait about half a tick (p50 14-16 ms against under 1); at 100 answers it took a fifth off
# CPU that matters.
STRICT_TICKS = 20


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: the response being read and a reader waiting for more of it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin, pacer: _Pacer) -> None:
        self.loop = loop
        self.origin = origin
        self._pacer = pacer
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._silence: float | None = None
        self._since = 0.0
        self._paused = False
        self.tick: float | None = None  # the tick this connection's reading resumes at
        self.resumed_at: float | None = None  # the tick it was last resumed at, if still waiting
        self.pace: ReadPace | None = None  # the pace of the reader waiting, if any
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head = False  # the status line and headers are in
        self.until_eof = False
        self.body: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        self.received_any = False
        self.error: Exception | None = None
        self.last_read = self.loop.time()

    # asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self.last_read = self.loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))
            self.close()
        self._wake()
        if self.body and self.transport is not None and not self._paused:
            # The reader has something to take: what comes next waits in the socket until it
            # asks again, so a reader that comes back less often than the provider sends
            # gets several events in one read instead of one call here for each.
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.head and self.until_eof:  # a body without a length ends with the connection
            self.complete = True
        elif not self.complete:
            self._fail(httpx.RemoteProtocolError("the server closed the connection mid-response"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.complete:
            detail = f": {exc}" if exc else ""
            self._fail(httpx.RemoteProtocolError(f"connection lost{detail}"))
        self._wake()

    # httptools callbacks ---------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.head = True
        framed = {b"content-length", b"transfer-encoding"}
        self.until_eof = not any(name.lower() in framed for name, _ in self.headers)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        # Asked now: once the message is complete the parser no longer knows.
        self.keep_alive = self._parser.should_keep_alive()

    # for the transport -----------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and self.error is None
            and self.transport is not None
            and not self.transport.is_closing()
            and self.keep_alive
        )

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, silence: float | None) -> None:
        """Returns once something new arrived (or the connection ended).

        ``silence``: the longest silence allowed while waiting (httpx's read timeout). One
        timer per connection checks it and is re-armed only when it fires, so a steady stream
        pays nothing for it.

        If the socket was paused (the reader had something to take) reading starts again at
        once; if the task reads at a pace (`READ_PACE`), not before its ``not_before`` and,
        with a grid, on a tick of it (see `_Pacer`).
        """
        pace = READ_PACE.get()
        if (pace is None) != (self.pace is None):
            self._pacer.paced += 1 if pace is not None else -1
        self.pace = pace
        if pace is None:
            self.resume()
        else:
            pace.honoured = True
            if self._paused and self.tick is None:
                self._pacer.resume_at(pace.not_before, self)
        waiter = self._waiter = self.loop.create_future()
        self._since = self.loop.time()
        self._silence = silence
        if silence is not None and self._timer is None:
            self._timer = self.loop.call_at(self._since + silence, self._check)
        try:
            await waiter
        finally:
            self._waiter = None

    def _check(self) -> None:
        self._timer = None
        silence = self._silence
        if silence is None or self.transport is None:
            return
        quiet_since = max(self.last_read, self._since)
        waiter = self._waiter
        if waiter is not None and not waiter.done() and self.loop.time() - quiet_since >= silence:
            waiter.set_exception(httpx.ReadTimeout("no data within the read timeout"))
            return
        self._timer = self.loop.call_at(quiet_since + silence, self._check)

    def resume(self) -> None:
        """Reads from the socket again (see `data_received`)."""
        self.tick = None
        self.resumed_at = None
        if self._paused:
            self._paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    def found_nothing_at(self, tick: float) -> bool:
        """Resumed at ``tick``, the socket had nothing for the paced reader still waiting."""
        waiter = self._waiter
        return (
            self.resumed_at == tick
            and self.tick is None
            and not self._paused
            and not self.body
            and waiter is not None
            and not waiter.done()
            and self.transport is not None
        )

    def pause(self) -> None:
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def stop_timer(self) -> None:
        self.tick = None
        self.resumed_at = None
        if self.pace is not None:
            self._pacer.paced -= 1
            self.pace = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise httpx.RemoteProtocolError("the connection is closed")
        self.transport.write(data)

    def next_cycle(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.stop_timer()
        self._reset()

    def close(self) -> None:
        self.stop_timer()
        if self.transport is not None:
            self.transport.close()


class _Pacer:
    """Resumes the reading of paced connections (`READ_PACE`) in groups, one timer per tick.

    A connection whose reader may read again from ``not_before`` on joins the group of that
    time; the group's timer resumes them all in one turn of the event loop, and the lateness
    of that turn is reported once to each distinct ``late`` callback. With a grid, while at
    least ``strict_from`` paced responses are being read (``paced``, kept by the connections),
    those that found nothing in their socket by the next turn are paused again until the next
    tick: reads begin on ticks only, and a process serving many paced answers over plain HTTP
    wakes up once per tick, not once per arriving delta. With fewer they are left reading:
    their data wakes them as it arrives, since the few wake-ups the ticks would save are not
    worth making each delta wait for one. (Counting responses, not a tick's connections,
    keeps the choice from feeding itself: held back, an answer is resumed at every tick.)
    (Over TLS the transport goes on reading the socket into its TLS buffer while
    paused: the process still wakes as data arrives, only the reader does not.)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, strict_from: int) -> None:
        self.loop = loop
        self.strict_from = strict_from
        self.paced = 0  # connections whose reader waits at a pace (`_Connection.wait`)
        self._groups: dict[float, list[_Connection]] = {}

    def resume_at(self, when: float, connection: _Connection) -> None:
        if when <= self.loop.time():  # the reader came back late: no tick to wait for
            self._resume([connection], when, report=False)
        else:
            self._join(when, connection)

    def _join(self, when: float, connection: _Connection) -> None:
        connection.tick = when
        group = self._groups.get(when)
        if group is None:
            group = self._groups[when] = []
            self.loop.call_at(when, self._fire, when)
        group.append(connection)

    def _fire(self, when: float) -> None:
        # A connection whose tick is another one was resumed, closed or released since.
        group = [c for c in self._groups.pop(when, ()) if c.tick == when]
        self._resume(group, when, report=True)

    def _resume(self, group: list[_Connection], when: float, *, report: bool) -> None:
        late = self.loop.time() - when
        told: set[Callable[[float], None]] = set()
        strict = self.paced >= self.strict_from
        settle = []
        for connection in group:
            connection.resume()
            pace = connection.pace
            if pace is None:
                continue
            if report and pace.late is not None and pace.late not in told:
                told.add(pace.late)
                pace.late(late)
            if strict and pace.grid > 0:
                connection.resumed_at = when
                settle.append(connection)
        if settle:
            # The sockets that hold data are read by the poll of the loop's next turn; a
            # timer (never 0 ms on uvloop, which would run it before that poll) comes after.
            self.loop.call_later(0.001, self._settle, settle, when)

    def _settle(self, group: list[_Connection], when: float) -> None:
        now = self.loop.time()
        for connection in group:
            pace = connection.pace
            if pace is not None and pace.grid > 0 and connection.found_nothing_at(when):
                connection.pause()
                self._join((math.floor(now / pace.grid) + 1) * pace.grid, connection)


class _Body(httpx.AsyncByteStream):
    def __init__(
        self, transport: StreamingTransport, connection: _Connection, silence: float | None
    ) -> None:
        self._transport = transport
        self._connection = connection
        self._silence = silence
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            body = connection.body
            if body:
                # Everything that arrived since the last read, in one piece.
                data = body[0] if len(body) == 1 else b"".join(body)
                body.clear()
                yield data
            elif connection.complete:
                return
            elif connection.error is not None:
                raise connection.error
            else:
                await connection.wait(self._silence)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._connection.stop_timer()
            self._transport._release(self._connection)


def _timeouts(request: httpx.Request) -> tuple[float | None, float | None]:
    timeout = request.extensions.get("timeout") or {}
    return timeout.get("connect"), timeout.get("read")


def _request_bytes(request: httpx.Request, body: bytes) -> bytes:
    url = request.url
    target = url.raw_path or b"/"
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    chunked = False
    for name, value in request.headers.raw:
        if name.lower() == b"transfer-encoding":
            chunked = True
        lines.append(name + b": " + value)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if chunked:  # the whole body was read: one chunk, then the end
        size = f"{len(body):x}".encode()
        return head + (size + b"\r\n" + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    return head + body


class StreamingTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 (plain or TLS) for httpx, read as it arrives. See the module docstring."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_idle: int = 100,
        keepalive_expiry: float = 5.0,
        strict_ticks: int = STRICT_TICKS,
    ) -> None:
        self._ssl = ssl_context
        self._strict_ticks = strict_ticks
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[Origin, list[_Connection]] = {}
        self._pacer: _Pacer | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        port = url.port or (443 if url.scheme == "https" else 80)
        origin = (url.scheme, url.host, port)
        connect_timeout, read_timeout = _timeouts(request)
        data = _request_bytes(request, await request.aread())
        connection = self._reused(origin)
        if connection is not None:
            try:
                await self._exchange(connection, data, read_timeout)
            except httpx.RemoteProtocolError:
                if connection.received_any:
                    raise
                connection.close()  # closed by the server while idle: once more, afresh
                connection = None
        if connection is None:
            connection = await self._connect(origin, connect_timeout)
            await self._exchange(connection, data, read_timeout)
        return httpx.Response(
            connection.status,
            headers=connection.headers,
            stream=_Body(self, connection, read_timeout),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": connection.reason},
        )

    async def _exchange(self, connection: _Connection, data: bytes, silence: float | None) -> None:
        """Sends the request and waits for the response's status line and headers."""
        connection.send(data)
        while not connection.head:
            if connection.error is not None:
                connection.close()
                raise connection.error
            try:
                await connection.wait(silence)
            except BaseException:
                connection.close()
                raise

    def _reused(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            fresh = connection.loop.time() - connection.idle_since < self._keepalive_expiry
            if fresh and connection.transport is not None and not connection.transport.is_closing():
                connection.next_cycle()
                return connection
            connection.close()
        return None

    async def _connect(self, origin: Origin, within: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        if self._pacer is None or self._pacer.loop is not loop:
            self._pacer = _Pacer(loop, self._strict_ticks)
        connection = _Connection(loop, origin, self._pacer)
        secure = scheme == "https"
        try:
            async with asyncio.timeout(within):
                await loop.create_connection(
                    lambda: connection,
                    host,
                    port,
                    ssl=self._ssl_context() if secure else None,
                    server_hostname=host if secure else None,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"could not connect to {host}:{port} in time") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"could not connect to {host}:{port}: {exc}") from exc
        return connection

    def _release(self, connection: _Connection) -> None:
        """A response was read to its end (keep the connection) or abandoned (close it)."""
        if not connection.reusable:
            connection.close()
            return
        idle = self._idle.setdefault(connection.origin, [])
        if len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = connection.loop.time()
        connection.resume()  # an idle connection notices the server closing it
        idle.append(connection)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
