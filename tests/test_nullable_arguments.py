"""Arguments with a default are nullable: an explicit null or a null variable means the default."""

from __future__ import annotations

import json
from typing import Any

from graphql import parse

from ragstream.schema import build_schema
from ragstream.schema.list_size import estimate_list_items
from ragstream.settings import Settings
from tests.chat_support import MESSAGE_STREAM, chat_all, joined, new_conversation, subscribe_all
from tests.documents_support import CREATE, DOCUMENT_FIELDS, SEARCH, ingest_text
from tests.support import LiveServer

SEARCH_NULL_LITERAL = """query($q: String!) {
  search(query: $q, limit: null) { chunk { id } }
}"""
CREATE_NULL_VISIBILITY = f"""mutation($content: String!) {{
  createDocument(input: {{title: "Null", content: $content, mimeType: "text/plain",
                          visibility: null}}) {{ {DOCUMENT_FIELDS} }}
}}"""
UPLOAD_NULL_VISIBILITY = f"""mutation($file: Upload!) {{
  uploadDocument(file: $file, visibility: null) {{ {DOCUMENT_FIELDS} }}
}}"""


def _ids(result: dict[str, Any]) -> list[str]:
    return [hit["chunk"]["id"] for hit in result["search"]]


async def test_search_limit_null_or_a_null_variable_gives_the_default_five(
    server: LiveServer,
) -> None:
    # given more readable passages than the default limit
    account = await server.register()
    for n in range(7):
        await ingest_text(server, account.access_token, f"Pallet shipping policy number {n}.")
    token = account.access_token

    # when the limit is omitted, null in the query, or a null variable of type Int
    omitted = (await server.execute(SEARCH, {"q": "pallet shipping"}, token=token)).ok()
    literal = await server.execute(SEARCH_NULL_LITERAL, {"q": "pallet shipping"}, token=token)
    variable = await server.execute(SEARCH, {"q": "pallet shipping", "limit": None}, token=token)

    # then each is valid and answers like the default
    assert len(_ids(omitted)) == 5
    assert _ids(literal.ok()) == _ids(omitted)
    assert _ids(variable.ok()) == _ids(omitted)


async def test_create_document_visibility_null_means_private(server: LiveServer) -> None:
    account = await server.register()

    literal = await server.execute(
        CREATE_NULL_VISIBILITY, {"content": "Null visibility."}, token=account.access_token
    )
    variable = await server.execute(
        CREATE,
        {
            "input": {
                "title": "N",
                "content": "Null variable.",
                "mimeType": "text/plain",
                "visibility": None,
            }
        },
        token=account.access_token,
    )

    assert literal.ok()["createDocument"]["visibility"] == "PRIVATE"
    assert variable.ok()["createDocument"]["visibility"] == "PRIVATE"


async def test_upload_document_visibility_null_means_private(server: LiveServer) -> None:
    account = await server.register()

    async with server.http_client() as client:
        response = await client.post(
            server.graphql_url,
            data={
                "operations": json.dumps(
                    {"query": UPLOAD_NULL_VISIBILITY, "variables": {"file": None}}
                ),
                "map": json.dumps({"0": ["variables.file"]}),
            },
            files={"0": ("notes.txt", b"Uploaded with a null visibility.", "text/plain")},
            headers={
                "Apollo-Require-Preflight": "true",
                "Authorization": f"Bearer {account.access_token}",
            },
        )

    body = response.json()
    assert body.get("errors") is None, body
    assert body["data"]["uploadDocument"]["visibility"] == "PRIVATE"


async def test_message_stream_from_offset_null_replays_the_whole_answer(
    server: LiveServer,
) -> None:
    # given a finished answer
    account = await server.register()
    conversation_id = await new_conversation(server, account.access_token)
    events = await chat_all(server, account.access_token, conversation_id, "Hello?")
    answer = events[-1]["message"]

    # when it is watched with a null fromOffset
    replay = await subscribe_all(
        server, account.access_token, MESSAGE_STREAM, {"id": answer["id"], "from": None}
    )

    # then all of its text comes again, from offset 0
    assert replay[-1]["__typename"] == "GenerationCompleted"
    assert joined(replay) == answer["content"] != ""


def test_a_null_limit_counts_as_the_default_in_the_list_size_estimate(settings: Settings) -> None:
    schema = build_schema(settings)._schema
    literal = parse('{ search(query: "x", limit: null) { score } }')
    variable = parse('query($n: Int) { search(query: "x", limit: $n) { score } }')

    assert estimate_list_items(schema, literal, {}) == 5
    assert estimate_list_items(schema, variable, {"n": None}) == 5
    assert estimate_list_items(schema, variable, {}) == 5
    assert estimate_list_items(schema, variable, {"n": 9}) == 9
