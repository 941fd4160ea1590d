"""The streaming HTTP transport against a raw HTTP/1.1 server: framing, reuse and failures."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import httpx2
import pytest

from ragstream.domain.llm.pace import READ_PACE, ReadPace
from ragstream.domain.llm.streaming_http import STRICT_TICKS, StreamingTransport
from tests.chat_support import eventually

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A loopback server whose answers are written byte for byte by the test."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.handlers: set[asyncio.Task[object]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self.handler(reader, writer)
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[RawServer, str]]:
    raw = RawServer(handler)
    server = await asyncio.start_server(raw._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield raw, f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in raw.handlers:
            task.cancel()
        await asyncio.gather(*raw.handlers, return_exceptions=True)


@contextlib.asynccontextmanager
async def client(strict_ticks: int = STRICT_TICKS) -> AsyncIterator[httpx2.AsyncClient]:
    transport = StreamingTransport(strict_ticks=strict_ticks)
    async with httpx2.AsyncClient(transport=transport, timeout=2.0) as http:
        yield http


@contextlib.contextmanager
def reading_at(pace: ReadPace) -> Iterator[None]:
    """Reads made in the block (in this task) follow ``pace``."""
    token = READ_PACE.set(pace)
    try:
        yield
    finally:
        READ_PACE.reset(token)


def one_event_then_another(server: Callable[[], RawServer], more: asyncio.Event) -> Handler:
    """A handler that answers with one event, then with another once ``more`` is set."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server().read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n" % (11, b"data: one\n\n"))
        await writer.drain()
        await more.wait()
        writer.write(chunked(b"data: two\n\n"))
        await writer.drain()

    return handler


async def holds(condition: bool) -> bool:
    return condition


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def test_a_chunked_stream_arrives_whole_and_the_connection_is_reused() -> None:
    # given a server answering every request on a connection with a chunked body
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(chunked(b"data: one\n\n", b"data: two\n\n"))
            await writer.drain()

    async with raw_server(handler) as (server, url), client() as http:
        # when two requests are made one after the other
        bodies = []
        for _ in range(2):
            async with http.stream("POST", f"{url}/v1/x", content=b'{"a": 1}') as response:
                bodies.append(b"".join([piece async for piece in response.aiter_raw()]))

        # then both bodies are complete, the request went out as sent, on one connection
        assert bodies == [b"data: one\n\ndata: two\n\n"] * 2
        assert server.connections == 1
        assert server.requests[0].startswith(b"POST /v1/x HTTP/1.1\r\n")
        assert server.requests[0].endswith(b'\r\n\r\n{"a": 1}')


async def test_what_arrives_while_the_reader_is_away_comes_in_one_piece() -> None:
    # given a server that sends an event, and two more once the reader has the first
    more = asyncio.Event()
    sent = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n" % (11, b"data: one\n\n"))
        await writer.drain()
        await more.wait()
        writer.write(chunked(b"data: two\n\n", b"data: three\n\n"))
        await writer.drain()
        sent.set()

    async with (
        raw_server(handler) as (server, url),
        client() as http,
        http.stream("POST", f"{url}/v1/x", content=b"{}") as response,
    ):
        pieces = response.aiter_raw()
        first = await anext(pieces)
        body = response.stream._stream  # type: ignore[union-attr]  # the transport's _Body
        reading_meanwhile = body._connection.transport.is_reading()
        # when the rest is sent while the reader is not asking for it
        more.set()
        await sent.wait()
        rest = [piece async for piece in pieces]

    # then the socket was not read meanwhile, and the reader gets the rest whole, in one
    # piece, and the response ends
    assert first == b"data: one\n\n"
    assert not reading_meanwhile
    assert rest == [b"data: two\n\ndata: three\n\n"]


async def test_a_paced_reader_reads_the_socket_again_only_once_its_pace_allows() -> None:
    # given a server that sends an event, and the next one at once when told
    more = asyncio.Event()
    handler = one_event_then_another(lambda: server, more)

    loop = asyncio.get_running_loop()
    lateness: list[float] = []
    pace = ReadPace(late=lateness.append)
    with reading_at(pace):
        async with (
            raw_server(handler) as (server, url),
            client() as http,
            http.stream("POST", f"{url}/v1/x", content=b"{}") as response,
        ):
            honoured_by_the_head = pace.honoured  # before the first read of the body
            pieces = response.aiter_raw()
            first = await anext(pieces)
            # when the reader may read again only 0.2 s from now, and the next event is
            # already on its way
            pace.not_before = loop.time() + 0.2
            more.set()
            second = await anext(pieces)
            arrived = loop.time()

    # then the transport took the pace from the start, and the event came no earlier than
    # it allowed
    assert (first, second) == (b"data: one\n\n", b"data: two\n\n")
    assert honoured_by_the_head
    assert arrived >= pace.not_before
    assert len(lateness) == 1
    assert lateness[0] >= 0


