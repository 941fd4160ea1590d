from __future__ import annotations

from tests.support import LiveServer


async def test_register_then_me(server: LiveServer) -> None:
    account = await server.register("Someone@Example.com")
    result = await server.execute("{ me { id email } }", token=account.access_token)
    assert result.ok()["me"] == {"id": account.id, "email": "someone@example.com"}
