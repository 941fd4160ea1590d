"""The GraphiQL page, served entirely by ragstream: no asset comes from anywhere else.

The released browser files live in `static/vendor`, copied unmodified (see
tools/vendor_graphiql.py) and listed in `static/vendor/MANIFEST.json` with their sha384 hashes;
the page names each with an `integrity` attribute, so a file altered after release is refused by
the browser. `static/graphiql.js` and `static/graphiql.css` are ragstream's own start-up script and
styles, hashed when the page is built. Scripts are files, never inline, so the page works under a
Content-Security-Policy of `script-src 'self'`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from html import escape
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response

STATIC_DIR = Path(__file__).parent / "static"
MANIFEST = STATIC_DIR / "vendor" / "MANIFEST.json"
STATIC_URL = "/static/"
# Every URL carries its file's hash, so a cached copy can never be stale.
CACHE_FOREVER = "public, max-age=31536000, immutable"

MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}

# Load order matters: the GraphiQL bundle needs React globals, the explorer needs GraphiQL's.
STYLESHEETS = (
    "vendor/graphiql@3.8.3/graphiql.min.css",
    "vendor/@graphiql/plugin-explorer@1.0.2/dist/style.css",
    "graphiql.css",
)
SCRIPTS = (
    "vendor/react@18.2.0/umd/react.production.min.js",
    "vendor/react-dom@18.2.0/umd/react-dom.production.min.js",
    "vendor/graphiql@3.8.3/graphiql.min.js",
    "vendor/@graphiql/plugin-explorer@1.0.2/dist/index.umd.js",
    "graphiql.js",
)
OWN_FILES = ("graphiql.js", "graphiql.css")

# GraphiQL's dialogs (settings, keyboard shortcuts) lock page scrolling by inserting one <style>
# element (react-remove-scroll-bar inside graphiql.min.js). Its text varies only with the width of
# the body's scrollbar, which this page never has, so for the pinned release it has this one hash;
# tests/test_graphiql_browser.py opens a dialog under the policy to prove it.
DIALOG_STYLE_HASH = "'sha256-Y/huXlwoYkVyQlxwSVcCi1RCDGDCSVBzDt0hYP9qlTc='"


def subresource_integrity(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def load_manifest(path: Path = MANIFEST) -> dict[str, str]:
    """Paths (relative to the static folder) of the vendored files and their recorded hashes."""
    manifest = json.loads(path.read_text())
    return {
        f"vendor/{entry['path']}": entry["integrity"]
        for package in manifest["packages"]
        for entry in package["files"]
    }


@dataclass(frozen=True)
class GraphiQLAssets:
    """The files the static route may serve (nothing else) and the page that uses them."""

    integrity: dict[str, str]

    @classmethod
    def load(cls) -> GraphiQLAssets:
        integrity = load_manifest()
        for name in OWN_FILES:
            integrity[name] = subresource_integrity((STATIC_DIR / name).read_bytes())
        return cls(integrity)

    def url(self, path: str) -> str:
        digest = self.integrity[path].removeprefix("sha384-")[:16]
        version = digest.replace("+", "-").replace("/", "_")
        return f"{STATIC_URL}{path}?v={version}"

    def page(self) -> str:
        links = "\n".join(
            f'    <link rel="stylesheet" href="{escape(self.url(p))}" '
            f'integrity="{self.integrity[p]}">'
            for p in STYLESHEETS
        )
        scripts = "\n".join(
            f'    <script src="{escape(self.url(p))}" integrity="{self.integrity[p]}"></script>'
            for p in SCRIPTS
        )
        return f"""<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>ragstream · GraphiQL</title>
    <link rel="icon" href="data:,">
{links}
  </head>
  <body>
    <div id="graphiql">Loading…</div>
{scripts}
  </body>
</html>
"""

    async def endpoint(self, request: Request) -> Response:
        path = request.path_params["path"]
        if path not in self.integrity:
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(
            STATIC_DIR / path,
            media_type=MEDIA_TYPES.get(Path(path).suffix, "text/plain; charset=utf-8"),
            headers={"cache-control": CACHE_FOREVER},
        )
