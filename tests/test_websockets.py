"""GraphQL over websockets (graphql-transport-ws): authentication and the protocol's failure modes.

Happy paths go through gql's WebsocketsTransport; protocol-level cases use a raw `websockets` client
so they can send what a well-behaved client never would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from sqlalchemy import text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from tests.conftest import make_settings
from tests.database_faults import database_unreachable
from tests.evaluations_support import count_statements
from tests.support import OPERATION_TIMEOUT, Account, LiveServer, running_server

ME = "{ me { id email } }"
TRANSPORT_WS = Subprotocol("graphql-transport-ws")


@asynccontextmanager
async def raw_socket(
    server: LiveServer,
    subprotocol: str = "graphql-transport-ws",
    headers: dict[str, str] | None = None,
) -> AsyncIterator[ClientConnection]:
    async with connect(
        server.ws_url, subprotocols=[Subprotocol(subprotocol)], additional_headers=headers
    ) as ws:
        yield ws


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def receive(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
    return message


async def close_code(ws: ClientConnection) -> int | None:
    """Wait until the server closes the socket; the close code it sent."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout=30)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


async def init(ws: ClientConnection, payload: dict[str, Any] | None = None) -> None:
    await send(ws, {"type": "connection_init", "payload": payload or {}})
    assert (await receive(ws))["type"] == "connection_ack"