async def test_with_a_grid_a_read_that_found_nothing_waits_for_the_next_tick() -> None:
    # given a server that sends an event, and the next one only when told
    more = asyncio.Event()
    handler = one_event_then_another(lambda: server, more)

    loop = asyncio.get_running_loop()
    grid = 0.2
    pace = ReadPace(grid=grid)  # may read again at once, but on the grid's ticks only
    with reading_at(pace):
        async with (
            raw_server(handler) as (server, url),
            client(strict_ticks=1) as http,  # one paced response: ticks hold it back
            http.stream("POST", f"{url}/v1/x", content=b"{}") as response,
        ):
            pieces = response.aiter_raw()
            first = await anext(pieces)
            connection = response.stream._stream._connection  # type: ignore[union-attr]
            second = asyncio.create_task(anext(pieces))
            await eventually(lambda: holds(connection.tick is not None))  # waits for a tick
            tick = connection.tick
            await eventually(lambda: holds(connection.tick not in (None, tick)))  # found nothing
            next_tick = connection.tick
            # when the next event is sent after that tick
            more.set()
            piece = await second
            arrived = loop.time()
            resumed_at = connection.resumed_at

    # then the reading paused again until the next tick, and the event was read once that
    # tick resumed it (no later one did)
    assert (first, piece) == (b"data: one\n\n", b"data: two\n\n")
    assert next_tick == pytest.approx(tick + grid)
    assert arrived >= next_tick
    assert resumed_at == next_tick


async def test_with_few_paced_responses_a_read_that_found_nothing_waits_for_the_data() -> None:
    # given a server that sends an event, and the next one only when told, read by a paced
    # reader on a grid of an hour whose next read may begin at a tick 50 ms away, through a
    # transport that holds reads back for ticks while two or more paced responses are read
    more = asyncio.Event()
    handler = one_event_then_another(lambda: server, more)

    loop = asyncio.get_running_loop()
    pace = ReadPace(grid=3600.0)
    with reading_at(pace):
        async with (
            raw_server(handler) as (server, url),
            client(strict_ticks=2) as http,
            http.stream("POST", f"{url}/v1/x", content=b"{}") as response,
        ):
            pieces = response.aiter_raw()
            first = await anext(pieces)
            connection = response.stream._stream._connection  # type: ignore[union-attr]
            tick = pace.not_before = loop.time() + 0.05
            second = asyncio.create_task(anext(pieces))
            # when that tick has resumed it with nothing to read
            await eventually(lambda: holds(connection.tick is None and loop.time() >= tick))
            await asyncio.sleep(0.01)  # past the moment a settle would have paused it
            reading = connection.transport.is_reading()
            waits_for = connection.tick
            # and the next event is sent
            more.set()
            piece = await second

    # then the socket kept reading, waited for no later tick (the next is an hour away), and
    # the event came as it arrived
    assert (first, piece) == (b"data: one\n\n", b"data: two\n\n")
    assert reading
    assert waits_for is None


async def test_with_enough_paced_responses_a_read_that_found_nothing_waits_for_a_tick() -> None:
    # given two paced readers, each of a stream that sends one event and then waits, both
    # allowed to read again from the same tick, through a transport that holds reads back for
    # ticks while two or more paced responses are read
    loop = asyncio.get_running_loop()
    grid = 0.2
    both_read = asyncio.Barrier(2)
    never = asyncio.Event()
    handler = one_event_then_another(lambda: server, never)

    async def read_until_the_tick(http: httpx2.AsyncClient, url: str) -> float | None:
        pace = ReadPace(grid=grid)
        with reading_at(pace):
            async with http.stream("POST", f"{url}/v1/x", content=b"{}") as response:
                pieces = response.aiter_raw()
                await anext(pieces)
                connection = response.stream._stream._connection  # type: ignore[union-attr]
                if await both_read.wait() == 0:  # one of them picks the tick, after both read
                    tick.set_result((math.floor(loop.time() / grid) + 2) * grid)
                pace.not_before = await tick
                waiting = asyncio.create_task(anext(pieces))
                # when the tick comes and neither socket has anything
                await eventually(lambda: holds(connection.tick not in (None, pace.not_before)))
                waiting.cancel()
                next_tick: float | None = connection.tick
                return next_tick

    tick: asyncio.Future[float] = loop.create_future()
    async with raw_server(handler) as (server, url), client(strict_ticks=2) as http:
        next_ticks = await asyncio.gather(*(read_until_the_tick(http, url) for _ in range(2)))

    # then both were paused again until the next tick
    assert next_ticks == [pytest.approx(tick.result() + grid)] * 2
    assert server.connections == 2


