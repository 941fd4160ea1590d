"""Structure-aware chunking: sections first, then paragraphs, then sentences, then words.

Sizes are estimated tokens (`ragstream.domain.text.estimate_tokens`, no tokenizer files), the
same estimate the chat's prompt budgets use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ragstream.domain.documents.parsing import Block
from ragstream.domain.text import estimate_tokens

_SENTENCE_END = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])\s+")
HEADING_SEPARATOR = " / "


@dataclass(frozen=True)
class ChunkDraft:
    ordinal: int
    content: str
    heading_path: tuple[str, ...]
    page: int | None
    token_count: int

    @property
    def heading(self) -> str:
        return HEADING_SEPARATOR.join(self.heading_path)


def _split_words(text: str, target: int) -> list[str]:
    words = text.split()
    pieces: list[str] = []
    current: list[str] = []
    for word in words:
        if current and estimate_tokens(" ".join([*current, word])) > target:
            pieces.append(" ".join(current))
            current = []
        if estimate_tokens(word) > target:
            # A "word" longer than a chunk (e.g. a base64 blob): cut it by characters.
            step = target * 4
            pieces.extend(word[i : i + step] for i in range(0, len(word), step))
            continue
        current.append(word)
    if current:
        pieces.append(" ".join(current))
    return pieces


def split_oversized(text: str, target: int) -> list[str]:
    """Pieces of at most ``target`` tokens, cut at sentence ends where possible."""
    if estimate_tokens(text) <= target:
        return [text]
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(text):
        if estimate_tokens(sentence) > target:
            if current:
                pieces.append(current)
                current = ""
            pieces.extend(_split_words(sentence, target))
            continue
        candidate = f"{current} {sentence}" if current else sentence
        if current and estimate_tokens(candidate) > target:
            pieces.append(current)
            current = sentence
        else:
            current = candidate
    if current:
        pieces.append(current)
    return pieces


@dataclass
class _Builder:
    target: int
    overlap: int
    drafts: list[ChunkDraft] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    tokens: int = 0
    page: int | None = None
    has_new_text: bool = False
    path: tuple[str, ...] = ()

    def add(self, text: str, page: int | None) -> None:
        tokens = estimate_tokens(text)
        if self.has_new_text and page != self.page:
            self.flush()  # a chunk cites one page
        elif self.has_new_text and self.tokens + tokens > self.target:
            self.flush(carry_overlap=True)
        if not self.has_new_text:
            self.page = page
        self.parts.append(text)
        self.tokens += tokens
        self.has_new_text = True

    def flush(self, *, carry_overlap: bool = False) -> None:
        if self.has_new_text:
            content = "\n\n".join(self.parts)
            self.drafts.append(
                ChunkDraft(
                    ordinal=len(self.drafts),
                    content=content,
                    heading_path=self.path,
                    page=self.page,
                    token_count=estimate_tokens(content),
                )
            )
        self.parts, self.tokens, self.has_new_text = [], 0, False
        if carry_overlap and self.overlap > 0 and self.drafts:
            # The next chunk opens with the end of this one, so a sentence cut at the boundary
            # is still retrievable with its context.
            words = self.drafts[-1].content.split()
            tail = " ".join(words[-max(1, int(self.overlap * 0.75)) :])
            self.parts, self.tokens = [tail], estimate_tokens(tail)


def chunk_blocks(blocks: list[Block], *, target: int = 500, overlap: int = 50) -> list[ChunkDraft]:
    """Chunks never span two sections; each keeps its heading path and first page."""
    target = max(target, 16)
    overlap = min(max(overlap, 0), target // 4)
    builder = _Builder(target=target, overlap=overlap)
    headings: list[tuple[int, str]] = []
    for block in blocks:
        if block.level is not None:
            builder.flush()
            headings = [(level, text) for level, text in headings if level < block.level]
            headings.append((block.level, block.text[:200]))
            builder.path = tuple(text for _, text in headings)
            continue
        for piece in split_oversized(block.text, target - overlap):
            builder.add(piece, block.page)
    builder.flush()
    return builder.drafts
