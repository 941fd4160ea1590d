"""Text extraction: every supported format becomes a list of headings and paragraphs."""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass
from html.parser import HTMLParser

from ragstream.domain.documents.formats import HTML, MARKDOWN, PDF, PLAIN, decode_text
from ragstream.domain.errors import InvalidInput

logger = logging.getLogger(__name__)


class ParseError(Exception):
    """The document cannot be read; the message is shown to its owner as the document's error."""


@dataclass(frozen=True)
class Block:
    """A heading (``level`` 1-6) or a paragraph (``level`` None), with its PDF page if any."""

    text: str
    level: int | None = None
    page: int | None = None


def text_too_long(max_chars: int) -> ParseError:
    return ParseError(
        f"the document's text is longer than {max_chars:,} characters, the limit for one document"
    )


def parse(mime_type: str, data: bytes, *, max_chars: int | None = None) -> list[Block]:
    """CPU work (see documents/reading.py). Text past ``max_chars`` is a ParseError, checked
    before the text is split up where the format allows (text, Markdown) and page by page in
    PDFs."""
    if mime_type == PDF:
        return parse_pdf(data, max_chars=max_chars)
    try:
        text = decode_text(data)
    except InvalidInput as exc:
        raise ParseError(exc.message) from None
    if mime_type == HTML:
        blocks = parse_html(text)
        if max_chars is not None and sum(len(b.text) for b in blocks) > max_chars:
            raise text_too_long(max_chars)
        return blocks
    if max_chars is not None and len(text) > max_chars:
        raise text_too_long(max_chars)
    if mime_type == MARKDOWN:
        return parse_markdown(text)
    if mime_type == PLAIN:
        return parse_plain(text)
    raise ParseError(f"unsupported document type {mime_type}")


def _normalize(text: str) -> str:
    return re.sub(r"[ \t\f\v\u00a0]+", " ", text).strip()


def _paragraphs(text: str, page: int | None = None) -> list[Block]:
    blocks = []
    for raw in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        lines = [_normalize(line) for line in raw.split("\n")]
        paragraph = "\n".join(line for line in lines if line)
        if paragraph:
            blocks.append(Block(paragraph, page=page))
    return blocks


def parse_plain(text: str) -> list[Block]:
    return _paragraphs(text)


_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")


def _inline_markdown(text: str) -> str:
    return _LINK.sub(r"\1", _IMAGE.sub(r"\1", text))


def parse_markdown(text: str) -> list[Block]:
    blocks: list[Block] = []
    paragraph: list[str] = []
    fence: str | None = None
    code: list[str] = []

    def flush() -> None:
        if paragraph:
            blocks.extend(_paragraphs(_inline_markdown("\n".join(paragraph))))
            paragraph.clear()

    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if fence is not None:
            if line.strip().startswith(fence):
                if any(c.strip() for c in code):
                    blocks.append(Block("\n".join(code).strip("\n")))
                fence, code = None, []
            else:
                code.append(line)
            continue
        opening = _FENCE.match(line)
        if opening:
            flush()
            fence = opening.group(1)
            continue
        heading = _ATX.match(line)
        if heading:
            flush()
            if heading.group(2).strip():
                blocks.append(
                    Block(_inline_markdown(heading.group(2).strip()), level=len(heading.group(1)))
                )
            continue
        underline = _SETEXT.match(line)
        if underline and len(paragraph) == 1:
            title = paragraph.pop()
            flush()
            blocks.append(
                Block(
                    _inline_markdown(title.strip()), level=1 if underline.group(1)[0] == "=" else 2
                )
            )
            continue
        if not line.strip():
            flush()
            continue
        paragraph.append(line)
    flush()
    if fence is not None and any(c.strip() for c in code):
        blocks.append(Block("\n".join(code).strip("\n")))
    return blocks


class _TextExtractor(HTMLParser):
    """Visible text only: scripts, styles and other non-content elements are dropped."""

    SKIP = frozenset(
        {
            "script",
            "style",
            "noscript",
            "template",
            "svg",
            "math",
            "head",
            "iframe",
            "object",
            "canvas",
            "select",
            "button",
        }
    )
    HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
    BLOCKS = frozenset(
        {
            "p",
            "div",
            "section",
            "article",
            "main",
            "header",
            "footer",
            "nav",
            "aside",
            "li",
            "ul",
            "ol",
            "dl",
            "dt",
            "dd",
            "table",
            "tr",
            "td",
            "th",
            "thead",
            "tbody",
            "blockquote",
            "pre",
            "figure",
            "figcaption",
            "hr",
            "br",
            "form",
            "fieldset",
            "address",
            "details",
            "summary",
            "body",
            "html",
        }
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self._buffer: list[str] = []
        self._skip_depth = 0
        self._heading: int | None = None

    def _flush(self) -> None:
        text = _normalize(" ".join("".join(self._buffer).split()))
        self._buffer.clear()
        if text:
            self.blocks.append(Block(text, level=self._heading))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skip_depth += 1
        elif self._skip_depth == 0 and tag in self.HEADINGS:
            self._flush()
            self._heading = self.HEADINGS[tag]
        elif self._skip_depth == 0 and tag in self.BLOCKS:
            self._flush()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_depth == 0 and tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif self._skip_depth == 0 and tag in self.HEADINGS:
            self._flush()
            self._heading = None
        elif self._skip_depth == 0 and tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._skip_depth == 0:
            self._buffer.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def parse_html(text: str) -> list[Block]:
    extractor = _TextExtractor()
    extractor.feed(text)
    extractor.close()
    return extractor.blocks


def parse_pdf(data: bytes, *, max_chars: int | None = None) -> list[Block]:
    from pypdf import PdfReader

    blocks: list[Block] = []
    chars = 0
    try:
        # pypdf reports recoverable damage as warnings; they are not the owner's concern.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise ParseError("the PDF is password-protected")
            for number, page in enumerate(reader.pages, start=1):
                text = page.extract_text() or ""
                chars += len(text)
                if max_chars is not None and chars > max_chars:
                    raise text_too_long(max_chars)
                blocks.extend(_paragraphs(text, page=number))
    except ParseError:
        raise
    except Exception as exc:  # pypdf raises many types for damaged files
        logger.info("unreadable PDF: %r", exc)
        raise ParseError("the PDF could not be read; the file may be damaged") from None
    return blocks