async def test_a_released_connection_forgets_its_ticks() -> None:
    # given a server answering every request on a connection with an event, and the end of
    # the body a moment later (so the reader waits for a tick in between)
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\r\n" % (11, b"data: one\n\n"))
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    with reading_at(ReadPace(grid=0.05)):
        async with raw_server(handler) as (server, url), client() as http:
            # when a paced response is read to its end, and the connection is released
            async with http.stream("POST", f"{url}/v1/x", content=b"{}") as response:
                connection = response.stream._stream._connection  # type: ignore[union-attr]
                body = b"".join([piece async for piece in response.aiter_raw()])
            # then nothing of its pace stays with it to pause the next request's reads
            state = (connection.tick, connection.resumed_at, connection.pace)
            paced = connection._pacer.paced
            async with http.stream("POST", f"{url}/v1/x", content=b"{}") as response:
                again = b"".join([piece async for piece in response.aiter_raw()])

    assert body == again == b"data: one\n\n"
    assert state == (None, None, None)
    assert paced == 0  # no longer counted among the paced responses
    assert server.connections == 1


async def test_a_body_with_a_length_and_an_error_status_reach_the_client() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 4\r\n\r\nslow")
        await writer.drain()

    async with raw_server(handler) as (server, url), client() as http:
        response = await http.post(f"{url}/v1/x", content=b"{}")

        assert response.status_code == 429
        assert response.text == "slow"
        assert response.reason_phrase == "Too Many Requests"


async def test_a_connection_closed_mid_body_is_a_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        writer.close()

    async with raw_server(handler) as (server, url), client() as http:
        received: list[bytes] = []

        async def read_all() -> None:
            async with http.stream("POST", f"{url}/v1/x", content=b"{}") as response:
                async for piece in response.aiter_raw():
                    received.append(piece)

        with pytest.raises(httpx2.RemoteProtocolError):
            await read_all()

        # what arrived before the break was passed on first
        assert received == [b"hello"]


async def test_silence_past_the_read_timeout_is_a_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(handler) as (server, url), client() as http:

        async def read_all() -> None:
            async with http.stream(
                "POST", f"{url}/v1/x", content=b"{}", timeout=httpx2.Timeout(2.0, read=0.2)
            ) as response:
                async for _ in response.aiter_raw():
                    pass

        with pytest.raises(httpx2.ReadTimeout):
            await read_all()


async def test_nothing_listening_is_a_connect_error() -> None:
    async with raw_server(lambda r, w: asyncio.sleep(0)) as (_, url):
        pass  # the port is free again
    async with client() as http:
        with pytest.raises(httpx2.ConnectError):
            await http.post(f"{url}/v1/x", content=b"{}")


async def test_a_keep_alive_connection_closed_by_the_server_is_replaced() -> None:
    # given a server that answers one request per connection, then closes it quietly
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    async with raw_server(handler) as (server, url), client() as http:
        first = await http.post(f"{url}/v1/x", content=b"{}")
        await asyncio.sleep(0.2)  # the idle connection is closed meanwhile

        # when the next request is made
        second = await http.post(f"{url}/v1/x", content=b"{}")

        # then it is answered over a new connection
        assert (first.text, second.text) == ("ok", "ok")
        assert server.connections == 2


async def test_an_abandoned_stream_closes_its_connection() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        await reader.read()  # until the client goes away
        closed.set()

    async with raw_server(handler) as (server, url), client() as http:
        async with http.stream("POST", f"{url}/v1/x", content=b"{}") as response:
            async for piece in response.aiter_raw():
                assert piece == b"one"
                break

        async with asyncio.timeout(2):
            await closed.wait()