def subscribe(op_id: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": op_id, "type": "subscribe", "payload": {"query": query, "variables": variables}}


async def sign_in(ws: ClientConnection, account: Account) -> None:
    """Initialise the socket with the account's token and check that `me` answers once."""
    await init(ws, {"authorization": f"Bearer {account.access_token}"})
    await send(ws, subscribe("1", ME))
    assert (await receive(ws))["payload"]["data"]["me"]["id"] == account.id
    assert (await receive(ws))["type"] == "complete"


@pytest.fixture
def server(live_server: LiveServer) -> LiveServer:
    """Sockets end to end: the handshake, HTTP and every frame cross uvicorn."""
    return live_server


# --- authentication --------------------------------------------------------------------------


async def test_me_with_the_token_in_connection_init(server: LiveServer) -> None:
    account = await server.register()
    async with server.websocket(account.access_token) as session:
        data = await session.execute(GraphQLRequest(ME))
    assert data["me"] == {"id": account.id, "email": account.email}


async def test_me_with_the_authorization_header_on_the_upgrade(server: LiveServer) -> None:
    account = await server.register()
    transport = WebsocketsTransport(
        url=server.ws_url,
        headers={"Authorization": f"Bearer {account.access_token}"},
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
    )
    async with Client(
        transport=transport, fetch_schema_from_transport=False, execute_timeout=OPERATION_TIMEOUT
    ) as session:
        data = await session.execute(GraphQLRequest(ME))
    assert data["me"]["id"] == account.id


async def test_anonymous_socket_gets_coded_errors_per_operation(server: LiveServer) -> None:
    async with server.websocket() as session:
        with pytest.raises(TransportQueryError) as failed:
            await session.execute(GraphQLRequest(ME))
        # The socket stays usable for public operations.
        assert (await session.execute(GraphQLRequest("{ __typename }"))) == {"__typename": "Query"}
    assert failed.value.errors
    assert failed.value.errors[0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_validation_errors_over_websocket_carry_codes(server: LiveServer) -> None:
    account = await server.register()
    async with raw_socket(server) as ws:
        await init(ws, {"authorization": f"Bearer {account.access_token}"})
        await send(ws, subscribe("1", "{ mee { id } }"))
        error = await receive(ws)
        await send(ws, subscribe("2", "{ " + "__typename " * 2001 + "}"))
        too_long = await receive(ws)
    assert error["type"] == "error"
    assert error["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "Did you mean" not in error["payload"][0]["message"]
    assert too_long["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"


@pytest.mark.parametrize(
    "payload",
    [
        {"authorization": "Bearer garbage"},
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "Bearer " + "a" * 10_240},
    ],
)
async def test_a_bad_token_in_connection_init_closes_4403(
    server: LiveServer, payload: dict[str, Any]
) -> None:
    async with raw_socket(server) as ws:
        await send(ws, {"type": "connection_init", "payload": payload})
        assert await close_code(ws) == 4403


async def test_a_bad_token_on_the_upgrade_closes_4403(server: LiveServer) -> None:
    async with raw_socket(server, headers={"Authorization": "Bearer garbage"}) as ws:
        await send(ws, {"type": "connection_init", "payload": {}})
        assert await close_code(ws) == 4403


async def test_a_deactivated_users_token_closes_4403(server: LiveServer) -> None:
    account = await server.register()
    async with server.state.sessionmaker.begin() as session:
        await session.execute(
            text("UPDATE users SET is_active = false WHERE id = :id"), {"id": account.id}
        )
    async with raw_socket(server) as ws:
        await send(
            ws,
            {
                "type": "connection_init",
                "payload": {"authorization": f"Bearer {account.access_token}"},
            },
        )
        assert await close_code(ws) == 4403


async def test_deactivation_applies_to_an_open_socket_at_once(server: LiveServer) -> None:
    account = await server.register()
    async with raw_socket(server) as ws:
        await sign_in(ws, account)
        async with server.state.sessionmaker.begin() as session:
            await session.execute(
                text("UPDATE users SET is_active = false WHERE id = :id"), {"id": account.id}
            )
        await send(ws, subscribe("2", ME))
        result = await receive(ws)
    assert result["payload"]["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_a_revoked_session_is_refused_on_an_open_socket(server: LiveServer) -> None:
    account = await server.register()
    async with raw_socket(server) as ws:
        await sign_in(ws, account)
        signed_out = await server.execute(
            "mutation($t: String!) { logout(refreshToken: $t) }", {"t": account.refresh_token}
        )
        assert signed_out.ok()["logout"] is True
        await send(ws, subscribe("2", ME))
        result = await receive(ws)
    assert result["type"] == "next"
    assert result["payload"]["data"] is None
    assert [e["extensions"]["code"] for e in result["payload"]["errors"]] == ["UNAUTHENTICATED"]


async def test_an_expiring_access_token_closes_the_socket(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path, access_token_ttl_seconds=2)
    async with running_server(settings, listen=True) as server:
        account = await server.register()
        async with raw_socket(server) as ws:
            await init(ws, {"authorization": f"Bearer {account.access_token}"})
            await send(ws, subscribe("1", ME))
            assert (await receive(ws))["payload"]["data"]["me"]["id"] == account.id
            assert await close_code(ws) == 4403


# --- unexpected errors ---------------------------------------------------------------------

DOCUMENT_EVENTS = "subscription($id: ID!) { documentEvents(id: $id) { id status } }"


async def test_unexpected_errors_over_a_socket_are_masked_with_a_request_id(
    server: LiveServer, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    account = await server.register()
    request_id = "ws-masking-0001"  # a socket keeps a sane incoming X-Request-ID
    async with raw_socket(server, headers={"X-Request-ID": request_id}) as ws:
        await sign_in(ws, account)
        async with database_unreachable(database_url) as name:
            with caplog.at_level(logging.ERROR, logger="ragstream.errors"):
                await send(ws, subscribe("2", ME))
                query = await receive(ws)
                assert (await receive(ws)) == {"id": "2", "type": "complete"}
                await send(ws, subscribe("3", DOCUMENT_EVENTS, {"id": str(uuid.uuid4())}))
                subscription = await receive(ws)
        # The socket survives the outage and answers again once the database is back.
        await send(ws, subscribe("4", ME))
        assert (await receive(ws))["payload"]["data"]["me"]["id"] == account.id

    # A query fails inside its result; a subscription that cannot start ends with an error.
    assert (query["type"], query["payload"]["data"]) == ("next", None)
    assert subscription["type"] == "error"
    for errors in (query["payload"]["errors"], subscription["payload"]):
        [error] = errors
        assert error["message"] == "Internal server error"
        assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id}
    sent = json.dumps([query, subscription]).lower()
    for leak in ("asyncpg", "sqlalchemy", "traceback", "connection", "postgres", name):
        assert leak.lower() not in sent, leak
    # The full story is in the log, under the same request id, for each operation.
    records = [r for r in caplog.records if r.name == "ragstream.errors"]
    assert all(request_id in r.getMessage() and r.exc_info for r in records)
    # Each failure is logged once, though a websocket result passes the contract twice.
    assert sorted(r.getMessage().rsplit(" at ", 1)[-1] for r in records) == ["documentEvents", "me"]


# --- protocol ------------------------------------------------------------------------------


async def test_the_legacy_graphql_ws_protocol_is_refused_with_4406(server: LiveServer) -> None:
    async with raw_socket(server, subprotocol="graphql-ws") as ws:
        assert await close_code(ws) == 4406


async def test_no_connection_init_in_time_closes_4408(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path, ws_connection_init_timeout_seconds=0.2)
    async with running_server(settings, listen=True) as server, raw_socket(server) as ws:
        assert await close_code(ws) == 4408


async def test_a_second_connection_init_closes_4429(server: LiveServer) -> None:
    async with raw_socket(server) as ws:
        await init(ws)
        await send(ws, {"type": "connection_init", "payload": {}})
        assert await close_code(ws) == 4429


async def test_a_duplicate_operation_id_closes_4409(server: LiveServer) -> None:
    account = await server.register()
    async with raw_socket(server) as ws:
        await init(ws, {"authorization": f"Bearer {account.access_token}"})
        # Both frames arrive before the first operation can finish.
        await send(ws, subscribe("same", ME))
        await send(ws, subscribe("same", ME))
        assert await close_code(ws) == 4409


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        json.dumps({"type": "no-such-type"}),
        json.dumps({"payload": {}}),
        json.dumps({"type": "subscribe", "payload": {"query": "{ __typename }"}}),
        json.dumps({"id": "1", "type": "subscribe"}),
        json.dumps(["a", "list"]),
        json.dumps("a string"),
        json.dumps({"id": "1", "type": "subscribe", "payload": "{ __typename }"}),
        json.dumps({"id": "1", "type": "subscribe", "payload": {"query": 42}}),
        json.dumps({"id": 1, "type": "subscribe", "payload": {"query": "{ __typename }"}}),
        json.dumps(
            {"id": "1", "type": "subscribe", "payload": {"query": "{ me }", "variables": [1]}}
        ),
        b"\x00binary\xff",
    ],
)
async def test_a_malformed_message_closes_4400(server: LiveServer, frame: str | bytes) -> None:
    async with raw_socket(server) as ws:
        await init(ws)
        await ws.send(frame)
        assert await close_code(ws) == 4400


async def test_operations_before_init_close_4401(server: LiveServer) -> None:
    async with raw_socket(server) as ws:
        await send(ws, subscribe("1", "{ __typename }"))
        assert await close_code(ws) == 4401


async def test_too_many_operations_get_a_coded_error_and_the_socket_stays(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path, ws_max_operations=1)
    async with running_server(settings, listen=True) as server:
        account = await server.register()
        async with raw_socket(server) as ws:
            await init(ws, {"authorization": f"Bearer {account.access_token}"})
            await send(ws, subscribe("1", ME))
            await send(ws, subscribe("2", ME))
            replies: dict[str, dict[str, Any]] = {}
            while len(replies) < 2 or "1" not in replies or replies["1"]["type"] != "complete":
                message = await receive(ws)
                replies[message["id"]] = message
            assert replies["2"]["type"] == "error"
            assert replies["2"]["payload"][0]["extensions"]["code"] == "RATE_LIMITED"
            # The socket is still up and serves the next operation.
            await send(ws, subscribe("3", "{ __typename }"))
            assert (await receive(ws))["payload"]["data"] == {"__typename": "Query"}


async def test_cross_site_sockets_need_an_allowed_origin(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path, cors_origins=["https://app.example"])
    async with running_server(settings, listen=True) as server:
        with pytest.raises(InvalidStatus) as refused:
            async with raw_socket(server, headers={"Origin": "https://evil.example"}):
                pass
        assert refused.value.response.status_code == 403
        async with raw_socket(server, headers={"Origin": "https://app.example"}) as ws:
            await init(ws)
            await send(ws, subscribe("1", "{ __typename }"))
            assert (await receive(ws))["payload"]["data"] == {"__typename": "Query"}


async def test_an_operation_checks_the_viewer_once_and_the_next_one_again(
    server: LiveServer,
) -> None:
    account = await server.register()
    both = "{ me { id } conversations(first: 1) { edges { node { id } } } }"
    async with raw_socket(server) as ws:
        await sign_in(ws, account)
        with count_statements(server) as statements:
            await send(ws, subscribe("2", both))
            answered = await receive(ws)
            assert (await receive(ws))["type"] == "complete"
            await send(ws, subscribe("3", ME))
            again = await receive(ws)
            assert (await receive(ws))["type"] == "complete"
    assert answered["payload"]["data"] == {"me": {"id": account.id}, "conversations": {"edges": []}}
    assert again["payload"]["data"]["me"]["id"] == account.id
    # Two root fields that each need the viewer share the operation's one check; the next
    # operation checks again (a revoked session stops it: see the test above).
    checks = [s for s in statements if s.startswith("SELECT users.email")]
    assert len(checks) == 2
