"""permessage-deflate for the messages it pays for: small messages are sent uncompressed.

A streamed answer is many small ``next`` messages (100-200 bytes each). Compressing one costs a
zlib compression and sync flush with the socket's own compression state, which is cold in the
cache by the time its next token comes: a measurable share of the server's CPU per token, to
save a few dozen bytes on a frame whose TCP/IP headers are as large. RFC 7692 (section 6) lets
a sender send any message uncompressed (RSV1 clear) while the extension is in use; ragstream
does so for messages under ``MIN_COMPRESSED_BYTES`` and compresses larger ones (a finished
answer with its sources) as before. What is negotiated is unchanged: a client that offers
permessage-deflate gets it, with uvicorn's parameters, and its own messages are decoded as
they come.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode
from websockets.typing import ExtensionParameter

# Below this, a message goes uncompressed (the threshold Node's `ws` server uses by default).
MIN_COMPRESSED_BYTES = 1024


class _Deflate(PerMessageDeflate):
    def encode(self, frame: Frame) -> Frame:
        # Only a whole message in one frame: the frames of a fragmented one share the first
        # frame's choice, which is made before the later ones exist.
        if (
            frame.fin
            and frame.opcode in (Opcode.TEXT, Opcode.BINARY)
            and len(frame.data) < MIN_COMPRESSED_BYTES
        ):
            return frame
        return super().encode(frame)


class _DeflateFactory(ServerPerMessageDeflateFactory):
    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, agreed = super().process_request_params(params, accepted_extensions)
        assert isinstance(agreed, PerMessageDeflate)
        extension = _Deflate(
            agreed.remote_no_context_takeover,
            agreed.local_no_context_takeover,
            agreed.remote_max_window_bits,
            agreed.local_max_window_bits,
            agreed.compress_settings,
        )
        return response, extension


def _small_messages_plain(factory: Any) -> Any:
    if type(factory) is not ServerPerMessageDeflateFactory:
        return factory
    return _DeflateFactory(
        server_no_context_takeover=factory.server_no_context_takeover,
        client_no_context_takeover=factory.client_no_context_takeover,
        server_max_window_bits=factory.server_max_window_bits,
        client_max_window_bits=factory.client_max_window_bits,
        compress_settings=factory.compress_settings,
        require_client_max_window_bits=factory.require_client_max_window_bits,
    )


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websocket protocol; permessage-deflate leaves small messages uncompressed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        conn = self.conn
        if conn.available_extensions:  # ws_per_message_deflate is on (uvicorn's default)
            conn.available_extensions = [
                _small_messages_plain(f) for f in conn.available_extensions
            ]
