"""Intake: every format end to end over real multipart HTTP, and everything that is refused."""

from __future__ import annotations

import asyncio
import io

import asyncpg
import pytest
from gql import Client, FileVar, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXAsyncTransport
from sqlalchemy import text

from ragstream.settings import Settings
from tests.conftest import make_settings
from tests.documents_support import (
    SEARCH,
    UPLOAD,
    create,
    ingest_text,
    make_pdf,
    upload,
    wait_for_status,
)
from tests.support import OPERATION_TIMEOUT, LiveServer, running_server

CHUNKS = """query($id: ID!) {
  document(id: $id) { chunkCount chunks(first: 100) { totalCount edges { node {
    ordinal content page headingPath tokenCount } } } }
}"""


async def _count(server: LiveServer, table: str) -> int:
    async with server.state.sessionmaker() as session:
        return int(await session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)  # noqa: S608


async def _chunks(server: LiveServer, token: str, document_id: str) -> list[dict[str, object]]:
    data = (await server.execute(CHUNKS, {"id": document_id}, token=token)).ok()
    return [edge["node"] for edge in data["document"]["chunks"]["edges"]]


async def _upload_ready(
    server: LiveServer, token: str, filename: str, data: bytes
) -> dict[str, object]:
    status, result = await upload(server, token, filename, data)
    assert status == 200
    created = result.ok()["uploadDocument"]
    assert created["status"] == "PENDING"
    document = await wait_for_status(server, token, created["id"])
    assert document["status"] == "READY", document
    return document


async def test_plain_text_upload_becomes_searchable(server: LiveServer) -> None:
    account = await server.register()
    body = "Quarterly inventory counts happen on the first Monday.\n\nAsk the warehouse lead."
    document = await _upload_ready(server, account.access_token, "inventory.txt", body.encode())

    assert document["mimeType"] == "text/plain"
    assert document["filename"] == "inventory.txt"
    assert document["title"] == "inventory"
    assert document["sizeBytes"] == len(body.encode())
    chunks = await _chunks(server, account.access_token, str(document["id"]))
    assert [c["content"] for c in chunks] == [
        "Quarterly inventory counts happen on the first Monday.\n\nAsk the warehouse lead."
    ]
    hits = (
        await server.execute(SEARCH, {"q": "when are inventory counts"}, token=account.access_token)
    ).ok()["search"]
    assert hits[0]["document"]["id"] == document["id"]


async def test_markdown_keeps_heading_paths(server: LiveServer) -> None:
    account = await server.register()
    body = (
        "# Handbook\n\nWelcome aboard.\n\n## Travel\n\nBook trains over flights under 500 km.\n\n"
        "### Receipts\n\nScan every receipt within a week.\n\n```\ncode stays together\n```\n"
    )
    document = await _upload_ready(server, account.access_token, "handbook.md", body.encode())

    assert document["mimeType"] == "text/markdown"
    chunks = await _chunks(server, account.access_token, str(document["id"]))
    assert [(c["headingPath"], c["content"]) for c in chunks] == [
        (["Handbook"], "Welcome aboard."),
        (["Handbook", "Travel"], "Book trains over flights under 500 km."),
        (
            ["Handbook", "Travel", "Receipts"],
            "Scan every receipt within a week.\n\ncode stays together",
        ),
    ]


async def test_html_keeps_text_only(server: LiveServer) -> None:
    account = await server.register()
    body = (
        "<!doctype html><html><head><title>t</title><style>p { color: red }</style>"
        "<script>stealCookies()</script></head><body><h1>Returns</h1>"
        "<p>Items can be returned within <b>30 days</b>.</p><noscript>enable js</noscript>"
        "<ul><li>Keep the box</li><li>Bring the receipt</li></ul></body></html>"
    )
    document = await _upload_ready(server, account.access_token, "returns.html", body.encode())

    assert document["mimeType"] == "text/html"
    chunks = await _chunks(server, account.access_token, str(document["id"]))
    assert len(chunks) == 1
    assert chunks[0]["headingPath"] == ["Returns"]
    assert chunks[0]["content"] == (
        "Items can be returned within 30 days.\n\nKeep the box\n\nBring the receipt"
    )


