"""permessage-deflate as ragstream serves it: negotiated as before, small messages uncompressed.

A real uvicorn server with ragstream's websocket protocol, and a client that reads the raw
frames (websockets' sans-IO client over a TCP connection) to see which were compressed (RSV1).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.client import ClientProtocol
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.typing import ExtensionParameter
from websockets.uri import parse_uri

from ragstream.settings import Settings
from ragstream.workers import server_options
from ragstream.ws_compression import MIN_COMPRESSED_BYTES, WebSocketProtocol

SMALL = '{"id":"1","type":"next","payload":{"data":{"chat":{"delta":"token"}}}}'
LARGE = '{"id":"1","type":"next","payload":{"data":{"excerpt":"' + "passage " * 300 + '"}}}'
LAST = "last"


async def _echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(SMALL)
    await websocket.send_text(LARGE)
    await websocket.send_text(await websocket.receive_text())
    await websocket.send_text(LAST)
    await websocket.close()


@contextlib.asynccontextmanager
async def _server() -> AsyncIterator[int]:
    app = Starlette(routes=[WebSocketRoute("/ws", _echo)])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", ws=WebSocketProtocol
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done()
            await asyncio.sleep(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


class NotingDeflate(ClientPerMessageDeflateFactory):
    """The client's permessage-deflate, noting which frames came compressed (RSV1) before it
    decodes them: websockets hands frames over decoded."""

    def __init__(self) -> None:
        super().__init__()
        self.compressed: list[bool] = []

    def process_response_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> PerMessageDeflate:
        extension = super().process_response_params(params, accepted_extensions)
        decode = extension.decode
        compressed = self.compressed

        def noting(frame: Frame, *, max_size: int | None = None) -> Frame:
            if frame.opcode is Opcode.TEXT:
                compressed.append(frame.rsv1)
            return decode(frame, max_size=max_size)

        extension.decode = noting  # type: ignore[method-assign]
        return extension


async def _session(port: int, *, offer_deflate: bool) -> tuple[Response, list[tuple[bool, str]]]:
    """The handshake's response and each text frame received: (compressed, text)."""
    deflate = NotingDeflate()
    extensions = [deflate] if offer_deflate else None
    client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws"), extensions=extensions)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    frames: list[tuple[bool, str]] = []
    response: Response | None = None
    try:
        client.send_request(client.connect())
        writer.write(b"".join(client.data_to_send()))
        sent_echo = False
        while len(frames) < 4:
            data = await asyncio.wait_for(reader.read(65536), timeout=30)
            assert data, "the server closed early"
            client.receive_data(data)
            for event in client.events_received():
                if isinstance(event, Response):
                    response = event
                elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    compressed = deflate.compressed[len(frames)] if offer_deflate else False
                    frames.append((compressed, bytes(event.data).decode()))
                    if not sent_echo:
                        client.send_text(("x" * (2 * MIN_COMPRESSED_BYTES)).encode())
                        sent_echo = True
            writer.write(b"".join(client.data_to_send()))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    assert response is not None
    return response, frames


async def test_deflate_is_negotiated_and_only_large_messages_are_compressed() -> None:
    async with _server() as port:
        response, frames = await _session(port, offer_deflate=True)

    assert "permessage-deflate" in response.headers.get("Sec-WebSocket-Extensions", "")
    assert len(SMALL) < MIN_COMPRESSED_BYTES <= len(LARGE)
    assert frames == [
        (False, SMALL),
        (True, LARGE),
        (True, "x" * (2 * MIN_COMPRESSED_BYTES)),  # the client's compressed message, decoded
        (False, LAST),
    ]


async def test_a_client_that_offers_no_deflate_gets_none() -> None:
    async with _server() as port:
        response, frames = await _session(port, offer_deflate=False)

    assert "Sec-WebSocket-Extensions" not in response.headers
    assert [text for _, text in frames] == [SMALL, LARGE, "x" * (2 * MIN_COMPRESSED_BYTES), LAST]
    assert not any(compressed for compressed, _ in frames)


def test_ragstream_serve_uses_the_protocol(settings: Settings) -> None:
    assert server_options(settings)["ws"] is WebSocketProtocol
