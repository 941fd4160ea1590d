"""GraphQL over HTTP: `application/graphql-response+json`, its status codes, and the
graphql-http audit suite run against a live server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragstream.graphql_http import wants_graphql_response
from tests.support import LiveServer

ROOT = Path(__file__).resolve().parents[1]
AUDIT_SCRIPT = ROOT / "tests" / "graphql_http_audit.cjs"
# Where .ci/run installs the npm packages (GRAPHQL_HTTP_AUDIT_DIR moves it).
AUDIT_DIR = Path(os.environ.get("GRAPHQL_HTTP_AUDIT_DIR", ROOT / ".cache" / "graphql-http"))
AUDIT_PACKAGES = ("graphql-http@1.23.1", "graphql@16.15.0")
NEW = "application/graphql-response+json"


async def post(server: LiveServer, body: dict[str, Any], accept: str | None) -> httpx.Response:
    headers = {"accept": accept} if accept else {}
    async with server.http_client() as client:
        return await client.post("/graphql", json=body, headers=headers)


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", False),
        (NEW, True),
        (f"{NEW}, application/json", True),
        (f"application/json, {NEW}", True),
        (f"{NEW};q=0.5, application/json", False),
        (f"{NEW};q=0", False),
    ],
)
def test_the_new_media_type_is_chosen_when_ranked_at_least_as_high(
    accept: str | None, wanted: bool
) -> None:
    assert wants_graphql_response(accept) is wanted


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"query": "{"}, "BAD_USER_INPUT"),  # does not parse
        ({"query": "{ nope }"}, "BAD_USER_INPUT"),  # does not validate
        (
            {"query": "query($id: ID!) { document(id: $id) { id } }", "variables": {"id": []}},
            "BAD_USER_INPUT",
        ),  # variables that do not fit
    ],
)
async def test_request_errors_answer_400_without_data_in_the_new_media_type(
    server: LiveServer, body: dict[str, Any], code: str
) -> None:
    response = await post(server, body, NEW)
    assert response.status_code == 400
    assert response.headers["content-type"] == f"{NEW}; charset=utf-8"
    answer = response.json()
    assert "data" not in answer
    assert [e["extensions"]["code"] for e in answer["errors"]] == [code]

    legacy = await post(server, body, "application/json")
    assert legacy.status_code == 200
    assert legacy.headers["content-type"] == "application/json"
    assert legacy.json()["data"] is None


async def test_field_errors_keep_200_and_their_data_in_the_new_media_type(
    server: LiveServer,
) -> None:
    account = await server.register()
    async with server.http_client() as client:
        response = await client.post(
            "/graphql",
            json={
                "query": '{ me { id } document(id: "00000000-0000-0000-0000-000000000000") { id } }'
            },
            headers={"accept": NEW, "authorization": f"Bearer {account.access_token}"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{NEW}; charset=utf-8"
    answer = response.json()
    assert answer["data"] is None  # the non-null field took its parent with it
    assert answer["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert answer["errors"][0]["path"] == ["document"]


def _audit_packages() -> str | None:
    """NODE_PATH for the audit, installing the packages once; None without node and npm."""
    node_modules = AUDIT_DIR / "node_modules"
    if (node_modules / "graphql-http" / "package.json").exists():
        return str(node_modules)
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        return None
    AUDIT_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(  # noqa: S603
        [
            npm,
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(AUDIT_DIR),
            *AUDIT_PACKAGES,
        ],
        check=True,
        timeout=300,
    )
    return str(node_modules)


async def test_the_graphql_http_audit_passes_every_must_and_should(
    live_server: LiveServer,
) -> None:
    node_path = await asyncio.to_thread(_audit_packages)
    if node_path is None:
        pytest.skip("node and npm are needed to run the graphql-http audit")
    node = shutil.which("node")
    assert node is not None
    finished = await asyncio.to_thread(
        subprocess.run,
        [node, str(AUDIT_SCRIPT), live_server.graphql_url],
        env={**os.environ, "NODE_PATH": node_path},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    results = [json.loads(line) for line in finished.stdout.splitlines()]
    assert len(results) >= 40  # the suite ran, not a fragment of it
    required = [r for r in results if r["name"].startswith(("MUST", "SHOULD"))]
    assert any(r["name"].startswith("SHOULD") for r in required)
    failing = [f"{r['id']} {r['name']}: {r['reason']}" for r in required if r["status"] != "ok"]
    assert failing == []