async def test_pdf_keeps_page_numbers(server: LiveServer) -> None:
    account = await server.register()
    pdf = make_pdf(
        [
            ["The boiler is serviced every autumn."],
            ["Emergency contact: facilities desk, extension 4410."],
        ]
    )
    document = await _upload_ready(server, account.access_token, "facilities.pdf", pdf)

    assert document["mimeType"] == "application/pdf"
    chunks = await _chunks(server, account.access_token, str(document["id"]))
    assert [(c["page"], c["content"]) for c in chunks] == [
        (1, "The boiler is serviced every autumn."),
        (2, "Emergency contact: facilities desk, extension 4410."),
    ]
    hits = (
        await server.execute(
            SEARCH, {"q": "emergency contact extension"}, token=account.access_token
        )
    ).ok()["search"]
    assert hits[0]["chunk"]["page"] == 2


async def test_long_pdf_chunks_start_on_their_page(settings: Settings) -> None:
    settings = settings.model_copy(update={"chunk_target_tokens": 40, "chunk_overlap_tokens": 0})
    async with running_server(settings) as server:
        account = await server.register()
        first = [f"Page one sentence number {i} about pumps." for i in range(12)]
        second = [f"Page two sentence number {i} about valves." for i in range(12)]
        document = await _upload_ready(
            server, account.access_token, "manual.pdf", make_pdf([first, second])
        )
        chunks = await _chunks(server, account.access_token, str(document["id"]))

    assert len(chunks) > 2
    assert [c["ordinal"] for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        content = str(chunk["content"])
        assert ("pumps" in content) != ("valves" in content)
        assert chunk["page"] == (1 if "pumps" in content else 2)


async def test_create_document_from_text(server: LiveServer) -> None:
    account = await server.register()
    document = await ingest_text(
        server,
        account.access_token,
        "# Parking\n\nVisitors park in bay C.",
        title="Parking rules",
        mime_type="text/markdown",
    )
    assert document["filename"] == "Parking-rules.md"
    assert document["chunkCount"] == 1


@pytest.mark.parametrize(
    ("filename", "data", "message"),
    [
        ("setup.exe", b"MZ\x90\x00binary", "unsupported file type"),
        ("report.docx", b"PK\x03\x04zip", "unsupported file type"),
        ("notes", b"MZ\x90\x00binary without a name", "unsupported file type"),
        ("scan.pdf", b"just text pretending to be a pdf", "not a PDF"),
        ("notes.txt", b"%PDF-1.4 actually a pdf", "not text"),
        ("image.md", b"\x89PNG\r\n\x1a\nrest", "not text"),
        ("latin1.txt", "caf\u00e9".encode("latin-1"), "UTF-8"),
        ("n" * 300 + ".txt", b"hello", "not valid"),
        ("invoice\u202etxt.md", b"hello", "not valid"),
        ("left\u2066to\u2069right.md", b"hello", "not valid"),
        ("del\x7fname.md", b"hello", "not valid"),
        ("nel\x85name.md", b"hello", "not valid"),
        ("line\u2028break.md", b"hello", "not valid"),
        (" .md", b"hello", "needs a name"),
        ("\u200b\u3000.txt", b"hello", "needs a name"),
        ("\u3000", b"hello", "needs a name"),
    ],
)
async def test_refused_uploads_store_nothing(
    server: LiveServer, filename: str, data: bytes, message: str
) -> None:
    account = await server.register()
    status, result = await upload(server, account.access_token, filename, data)

    assert status == 200
    assert result.code == "BAD_USER_INPUT"
    assert result.errors[0]["extensions"]["field"] == "file"
    assert message in result.errors[0]["message"]
    assert await _count(server, "documents") == 0
    assert await _count(server, "procrastinate_jobs") == 0


@pytest.mark.parametrize(
    "filename",
    [
        "C:\\x.md",
        "c:\\docs\\x.md",
        "C:x.md",
        "\\\\server\\share\\x.md",
        "..\\..\\boot.ini.txt",
        "a\\b.txt",
        "../../etc/passwd.txt",
        "dir/notes.txt",
        "..",
    ],
)
async def test_every_path_form_is_refused_before_the_name_is_shortened(
    server: LiveServer, filename: str
) -> None:
    # The multipart parser keeps only "x.md" of "C:\x.md": the raw header is checked first.
    account = await server.register()
    status, result = await upload(server, account.access_token, filename, b"hello")

    assert status == 400
    assert result.code == "BAD_USER_INPUT"
    assert result.errors[0]["extensions"]["field"] == "file"
    assert "path" in result.errors[0]["message"]
    assert await _count(server, "documents") == 0
    assert await _count(server, "procrastinate_jobs") == 0


async def test_file_names_are_stored_in_nfc(server: LiveServer) -> None:
    account = await server.register()
    status, result = await upload(server, account.access_token, "cafe\u0301.txt", b"hello")
    assert status == 200
    assert result.ok()["uploadDocument"]["filename"] == "caf\u00e9.txt"


async def test_oversized_upload_is_refused(database_url: str, tmp_path: object) -> None:
    settings = make_settings(database_url, tmp_path, max_upload_bytes=1_000)  # type: ignore[arg-type]
    async with running_server(settings) as server:
        account = await server.register()
        status, result = await upload(server, account.access_token, "big.txt", b"a" * 1_001)
        at_limit, ok = await upload(server, account.access_token, "fits.txt", b"b" * 1_000)
        raw = await create(server, account.access_token, "c" * 1_001)

        assert status == 200
        assert result.code == "BAD_USER_INPUT"
        assert "larger than 1000 bytes" in result.errors[0]["message"]
        assert raw.code == "BAD_USER_INPUT"
        assert raw.errors[0]["extensions"]["field"] == "content"
        assert at_limit == 200
        ok.ok()
        assert await _count(server, "documents") == 1


async def test_multipart_without_preflight_header_is_refused(server: LiveServer) -> None:
    account = await server.register()
    status, result = await upload(server, account.access_token, "a.txt", b"hello", preflight=False)
    assert status == 400
    assert result.code == "BAD_USER_INPUT"
    assert "send `Apollo-Require-Preflight: true`" in result.errors[0]["message"]
    assert await _count(server, "documents") == 0


async def test_the_gql_client_shows_which_header_an_upload_lacks(live_server: LiveServer) -> None:
    # Given gql's upload, sent without the preflight header
    account = await live_server.register()
    transport = HTTPXAsyncTransport(
        url=live_server.graphql_url, headers={"Authorization": f"Bearer {account.access_token}"}
    )
    request = GraphQLRequest(UPLOAD, variable_values={"file": FileVar(io.BytesIO(b"hello"))})

    # When it is sent, Then gql reports the server's message, which names the header
    async with Client(transport=transport, execute_timeout=OPERATION_TIMEOUT) as session:
        with pytest.raises(TransportQueryError) as refused:
            await session.execute(request, upload_files=True)
    assert refused.value.errors is not None
    assert refused.value.errors[0]["extensions"] == {"code": "BAD_USER_INPUT"}
    assert "Apollo-Require-Preflight: true" in str(refused.value)
    assert await _count(live_server, "documents") == 0


async def test_upload_needs_sign_in(server: LiveServer) -> None:
    status, result = await upload(server, None, "a.txt", b"hello")
    assert status == 200
    assert result.code == "UNAUTHENTICATED"
    assert await _count(server, "documents") == 0


async def test_duplicate_content_names_the_existing_document(server: LiveServer) -> None:
    owner = await server.register()
    other = await server.register()
    _, first = await upload(server, owner.access_token, "a.txt", b"same bytes")
    existing = first.ok()["uploadDocument"]["id"]

    _, again = await upload(server, owner.access_token, "b.txt", b"same bytes", title="Copy")
    raw_again = await create(server, owner.access_token, "same bytes")
    _, someone_else = await upload(server, other.access_token, "a.txt", b"same bytes")

    assert again.code == "CONFLICT"
    assert again.errors[0]["extensions"]["existingId"] == existing
    assert existing in again.errors[0]["message"]
    assert raw_again.code == "CONFLICT"
    someone_else.ok()
    assert await _count(server, "documents") == 2


async def test_the_same_content_sent_twice_at_once_makes_one_document(server: LiveServer) -> None:
    """Uploads of the same bytes racing each other: one document, and the others are refused
    with CONFLICT naming it (not an unexpected error)."""
    owner = await server.register()

    results = await asyncio.gather(
        *(create(server, owner.access_token, "raced bytes", title=f"Copy {i}") for i in range(4))
    )

    created = [r.ok()["createDocument"]["id"] for r in results if not r.errors]
    refused = [r for r in results if r.errors]
    assert len(created) == 1
    assert [r.code for r in refused] == ["CONFLICT"] * 3
    assert {r.errors[0]["extensions"]["existingId"] for r in refused} == set(created)
    assert await _count(server, "documents") == 1
    assert await _count(server, "document_contents") == 1


async def test_only_admins_share_documents(server: LiveServer) -> None:
    user = await server.register()
    admin = await server.register()
    await server.make_admin(admin)

    _, refused = await upload(server, user.access_token, "a.txt", b"for all", visibility="SHARED")
    refused_raw = await create(server, user.access_token, "for all", visibility="SHARED")
    _, shared = await upload(server, admin.access_token, "a.txt", b"for all", visibility="SHARED")

    assert refused.code == "FORBIDDEN"
    assert refused_raw.code == "FORBIDDEN"
    assert shared.ok()["uploadDocument"]["visibility"] == "SHARED"
    assert await _count(server, "documents") == 1


@pytest.mark.parametrize(
    ("mime_type", "content", "field"),
    [
        ("application/pdf", "text", "mimeType"),
        ("image/png", "text", "mimeType"),
        ("text/plain", "   \n ", "content"),
        ("text/plain", "nul\x00byte", "content"),
    ],
)
async def test_create_document_validation(
    server: LiveServer, mime_type: str, content: str, field: str
) -> None:
    account = await server.register()
    result = await create(server, account.access_token, content, mime_type=mime_type)
    assert result.code == "BAD_USER_INPUT"
    assert result.errors[0]["extensions"]["field"] == field
    assert await _count(server, "documents") == 0


@pytest.mark.parametrize(
    ("filename", "data", "error"),
    [
        ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage", "PDF could not be read"),
        ("empty.html", b"<html><script>only()</script><style>x{}</style></html>", "no text"),
        ("blank.md", b"# \n\n   \n", "no text"),
    ],
)
async def test_unreadable_content_fails_with_a_readable_error(
    server: LiveServer, filename: str, data: bytes, error: str
) -> None:
    account = await server.register()
    _, result = await upload(server, account.access_token, filename, data)
    created = result.ok()["uploadDocument"]

    document = await wait_for_status(server, account.access_token, created["id"])

    assert document["status"] == "FAILED"
    assert error in document["error"]
    assert document["chunkCount"] == 0
    assert await _count(server, "chunks") == 0


async def test_html_bomb_is_flattened_not_expanded(server: LiveServer) -> None:
    account = await server.register()
    nested = "<div>" * 20_000 + "deep text" + "</div>" * 20_000
    body = f"<html><body>{nested}<p>{'&amp;' * 1000}</p></body></html>".encode()
    document = await _upload_ready(server, account.access_token, "bomb.html", body)
    chunks = await _chunks(server, account.access_token, str(document["id"]))
    assert str(chunks[0]["content"]).startswith("deep text")


async def test_embedded_connection_used_by_template(embedded_pg: object, template: str) -> None:
    """The migrated template already carries the job queue's schema."""
    conn = await asyncpg.connect(embedded_pg.libpq_uri(template))  # type: ignore[attr-defined]
    try:
        assert await conn.fetchval("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
    finally:
        await conn.close()


async def test_a_file_object_without_a_name_is_typed_from_its_bytes(
    live_server: LiveServer,
) -> None:
    # Given gql's upload of an open file object, which it sends under the name "0"
    account = await live_server.register()
    transport = HTTPXAsyncTransport(
        url=live_server.graphql_url,
        headers={
            "Authorization": f"Bearer {account.access_token}",
            "Apollo-Require-Preflight": "true",
        },
    )
    markdown = b"Notes\n\n## Rollout\nLeeds goes first, in March.\n"
    request = GraphQLRequest(UPLOAD, variable_values={"file": FileVar(io.BytesIO(markdown))})

    # When it is uploaded
    async with Client(transport=transport, execute_timeout=OPERATION_TIMEOUT) as session:
        created = (await session.execute(request, upload_files=True))["uploadDocument"]

    # Then its bytes say it is Markdown, and the stored name says so too
    assert (created["mimeType"], created["filename"]) == ("text/markdown", "0.md")
    ready = await wait_for_status(live_server, account.access_token, created["id"])
    assert (ready["status"], ready["chunkCount"]) == ("READY", 2)  # the intro, the section
