"""A document's chunks as one binary COPY payload (PostgreSQL's ``PGCOPY`` format).

Built where the chunks are made — in a work-pool process for the offline embedder — so the
process that writes them sends one buffer: nothing is encoded value by value on its event loop,
and no binary codec for ``vector`` has to be set on (and taken off) a pooled connection.
PostgreSQL checks every value as it reads it (a vector of the wrong size fails the COPY).

Imports only the standard library and numpy: work-pool processes load it.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

# The columns a chunk is written with, in the payload's order (``tsv`` is computed by
# PostgreSQL).
CHUNK_COPY_COLUMNS = (
    "id",
    "document_id",
    "ordinal",
    "content",
    "heading_path",
    "heading",
    "page",
    "token_count",
    "embedding",
)

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = _SIGNATURE + struct.pack("!ii", 0, 0)  # no flags, no header extension
_TRAILER = struct.pack("!h", -1)
_TEXT_OID = 25  # pg_type oid of text: the element type of ``heading_path``
_NULL = struct.pack("!i", -1)


class ChunkFields(Protocol):
    """What a chunk row is made of besides its ids and vector (a chunk draft has it)."""

    @property
    def ordinal(self) -> int: ...
    @property
    def content(self) -> str: ...
    @property
    def heading_path(self) -> Sequence[str]: ...
    @property
    def heading(self) -> str: ...
    @property
    def page(self) -> int | None: ...
    @property
    def token_count(self) -> int: ...


def _text(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!i", len(data)) + data


def _text_array(items: Sequence[str]) -> bytes:
    if items:
        # One dimension of len(items) elements, lower bound 1, no NULLs.
        body = struct.pack("!iiiii", 1, 0, _TEXT_OID, len(items), 1)
        body += b"".join(_text(item) for item in items)
    else:
        body = struct.pack("!iii", 0, 0, _TEXT_OID)
    return struct.pack("!i", len(body)) + body


def _int4(value: int | None) -> bytes:
    return _NULL if value is None else struct.pack("!ii", 4, value)


def chunk_copy_payload(
    document_id: uuid.UUID,
    chunks: Sequence[ChunkFields],
    vectors: np.ndarray | Sequence[Sequence[float]],
) -> bytes:
    """The rows of ``chunks`` (new ids, ``vectors`` row by row) for
    ``COPY chunks (CHUNK_COPY_COLUMNS) FROM STDIN (FORMAT binary)``."""
    import numpy as np

    if len(vectors) != len(chunks):
        raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
    # pgvector's binary form: dimensions (int16), an unused int16, then big-endian float4s.
    matrix = np.ascontiguousarray(vectors, dtype=">f4")
    dimensions = matrix.shape[1] if matrix.ndim == 2 else 0
    vector_prefix = struct.pack("!ihh", 4 + 4 * dimensions, dimensions, 0)
    document = struct.pack("!i", 16) + document_id.bytes
    parts = [_HEADER]
    for chunk, vector in zip(chunks, matrix, strict=True):
        parts += (
            struct.pack("!hi", len(CHUNK_COPY_COLUMNS), 16),
            uuid.uuid4().bytes,
            document,
            _int4(chunk.ordinal),
            _text(chunk.content),
            _text_array(chunk.heading_path),
            _text(chunk.heading),
            _int4(chunk.page),
            _int4(chunk.token_count),
            vector_prefix,
            vector.tobytes(),
        )
    parts.append(_TRAILER)
    return b"".join(parts)
