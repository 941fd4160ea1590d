"""What a file is, decided from its name and its bytes; the client's content type is ignored."""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath

from ragstream.domain.errors import InvalidInput

PLAIN = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
PDF = "application/pdf"
TEXT_TYPES = (PLAIN, MARKDOWN, HTML)
SUPPORTED_TYPES = (*TEXT_TYPES, PDF)
EXTENSIONS = {
    ".txt": PLAIN,
    ".text": PLAIN,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".html": HTML,
    ".htm": HTML,
    ".pdf": PDF,
}
DEFAULT_EXTENSION = {PLAIN: ".txt", MARKDOWN: ".md", HTML: ".html", PDF: ".pdf"}
MAX_FILENAME = 255
# Signatures of common binary formats, for a clear message when one arrives renamed.
BINARY_SIGNATURES = (
    b"PK\x03\x04",  # zip, docx, xlsx
    b"\x89PNG",
    b"GIF8",
    b"\xff\xd8\xff",  # jpeg
    b"MZ",  # windows executable
    b"\x7fELF",
    b"\x1f\x8b",  # gzip
    b"%PDF-",
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
UNSUPPORTED = "unsupported file type: upload .txt, .md, .html or .pdf"


def clean_filename(name: str | None) -> str:
    """The base name as given, or BAD_USER_INPUT for anything that reads like a path."""
    if name is None or not name.strip():
        raise InvalidInput("the file needs a name", field="file")
    name = unicodedata.normalize("NFC", name.strip())
    if _CONTROL.search(name) or len(name) > MAX_FILENAME:
        raise InvalidInput("the file name is not valid", field="file")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".."):
        raise InvalidInput("the file name must not contain a path", field="file")
    return name


def is_pdf(data: bytes) -> bool:
    return data.startswith(b"%PDF-")


def detect_type(filename: str, data: bytes) -> str:
    """The MIME type of an upload: the name says which format is meant, the bytes must agree.

    A name without an extension says nothing (clients such as gql send "0" for a file object
    without a name), so then the bytes alone decide.
    """
    suffix = PurePosixPath(filename).suffix.lower()
    if not suffix:
        return sniff_type(data)
    declared = EXTENSIONS.get(suffix)
    if declared is None:
        raise InvalidInput(UNSUPPORTED, field="file")
    if declared == PDF:
        if not is_pdf(data):
            raise InvalidInput("the file content is not a PDF", field="file")
        return PDF
    check_text(data)
    return declared


_MARKDOWN_HEADING = re.compile(r"^#{1,6}[ \t]+\S", re.MULTILINE)


def sniff_type(data: bytes) -> str:
    """The type of a file known only by its bytes: PDF, HTML, Markdown (a heading) or plain."""
    if is_pdf(data):
        return PDF
    head = data[:8192]
    if any(head.startswith(signature) for signature in BINARY_SIGNATURES) or b"\x00" in head:
        raise InvalidInput(UNSUPPORTED, field="file")
    text = decode_text(data)
    start = text[:512].lstrip().lower()
    if start.startswith(("<!doctype html", "<html")):
        return HTML
    if _MARKDOWN_HEADING.search(text):
        return MARKDOWN
    return PLAIN


def with_extension(filename: str, mime_type: str) -> str:
    """The name as given, with the type's extension when it has none."""
    return filename if PurePosixPath(filename).suffix else filename + DEFAULT_EXTENSION[mime_type]


def check_text(data: bytes) -> None:
    head = data[:8192]
    if any(head.startswith(signature) for signature in BINARY_SIGNATURES) or b"\x00" in head:
        raise InvalidInput("the file content is not text", field="file")
    decode_text(data)


def decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("text files must be UTF-8 encoded", field="file") from None


def filename_for(title: str, mime_type: str) -> str:
    """A file name for text created without a file: the title, made safe, plus the extension."""
    stem = re.sub(r"[^\w.-]+", "-", unicodedata.normalize("NFKC", title)).strip("-.")[:100]
    return (stem or "document") + DEFAULT_EXTENSION[mime_type]
