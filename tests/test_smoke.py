from __future__ import annotations

from tests.support import LiveServer


async def test_register_then_me(live_server: LiveServer) -> None:
    account = await live_server.register("Someone@Example.com")
    result = await live_server.execute("{ me { id email } }", token=account.access_token)
    assert result.ok()["me"] == {"id": account.id, "email": "someone@example.com"}
