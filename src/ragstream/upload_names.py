"""File names of multipart uploads, read as the body streams by.

Starlette's multipart parser keeps only the last segment of a name that looks like a full Windows
path (``C:\\docs\\x.md`` arrives as ``x.md``), so the path form would never be seen, let alone
refused. This reads each part's raw headers before the parser does and refuses any name that
names a path; the rest of the name rules live in ``domain/documents/formats.clean_filename``.
"""

from __future__ import annotations

import re

from starlette.types import Message, Receive, Scope

from ragstream.domain.documents.formats import PATH_REFUSAL, names_a_path
from ragstream.domain.errors import InvalidInput

_BOUNDARY = re.compile(rb'boundary="?([^";]+)"?', re.IGNORECASE)
_FILENAME = re.compile(rb'(?:^|[;\s])filename="((?:[^"\\]|\\.)*)"|(?:^|[;\s])filename=([^;\r\n]*)')
# A part's headers are short; past this the body is malformed and left to the parser to refuse.
MAX_HEADER_BYTES = 16 * 1024


class UploadNameRefused(Exception):
    """Raised from the body stream; carries the answer for the client."""

    def __init__(self, error: InvalidInput) -> None:
        super().__init__(error.message)
        self.error = error


def boundary_of(content_type: bytes) -> bytes | None:
    match = _BOUNDARY.search(content_type)
    return match.group(1) if match else None


class UploadNameScanner:
    """Fed each body chunk in order; raises UploadNameRefused at the first path-like name."""

    def __init__(self, boundary: bytes) -> None:
        self.delimiter = b"--" + boundary
        self.buffer = b""
        self.in_headers = False

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        while True:
            if not self.in_headers:
                start = self.buffer.find(self.delimiter)
                if start < 0:
                    # Keep just enough to find a delimiter split across two chunks.
                    self.buffer = self.buffer[-len(self.delimiter) :]
                    return
                self.buffer = self.buffer[start + len(self.delimiter) :]
                self.in_headers = True
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self.buffer, self.in_headers = b"", False
                return
            self._check(self.buffer[:end])
            self.buffer = self.buffer[end + 4 :]
            self.in_headers = False

    def _check(self, headers: bytes) -> None:
        for line in headers.split(b"\r\n"):
            if not line.lower().startswith(b"content-disposition:"):
                continue
            match = _FILENAME.search(line)
            if match is None:
                continue
            raw = match.group(1) if match.group(1) is not None else match.group(2)
            if names_a_path(raw.decode("utf-8", "replace").strip()):
                raise UploadNameRefused(InvalidInput(PATH_REFUSAL, field="file"))


def scan_upload_names(scope: Scope, receive: Receive) -> Receive:
    """``receive`` for a multipart request, checking each part's file name on the way."""
    headers = dict(scope.get("headers") or [])
    content_type = headers.get(b"content-type", b"")
    boundary = boundary_of(content_type) if content_type.lower().startswith(b"multipart/") else None
    if boundary is None:
        return receive
    scanner = UploadNameScanner(boundary)

    async def scanning_receive() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            scanner.feed(message.get("body", b""))
        return message

    return scanning_receive
