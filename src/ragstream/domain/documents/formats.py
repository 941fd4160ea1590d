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
UNSUPPORTED = "unsupported file type: upload .txt, .md, .html or .pdf"
PATH_REFUSAL = "the file name must not contain a path"
# Characters that reorder or hide text: a name such as "invoice\u202efdp.exe" reads as another.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
# Control characters, unpaired surrogates, line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_DRIVE = re.compile(r"^[A-Za-z]:")


def names_a_path(name: str) -> bool:
    """POSIX and Windows paths alike: separators, drive letters (``C:x``), UNC, dot segments."""
    return (
        "/" in name
        or "\\" in name
        or _DRIVE.match(name) is not None
        or name in (".", "..")
        or name.startswith("..")
    )


def _blank(text: str) -> bool:
    """Only whitespace and invisible formatting characters (zero-width spaces and the like)."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)


def clean_filename(name: str | None) -> str:
    """The base name as given (NFC), or BAD_USER_INPUT for a path, control or bidi characters,
    or a name with nothing visible before its extension."""
    if name is None or _blank(name):
        raise InvalidInput("the file needs a name", field="file")
    name = unicodedata.normalize("NFC", name.strip())
    if len(name) > MAX_FILENAME or any(
        unicodedata.category(c) in _REFUSED_CATEGORIES or c in BIDI_CONTROLS for c in name
    ):
        raise InvalidInput("the file name is not valid", field="file")
    if names_a_path(name):
        raise InvalidInput(PATH_REFUSAL, field="file")
    if _blank(name.rpartition(".")[0] if "." in name else name):  # ".md" has no name
        raise InvalidInput("the file needs a name", field="file")
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
