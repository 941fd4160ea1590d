"""The longest answer stored and streamed: a provider that never stops cannot grow memory.

Past ``max_chars`` characters the provider's stream is closed and the answer ends COMPLETE,
its text cut at the limit and followed by ``truncation_marker(max_chars)``; its token usage is
then estimated, since the provider's own count never arrives.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

from ragstream.domain.llm.chat import ChatChunk


def truncation_marker(max_chars: int) -> str:
    return f"\n\n[answer truncated at {max_chars:,} characters]"


async def capped(
    chunks: AsyncGenerator[ChatChunk, None], max_chars: int
) -> AsyncGenerator[ChatChunk, None]:
    """The chunks of one answer, up to ``max_chars`` characters of text, then the marker."""
    used = 0
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            if chunk.text and used + len(chunk.text) > max_chars:
                kept = chunk.text[: max_chars - used]
                yield ChatChunk(text=kept + truncation_marker(max_chars))
                return
            used += len(chunk.text)
            yield chunk
