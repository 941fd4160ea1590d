"""The GraphiQL page's bundled files, their manifest, the static route and the HTML headers."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from ragstream.app import create_app
from ragstream.graphiql import MANIFEST, SCRIPTS, STATIC_DIR, STYLESHEETS
from ragstream.security_headers import content_security_policy
from tests.conftest import make_settings

VENDOR = STATIC_DIR / "vendor"
# The page and its files never reach the database: no server, no lifespan needed.
UNUSED_DATABASE = "postgresql+asyncpg://unused@127.0.0.1:1/unused"
HTML = {"accept": "text/html"}


def sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def client_for(tmp_path: Path, **overrides: object) -> httpx.AsyncClient:
    app = create_app(make_settings(UNUSED_DATABASE, tmp_path, **overrides))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(tmp_path) as client:
        yield client


def test_every_shipped_file_matches_its_recorded_hash() -> None:
    manifest = json.loads(MANIFEST.read_text())
    listed = {
        entry["path"]: entry["integrity"]
        for package in manifest["packages"]
        for entry in package["files"]
    }
    shipped = {
        str(path.relative_to(VENDOR))
        for path in VENDOR.rglob("*")
        if path.is_file() and path != MANIFEST
    }
    assert shipped == set(listed)
    for path, integrity in listed.items():
        assert sri((VENDOR / path).read_bytes()) == integrity, path


def test_every_release_is_pinned_and_carries_its_licence() -> None:
    manifest = json.loads(MANIFEST.read_text())
    specs = {f"{p['name']}@{p['version']}" for p in manifest["packages"]}
    assert specs == {
        "react@18.2.0",
        "react-dom@18.2.0",
        "graphiql@3.8.3",
        "@graphiql/plugin-explorer@1.0.2",
    }
    for package in manifest["packages"]:
        spec = f"{package['name']}@{package['version']}"
        assert re.fullmatch(r"\d+\.\d+\.\d+", package["version"])
        assert package["tarball_integrity"].startswith("sha512-")
        paths = [entry["path"] for entry in package["files"]]
        assert all(path.startswith(spec + "/") for path in paths)
        licence = VENDOR / spec / "LICENSE"
        assert f"{spec}/LICENSE" in paths
        assert "MIT License" in licence.read_text()
        assert package["license"] == "MIT"


def test_the_package_data_globs_ship_every_static_file() -> None:
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["ragstream"]
    package = STATIC_DIR.parent
    shipped = {path for pattern in globs for path in package.glob(pattern) if path.is_file()}
    static = {path for path in STATIC_DIR.rglob("*") if path.is_file()}
    assert static <= shipped


async def test_the_page_loads_only_its_own_files_each_with_its_hash(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/graphql", headers=HTML)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "://" not in page.text
    sources = re.findall(r'<script src="([^"]+)" integrity="([^"]+)"></script>', page.text)
    links = re.findall(r'<link rel="stylesheet" href="([^"]+)" integrity="([^"]+)">', page.text)
    assert [url.split("?")[0] for url, _ in sources] == [f"/static/{p}" for p in SCRIPTS]
    assert [url.split("?")[0] for url, _ in links] == [f"/static/{p}" for p in STYLESHEETS]
    # No script or style that is not one of those files.
    assert page.text.count("<script") == len(SCRIPTS)
    assert "<style" not in page.text
    assert not re.search(r"\son[a-z]+=", page.text)
    for url, integrity in sources + links:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert sri(asset.content) == integrity, url
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert asset.headers["x-content-type-options"] == "nosniff"
        expected = "text/javascript" if url.split("?")[0].endswith(".js") else "text/css"
        assert asset.headers["content-type"].startswith(expected)
        assert "content-security-policy" not in asset.headers


async def test_the_page_carries_the_security_headers(client: httpx.AsyncClient) -> None:
    page = await client.get("/graphql", headers={**HTML, "host": "127.0.0.1:8000"})
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    directives = dict(
        directive.split(" ", 1) for directive in page.headers["content-security-policy"].split("; ")
    )
    assert directives == {
        "default-src": "'none'",
        "script-src": "'self'",
        "style-src": "'self' 'sha256-Y/huXlwoYkVyQlxwSVcCi1RCDGDCSVBzDt0hYP9qlTc='",
        "img-src": "'self' data:",
        "font-src": "'self' data:",
        "connect-src": "'self' ws://127.0.0.1:8000 wss://127.0.0.1:8000",
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": "'none'",
    }


def test_a_malformed_host_stays_out_of_the_policy() -> None:
    policy = content_security_policy("evil.example; script-src *")
    assert "evil" not in policy
    assert "connect-src 'self';" in policy
    assert "connect-src 'self';" in content_security_policy(None)


async def test_json_answers_are_nosniff_without_an_html_policy(client: httpx.AsyncClient) -> None:
    answer = await client.get("/healthz")
    assert answer.json() == {"status": "ok"}
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in answer.headers
    assert "x-frame-options" not in answer.headers


@pytest.mark.parametrize(
    "path",
    [
        "/static/vendor/MANIFEST.json",
        "/static/vendor/graphiql@3.8.3/graphiql.min.js.map",
        "/static/../graphiql.py",
        "/static/%2e%2e/graphiql.py",
        "/static/vendor/react@18.2.0/umd/react.development.js",
        "/static/",
    ],
)
async def test_the_static_route_serves_only_listed_files(
    client: httpx.AsyncClient, path: str
) -> None:
    answer = await client.get(path)
    assert answer.status_code == 404
    assert "import" not in answer.text


async def test_licences_are_served_beside_the_files(client: httpx.AsyncClient) -> None:
    licence = await client.get("/static/vendor/graphiql@3.8.3/LICENSE")
    assert licence.status_code == 200
    assert licence.headers["content-type"].startswith("text/plain")
    assert "MIT License" in licence.text


async def test_without_graphiql_there_is_no_page_and_no_files(tmp_path: Path) -> None:
    async with client_for(tmp_path, graphiql=False) as client:
        for path in ("/graphql", "/static/graphiql.js", "/static/vendor/graphiql@3.8.3/LICENSE"):
            assert (await client.get(path, headers=HTML)).status_code == 404, path
