"""Structure-aware chunking: sections first, then paragraphs, then sentences, then words.

Sizes are estimated tokens (`ragstream.domain.text.estimate_tokens`, no tokenizer files), the
same estimate the chat's prompt budgets use.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ragstream.domain.documents.parsing import Block
from ragstream.domain.text import count_pieces, estimate_tokens

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


class _Run:
    """Texts joined by single spaces, with the token estimate of the join kept up to date.

    Pieces never span whitespace, so both parts of the estimate (characters and pieces) add up;
    splitting stays linear in the length of the text, where re-measuring the growing join after
    every word made a long paragraph cost time quadratic in its length.
    """

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.chars = 0
        self.pieces = 0

    def tokens_with(self, text: str, pieces: int) -> int:
        chars = self.chars + len(text) + (1 if self.texts else 0)
        return max(math.ceil(chars / 4), self.pieces + pieces)

    def add(self, text: str, pieces: int) -> None:
        self.chars += len(text) + (1 if self.texts else 0)
        self.pieces += pieces
        self.texts.append(text)

    def take(self) -> str:
        text = " ".join(self.texts)
        self.texts, self.chars, self.pieces = [], 0, 0
        return text


def _words(text: str, max_token_chars: int) -> list[str]:
    """Whitespace-separated words; a longer run than ``max_token_chars`` (a base64 blob, a
    15 MB "word") is cut into pieces of that length."""
    words: list[str] = []
    for word in text.split():
        if len(word) <= max_token_chars:
            words.append(word)
        else:
            words.extend(
                word[i : i + max_token_chars] for i in range(0, len(word), max_token_chars)
            )
    return words


def _pack(texts: list[str], target: int) -> list[str]:
    """Consecutive texts joined by spaces into pieces of at most ``target`` tokens (a single
    text over the target stays one piece; callers cut those first)."""
    pieces: list[str] = []
    run = _Run()
    for text in texts:
        count = count_pieces(text)
        if run.texts and run.tokens_with(text, count) > target:
            pieces.append(run.take())
        run.add(text, count)
    if run.texts:
        pieces.append(run.take())
    return pieces


def _split_words(text: str, target: int, max_token_chars: int) -> list[str]:
    # A word over a whole chunk is cut by characters first (four characters per token).
    limit = max(1, min(max_token_chars, target * 4))
    return _pack(_words(text, limit), target)


def split_oversized(text: str, target: int, max_token_chars: int = 100) -> list[str]:
    """Pieces of at most ``target`` tokens, cut at sentence ends where possible."""
    if estimate_tokens(text) <= target:
        return [text]
    units: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        if estimate_tokens(sentence) > target:
            units.extend(_split_words(sentence, target, max_token_chars))
        else:
            units.append(sentence)
    return _pack(units, target)


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
            tail = _tail(self.drafts[-1].content, self.overlap)
            self.parts, self.tokens = [tail], estimate_tokens(tail)


def _tail(content: str, overlap: int) -> str:
    """The last words of ``content``, about ``overlap`` tokens: 0.75 words per token, and at most
    8 characters per token, so long words cannot make the overlap outgrow its budget."""
    words: list[str] = []
    chars = 0
    for word in reversed(content.split()):
        if words and (len(words) >= int(overlap * 0.75) or chars + len(word) > overlap * 8):
            break
        words.append(word)
        chars += len(word) + 1
    return " ".join(reversed(words))


def chunk_blocks(
    blocks: list[Block], *, target: int = 500, overlap: int = 50, max_token_chars: int = 100
) -> list[ChunkDraft]:
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
        for piece in split_oversized(block.text, target - overlap, max_token_chars):
            builder.add(piece, block.page)
    builder.flush()
    return builder.drafts
