"""Reading a document: bytes to chunk drafts, within limits. Runs in a worker process.

The limits bound one document's time and memory: ``max_text_chars`` of extracted text,
``max_chunks`` chunks, ``max_token_chars`` characters per word (a longer run is cut, so one
15 MB "word" costs what ordinary text does) and the job's time limit (see workpool.py). A
document over a limit ends FAILED with an error that says which.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from ragstream.db.chunk_copy import chunk_copy_payload
from ragstream.domain.documents.chunking import ChunkDraft, chunk_blocks
from ragstream.domain.documents.parsing import ParseError, parse


@dataclass(frozen=True)
class ReadingLimits:
    target_tokens: int = 500
    overlap_tokens: int = 50
    max_text_chars: int = 5_000_000
    max_chunks: int = 5_000
    max_token_chars: int = 100
    timeout_seconds: float = 120.0


def read_document(mime_type: str, data: bytes, limits: ReadingLimits) -> list[ChunkDraft]:
    blocks = parse(mime_type, data, max_chars=limits.max_text_chars)
    drafts = chunk_blocks(
        blocks,
        target=limits.target_tokens,
        overlap=limits.overlap_tokens,
        max_token_chars=limits.max_token_chars,
    )
    if not drafts:
        raise ParseError("the document contains no text")
    if len(drafts) > limits.max_chunks:
        raise ParseError(
            f"the document makes more than {limits.max_chunks:,} chunks, the limit for one document"
        )
    return drafts


def embedding_text(title: str, heading_path: Sequence[str], content: str) -> str:
    """What gets embedded: the chunk with its document title and headings as context."""
    context = " / ".join([title, *heading_path])
    return f"{context}\n\n{content}"


def read_and_encode(
    mime_type: str,
    data: bytes,
    limits: ReadingLimits,
    document_id: uuid.UUID,
    title: str,
    dimensions: int,
    batch_size: int,
) -> tuple[int, bytes]:
    """``read_document``, the offline hashing embedder's vectors of the chunks, and the chunks
    as one binary COPY payload (see db/chunk_copy.py), all in the same worker process: one trip
    to the work pool per document, and what comes back is the chunk count and one buffer."""
    import numpy as np

    from ragstream.domain.llm.embeddings import embed_matrix_in_worker

    drafts = read_document(mime_type, data, limits)
    texts = [embedding_text(title, d.heading_path, d.content) for d in drafts]
    vectors = np.concatenate(
        [
            embed_matrix_in_worker(dimensions, texts[start : start + batch_size])
            for start in range(0, len(texts), batch_size)
        ]
    )
    return len(drafts), chunk_copy_payload(document_id, drafts, vectors)
