"""Reading, listing, deleting and reprocessing documents; who sees what."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from ragstream.domain.documents.reading import embedding_text
from ragstream.domain.llm.embeddings import HashingEmbedder
from tests.documents_support import (
    GET,
    SEARCH,
    ingest_text,
    wait_for_status,
)
from tests.support import LiveServer

LIST = """query($first: Int, $after: String, $filter: DocumentFilter) {
  documents(first: $first, after: $after, filter: $filter) {
    totalCount pageInfo { hasNextPage endCursor } edges { node { id title status visibility } }
  }
}"""
CHUNKS = """query($id: ID!, $first: Int, $after: String) {
  document(id: $id) { chunks(first: $first, after: $after) {
    totalCount pageInfo { hasNextPage endCursor } edges { node { ordinal } } } }
}"""
DELETE = "mutation($id: ID!) { deleteDocument(id: $id) }"
REPROCESS = "mutation($id: ID!) { reprocessDocument(id: $id) { id status error chunkCount } }"


async def _count(server: LiveServer, sql: str) -> int:
    async with server.state.sessionmaker() as session:
        return int(await session.scalar(text(sql)) or 0)


async def test_private_documents_are_invisible_to_others(server: LiveServer) -> None:
    owner = await server.register()
    other = await server.register()
    secret = await ingest_text(server, owner.access_token, "The vault code is 7741 zebra.")

    as_other = await server.execute(GET, {"id": secret["id"]}, token=other.access_token)
    missing = await server.execute(
        GET, {"id": "00000000-0000-0000-0000-000000000000"}, token=other.access_token
    )
    malformed = await server.execute(GET, {"id": "not-a-uuid"}, token=other.access_token)
    listed = (await server.execute(LIST, {}, token=other.access_token)).ok()["documents"]
    hits = (await server.execute(SEARCH, {"q": "vault code zebra"}, token=other.access_token)).ok()
    chunks = await server.execute(CHUNKS, {"id": secret["id"]}, token=other.access_token)

    assert as_other.code == missing.code == malformed.code == "NOT_FOUND"
    assert as_other.errors[0]["message"] == missing.errors[0]["message"]
    assert listed["totalCount"] == 0
    assert hits["search"] == []
    assert chunks.code == "NOT_FOUND"
    own_hits = (await server.execute(SEARCH, {"q": "vault code"}, token=owner.access_token)).ok()
    assert own_hits["search"][0]["document"]["id"] == secret["id"]


async def test_shared_documents_are_readable_by_everyone_but_managed_by_admins(
    server: LiveServer,
) -> None:
    admin = await server.register()
    await server.make_admin(admin)
    user = await server.register()
    shared = await ingest_text(
        server, admin.access_token, "Office hours are nine to five.", visibility="SHARED"
    )

    read = (await server.execute(GET, {"id": shared["id"]}, token=user.access_token)).ok()
    hits = (await server.execute(SEARCH, {"q": "office hours"}, token=user.access_token)).ok()
    delete = await server.execute(DELETE, {"id": shared["id"]}, token=user.access_token)
    reprocess = await server.execute(REPROCESS, {"id": shared["id"]}, token=user.access_token)

    assert read["document"]["visibility"] == "SHARED"
    assert hits["search"][0]["document"]["id"] == shared["id"]
    assert delete.code == "FORBIDDEN"
    assert reprocess.code == "FORBIDDEN"
    assert await _count(server, "SELECT count(*) FROM documents") == 1
    assert await _count(server, "SELECT count(*) FROM chunks") == 1


OWNER = "query($id: ID!) { document(id: $id) { id owner { id email } } }"
OWNERS = "{ documents { edges { node { id owner { email } } } } }"
SEARCH_OWNERS = "query($q: String!) { search(query: $q) { document { id owner { email } } } }"


async def _owners_seen(server: LiveServer, token: str, document_id: str) -> dict[str, str | None]:
    """Owner email (or None) per document id, through `document`, `documents` and `search`;
    a document met twice must show the same owner both times."""
    one = (await server.execute(OWNER, {"id": document_id}, token=token)).ok()
    listed = (await server.execute(OWNERS, token=token)).ok()
    found = (await server.execute(SEARCH_OWNERS, {"q": "canteen"}, token=token)).ok()
    nodes = [one["document"]]
    nodes += [edge["node"] for edge in listed["documents"]["edges"]]
    nodes += [hit["document"] for hit in found["search"]]
    owners: dict[str, str | None] = {}
    for node in nodes:
        email = None if node["owner"] is None else node["owner"]["email"]
        assert owners.setdefault(node["id"], email) == email
    return owners


async def test_owner_is_shown_only_to_the_owner_and_admins(server: LiveServer) -> None:
    admin = await server.register()
    await server.make_admin(admin)
    other_admin = await server.register()
    await server.make_admin(other_admin)
    user = await server.register()
    shared = await ingest_text(
        server, admin.access_token, "Canteen menu changes weekly.", visibility="SHARED"
    )
    own = await ingest_text(server, user.access_token, "My canteen notes.")

    as_user = await _owners_seen(server, user.access_token, shared["id"])
    as_admin = await _owners_seen(server, admin.access_token, shared["id"])
    as_other_admin = await _owners_seen(server, other_admin.access_token, shared["id"])
    user_own = (await server.execute(OWNER, {"id": own["id"]}, token=user.access_token)).ok()

    assert as_user == {shared["id"]: None, own["id"]: user.email}
    # Admins see every document in lists; search stays on their own and shared ones.
    assert as_admin == as_other_admin == {shared["id"]: admin.email, own["id"]: user.email}
    assert user_own["document"]["owner"] == {"id": user.id, "email": user.email}


async def test_admin_sees_but_does_not_retrieve_private_documents(server: LiveServer) -> None:
    admin = await server.register()
    await server.make_admin(admin)
    user = await server.register()
    private = await ingest_text(server, user.access_token, "Payroll runs on the 25th.")

    seen = (await server.execute(GET, {"id": private["id"]}, token=admin.access_token)).ok()
    hits = (await server.execute(SEARCH, {"q": "payroll"}, token=admin.access_token)).ok()

    assert seen["document"]["id"] == private["id"]
    assert hits["search"] == []


async def test_list_filters_and_pages(server: LiveServer) -> None:
    account = await server.register()
    for i in range(5):
        await ingest_text(server, account.access_token, f"Document body {i}", title=f"Doc {i}")
    first = (await server.execute(LIST, {"first": 2}, token=account.access_token)).ok()
    second = (
        await server.execute(
            LIST,
            {"first": 2, "after": first["documents"]["pageInfo"]["endCursor"]},
            token=account.access_token,
        )
    ).ok()
    titles = [e["node"]["title"] for e in first["documents"]["edges"]] + [
        e["node"]["title"] for e in second["documents"]["edges"]
    ]
    searched = (
        await server.execute(LIST, {"filter": {"search": "doc 3"}}, token=account.access_token)
    ).ok()
    ready = (
        await server.execute(LIST, {"filter": {"status": "READY"}}, token=account.access_token)
    ).ok()
    failed = (
        await server.execute(LIST, {"filter": {"status": "FAILED"}}, token=account.access_token)
    ).ok()
    too_many = await server.execute(LIST, {"first": 101}, token=account.access_token)
    bad_cursor = await server.execute(LIST, {"after": "garbage"}, token=account.access_token)

    assert titles == ["Doc 4", "Doc 3", "Doc 2", "Doc 1"]
    assert first["documents"]["totalCount"] == 5
    assert [e["node"]["title"] for e in searched["documents"]["edges"]] == ["Doc 3"]
    assert ready["documents"]["totalCount"] == 5
    assert failed["documents"]["totalCount"] == 0
    assert too_many.code == "BAD_USER_INPUT"
    assert bad_cursor.code == "BAD_USER_INPUT"


async def test_chunks_page_in_order(server: LiveServer) -> None:
    account = await server.register()
    body = "\n\n".join(f"# Part {i}\n\nSection {i} text." for i in range(7))
    document = await ingest_text(server, account.access_token, body, mime_type="text/markdown")
    page = (
        await server.execute(CHUNKS, {"id": document["id"], "first": 4}, token=account.access_token)
    ).ok()["document"]["chunks"]
    rest = (
        await server.execute(
            CHUNKS,
            {"id": document["id"], "first": 4, "after": page["pageInfo"]["endCursor"]},
            token=account.access_token,
        )
    ).ok()["document"]["chunks"]
    ordinals = [e["node"]["ordinal"] for e in page["edges"] + rest["edges"]]
    assert ordinals == list(range(7))
    assert page["totalCount"] == 7
    assert page["pageInfo"]["hasNextPage"] is True
    assert rest["pageInfo"]["hasNextPage"] is False


async def test_offline_vectors_are_those_of_the_embedder_over_each_chunk(
    server: LiveServer,
) -> None:
    # Reading and the offline embedder share one trip to the work pool: the stored vectors are
    # still the embedder's vectors of each chunk with its title and headings.
    account = await server.register()
    body = "\n\n".join(f"# Part {i}\n\nValves and pumps, section {i}." for i in range(3))
    document = await ingest_text(
        server, account.access_token, body, mime_type="text/markdown", title="Plumbing"
    )
    async with server.state.sessionmaker() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT c.heading_path, c.content, c.embedding::text, d.title "
                    "FROM chunks c JOIN documents d ON d.id = c.document_id "
                    "WHERE c.document_id = :id ORDER BY c.ordinal"
                ),
                {"id": document["id"]},
            )
        ).all()
    embedder = HashingEmbedder(server.state.settings.embedding_dimensions)
    expected = embedder.embed_sync([embedding_text(r[3], r[0], r[1]) for r in rows])
    stored = [[float(x) for x in r[2].strip("[]").split(",")] for r in rows]
    assert len(rows) == 3
    for got, want in zip(stored, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-6)


async def test_delete_removes_chunks_and_file(server: LiveServer) -> None:
    owner = await server.register()
    other = await server.register()
    document = await ingest_text(server, owner.access_token, "Temporary content here.")

    by_other = await server.execute(DELETE, {"id": document["id"]}, token=other.access_token)
    assert by_other.code == "NOT_FOUND"
    assert await _count(server, "SELECT count(*) FROM chunks") == 1

    deleted = (await server.execute(DELETE, {"id": document["id"]}, token=owner.access_token)).ok()
    assert deleted["deleteDocument"] == document["id"]
    assert await _count(server, "SELECT count(*) FROM documents") == 0
    assert await _count(server, "SELECT count(*) FROM chunks") == 0
    assert await _count(server, "SELECT count(*) FROM document_contents") == 0
    again = await server.execute(DELETE, {"id": document["id"]}, token=owner.access_token)
    assert again.code == "NOT_FOUND"


async def test_reprocess_is_idempotent(server: LiveServer) -> None:
    owner = await server.register()
    other = await server.register()
    document = await ingest_text(server, owner.access_token, "Reprocess me, please.")
    chunk_ids = await _count(server, "SELECT count(DISTINCT id) FROM chunks")

    by_other = await server.execute(REPROCESS, {"id": document["id"]}, token=other.access_token)
    first = (await server.execute(REPROCESS, {"id": document["id"]}, token=owner.access_token)).ok()
    second = (
        await server.execute(REPROCESS, {"id": document["id"]}, token=owner.access_token)
    ).ok()
    done = await wait_for_status(server, owner.access_token, document["id"])

    assert by_other.code == "NOT_FOUND"
    assert first["reprocessDocument"]["status"] == "PENDING"
    assert second["reprocessDocument"]["status"] in ("PENDING", "PROCESSING", "READY")
    assert done["status"] == "READY"
    assert done["chunkCount"] == 1
    assert chunk_ids == 1
    assert await _count(server, "SELECT count(*) FROM chunks") == 1


async def test_search_validates_its_arguments(server: LiveServer) -> None:
    account = await server.register()
    empty = await server.execute(SEARCH, {"q": "   "}, token=account.access_token)
    too_many = await server.execute(SEARCH, {"q": "x", "limit": 51}, token=account.access_token)
    zero = await server.execute(SEARCH, {"q": "x", "limit": 0}, token=account.access_token)
    anonymous = await server.execute(SEARCH, {"q": "x"})

    assert empty.code == "BAD_USER_INPUT"
    assert empty.errors[0]["extensions"]["field"] == "query"
    assert too_many.code == zero.code == "BAD_USER_INPUT"
    assert too_many.errors[0]["extensions"]["field"] == "limit"
    assert anonymous.code == "UNAUTHENTICATED"
