"""GraphiQL in a real browser with the network cut off: it must work from ragstream alone."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from ragstream.graphiql import SCRIPTS, STYLESHEETS
from tests.browser import Page, chromium, chromium_executable
from tests.chat_support import new_conversation
from tests.conftest import make_settings
from tests.documents_support import ingest_text
from tests.support import LiveServer, running_server

QUERY_EDITOR = ".graphiql-query-editor .CodeMirror"
TOOL_EDITOR = '.graphiql-editor-tool[aria-label="{}"] .graphiql-editor:not(.hidden) .CodeMirror'
RESPONSE = ".graphiql-response .CodeMirror"

CHAT = """subscription Chat($input: SendMessageInput!) {
  chat(input: $input) {
    __typename
    ... on TokenDelta { offset delta }
    ... on GenerationCompleted { message { status content } }
  }
}"""


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[LiveServer]:
    # The offline providers, whatever the environment says: nothing may leave the machine.
    settings = make_settings(
        database_url, tmp_path, chat_provider="extractive", embedding_provider="hashing"
    )
    # The browser needs a real socket for the page, its files, requests and the websocket.
    async with running_server(settings, listen=True) as live:
        yield live


async def set_editor(page: Page, selector: str, text: str) -> None:
    await page.evaluate(
        f"document.querySelector({json.dumps(selector)}).CodeMirror.setValue({json.dumps(text)})"
    )


async def set_query(page: Page, text: str) -> None:
    await set_editor(page, QUERY_EDITOR, text)
    # GraphiQL parses the query (operation name and kind) a moment after an edit and then stores
    # it; running before that would send the previous operation.
    await page.wait_for(f"localStorage.getItem('graphiql:query') === {json.dumps(text)}")


async def set_tool(page: Page, tab: str, text: str) -> None:
    """Opens the Variables or Headers tab and fills it in."""
    button = (
        "[...document.querySelectorAll('.graphiql-editor-tools button')]"
        f".find(b => b.textContent === {json.dumps(tab)})"
    )
    await page.wait_for(f"Boolean({button})")
    await page.evaluate(f"({button}).click()")
    await page.wait_for_element(TOOL_EDITOR.format(tab))
    await set_editor(page, TOOL_EDITOR.format(tab), text)


async def run(page: Page) -> None:
    await page.wait_for_element(".graphiql-execute-button")
    await page.evaluate("document.querySelector('.graphiql-execute-button').click()")


async def response_when(page: Page, condition: str) -> dict[str, Any]:
    """Waits until the response pane holds JSON for which `condition` (on `r`) holds."""
    text = await page.wait_for(
        f"""(() => {{
          const text = document.querySelector({json.dumps(RESPONSE)}).CodeMirror.getValue();
          try {{ const r = JSON.parse(text); return ({condition}) ? text : null; }}
          catch (e) {{ return null; }}
        }})()"""
    )
    result: dict[str, Any] = json.loads(text)
    return result


async def test_graphiql_runs_a_query_and_a_chat_subscription_offline(server: LiveServer) -> None:
    # Given a browser, and a user with a document and a conversation
    executable = chromium_executable()
    account = await server.register()
    await ingest_text(
        server,
        account.access_token,
        "The warehouse in Lyon ships orders every Tuesday. Returns are handled in Porto.",
        title="Logistics",
    )
    conversation_id = await new_conversation(server, account.access_token)
    bearer = f"Bearer {account.access_token}"

    async with chromium(executable) as browser:
        page = await browser.new_page()
        # When GraphiQL loads from ragstream and its explorer shows the schema
        await page.send("Page.navigate", {"url": server.graphql_url})
        await page.wait_for_element(QUERY_EDITOR)
        explorer = 'button[aria-label="Show GraphiQL Explorer"]'
        await page.wait_for_element(explorer)
        await page.evaluate(f"document.querySelector({json.dumps(explorer)}).click()")
        await page.wait_for(
            "[...document.querySelectorAll('.graphiql-explorer-root span')]"
            ".some(s => s.textContent === 'evaluations')"
        )

        # and a dialog locks the page's scrolling with its inline style, allowed by its hash
        await page.evaluate(
            "document.querySelector('button[aria-label=\"Open settings dialog\"]').click()"
        )
        await page.wait_for_element("[role=dialog]")
        body_overflow = await page.evaluate("getComputedStyle(document.body).overflow")
        for kind in ("keyDown", "keyUp"):
            await page.send(
                "Input.dispatchKeyEvent",
                {"type": kind, "key": "Escape", "code": "Escape", "windowsVirtualKeyCode": 27},
            )
        await page.wait_for("document.querySelector('[role=dialog]') === null")

        # and a query runs with the token typed into the Headers tab
        await set_tool(page, "Headers", json.dumps({"Authorization": bearer}))
        await set_query(page, "query Me { me { id email } }")
        await run(page)
        me = await response_when(page, "r.data && r.data.me")

        # and a chat subscription streams its answer into the response pane
        question = "When do orders ship?"
        variables = {"input": {"conversationId": conversation_id, "content": question}}
        await set_tool(page, "Variables", json.dumps(variables))
        await set_query(page, CHAT)
        await run(page)
        completed = await response_when(
            page, "r.data && r.data.chat.__typename === 'GenerationCompleted'"
        )

    # Then the dialog's style applied
    assert body_overflow == "hidden"

    # and the query answered as the token's user
    assert me == {"data": {"me": {"id": account.id, "email": account.email}}}
    posts = [
        p["request"]
        for p in page.params_of("Network.requestWillBeSent")
        if p["request"]["method"] == "POST" and "query Me" in p["request"].get("postData", "")
    ]
    assert len(posts) == 1
    assert posts[0]["headers"].get("Authorization") == bearer

    # and the answer arrived token by token over graphql-transport-ws, authenticated by the token
    sockets = page.params_of("Network.webSocketCreated")
    assert [s["url"] for s in sockets] == [server.ws_url]
    sent = page.websocket_frames("Sent")
    assert sent[0] == {"type": "connection_init", "payload": {"Authorization": bearer}}
    events = [
        frame["payload"]["data"]["chat"]
        for frame in page.websocket_frames("Received")
        if frame.get("type") == "next"
    ]
    deltas = [e for e in events if e["__typename"] == "TokenDelta"]
    assert len(deltas) > 1
    message = completed["data"]["chat"]["message"]
    assert message["status"] == "COMPLETE"
    assert "".join(d["delta"] for d in deltas) == message["content"]
    assert "Tuesday" in message["content"]
    assert events[-1]["__typename"] == "GenerationCompleted"

    # and the page loaded its bundled files, logged no error, and asked nothing of any host but
    # this server
    assert page.console_errors() == []
    urls = page.requested_urls()
    static = {urlsplit(url).path for url in urls if urlsplit(url).path.startswith("/static/")}
    assert static == {f"/static/{path}" for path in SCRIPTS + STYLESHEETS}
    statuses = {p["response"]["status"] for p in page.params_of("Network.responseReceived")}
    assert statuses == {200}
    outside = [
        url
        for url in urls
        # data: URLs are the fonts and icons inside GraphiQL's stylesheet: no request leaves.
        if urlsplit(url).scheme != "data" and urlsplit(url).hostname != "127.0.0.1"
    ]
    assert outside == []
