"""Helpers for knowledge-base tests: multipart uploads over real HTTP, waiting, tiny PDFs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.support import LiveServer, Result

DOCUMENT_FIELDS = "id title filename mimeType sizeBytes visibility status error chunkCount"
UPLOAD = f"""mutation($file: Upload!, $title: String, $visibility: Visibility) {{
  uploadDocument(file: $file, title: $title, visibility: $visibility) {{ {DOCUMENT_FIELDS} }}
}}"""
CREATE = f"""mutation($input: CreateDocumentInput!) {{
  createDocument(input: $input) {{ {DOCUMENT_FIELDS} }}
}}"""
GET = f"query($id: ID!) {{ document(id: $id) {{ {DOCUMENT_FIELDS} }} }}"
SEARCH = """query($q: String!, $limit: Int) {
  search(query: $q, limit: $limit) {
    score chunk { id ordinal content page headingPath } document { id title }
  }
}"""


async def upload(
    server: LiveServer,
    token: str | None,
    filename: str,
    data: bytes,
    *,
    title: str | None = None,
    visibility: str | None = None,
    preflight: bool = True,
) -> tuple[int, Result]:
    """A GraphQL multipart request (the spec's operations/map/file parts) over HTTP."""
    variables: dict[str, Any] = {"file": None, "title": title}
    if visibility is not None:
        variables["visibility"] = visibility
    headers = {"Apollo-Require-Preflight": "true"} if preflight else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with server.http_client() as client:
        response = await client.post(
            "/graphql",
            data={
                "operations": json.dumps({"query": UPLOAD, "variables": variables}),
                "map": json.dumps({"0": ["variables.file"]}),
            },
            files={"0": (filename, data, "application/octet-stream")},
            headers=headers,
        )
    if response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        return response.status_code, Result(body.get("data"), body.get("errors") or [])
    return response.status_code, Result(None, [])


async def create(
    server: LiveServer,
    token: str,
    content: str,
    *,
    title: str = "Notes",
    mime_type: str = "text/plain",
    visibility: str = "PRIVATE",
) -> Result:
    return await server.execute(
        CREATE,
        {
            "input": {
                "title": title,
                "content": content,
                "mimeType": mime_type,
                "visibility": visibility,
            }
        },
        token=token,
    )


async def wait_for_status(
    server: LiveServer,
    token: str,
    document_id: str,
    statuses: tuple[str, ...] = ("READY", "FAILED"),
    within: float = 60.0,
) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            document: dict[str, Any] = (
                await server.execute(GET, {"id": document_id}, token=token)
            ).ok()["document"]
            if document["status"] in statuses:
                return document
            await asyncio.sleep(0.05)


async def ingest_text(
    server: LiveServer, token: str, content: str, **kwargs: Any
) -> dict[str, Any]:
    created = (await create(server, token, content, **kwargs)).ok()["createDocument"]
    document = await wait_for_status(server, token, created["id"])
    assert document["status"] == "READY", document
    return document


def _pdf_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[list[str]]) -> bytes:
    """A small valid PDF: one page per item, each a list of text lines (Helvetica)."""
    objects: list[bytes] = []
    page_ids = [4 + 2 * i for i in range(len(pages))]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{i} 0 R" for i in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for index, lines in enumerate(pages):
        content_id = page_ids[index] + 1
        objects.append(
            (
                f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                f"/Resources << /Font << /F1 3 0 R >> >> /Contents {content_id} 0 R >>"
            ).encode()
        )
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        for line in lines:
            ops.append(f"({_pdf_string(line)}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


async def wait_until_idle(server: LiveServer, within: float = 120.0) -> None:
    """Until no document of the server's database is PENDING or PROCESSING."""
    from sqlalchemy import text

    async with asyncio.timeout(within):
        while True:
            async with server.state.sessionmaker() as session:
                left = await session.scalar(
                    text("SELECT count(*) FROM documents WHERE status IN ('PENDING', 'PROCESSING')")
                )
            if not left:
                return
            await asyncio.sleep(0.05)


async def ingest_common_word_corpus(server: LiveServer, token: str) -> None:
    """24 chunks holding "widget" and "pallets", one holding "widget" and "zebra", with the
    statistics autovacuum would gather after so many writes (so "widget" counts as common)."""
    from sqlalchemy import text

    for i in range(24):
        await create(server, token, f"Widget inventory report {i} about pallets.")
    await create(server, token, "Widget spotted at the zebra crossing.")
    await wait_until_idle(server)
    async with server.state.sessionmaker() as session:
        await session.execute(text("ANALYZE chunks"))
        await session.commit()
