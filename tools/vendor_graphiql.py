"""Vendor the GraphiQL page's browser assets into src/ragstream/static/vendor.

Fetches each pinned release with `npm pack`, checks the tarball against its published integrity,
copies the listed dist files and licence texts byte for byte, and writes MANIFEST.json with the
sha384 (Subresource Integrity) hash of every file. Run it only to change a pinned version:

    python tools/vendor_graphiql.py

tests/test_graphiql_assets.py recomputes the hashes, so a file edited by hand fails the suite.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TARGET = Path(__file__).resolve().parent.parent / "src" / "ragstream" / "static" / "vendor"


@dataclass
class Release:
    name: str
    version: str
    # path in the npm tarball -> path under TARGET/<name>@<version>/
    files: dict[str, str]
    # Licence texts: (package spec holding it, path in that tarball, path under the release folder).
    licences: list[tuple[str, str, str]] = field(default_factory=list)
    note: str = ""

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


RELEASES = [
    Release(
        "react",
        "18.2.0",
        {"umd/react.production.min.js": "umd/react.production.min.js"},
        [("react@18.2.0", "LICENSE", "LICENSE")],
    ),
    Release(
        "react-dom",
        "18.2.0",
        {"umd/react-dom.production.min.js": "umd/react-dom.production.min.js"},
        [("react-dom@18.2.0", "LICENSE", "LICENSE")],
    ),
    Release(
        "graphiql",
        "3.8.3",
        {"graphiql.min.js": "graphiql.min.js", "graphiql.min.css": "graphiql.min.css"},
        [("graphiql@3.8.3", "LICENSE", "LICENSE")],
    ),
    Release(
        "@graphiql/plugin-explorer",
        "1.0.2",
        {"dist/index.umd.js": "dist/index.umd.js", "dist/style.css": "dist/style.css"},
        [
            ("graphiql@3.8.3", "LICENSE", "LICENSE"),
            ("graphiql-explorer@0.9.0", "LICENSE", "LICENSE.graphiql-explorer"),
        ],
        note="The npm package ships no licence file: LICENSE is the MIT licence of graphiql@3.8.3 "
        "(same repository and authors; package.json declares MIT). The UMD bundle includes "
        "graphiql-explorer@0.9.0, whose licence is LICENSE.graphiql-explorer.",
    ),
]


def sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def npm(*args: str, cwd: Path) -> str:
    executable = shutil.which("npm")
    if executable is None:
        sys.exit("npm is needed to fetch the releases")
    # Fixed commands over the pinned specs above, no shell.
    done = subprocess.run(  # noqa: S603
        [executable, *args], cwd=cwd, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def npm_pack(spec: str, workdir: Path) -> tuple[Path, str]:
    """Download one release; return its unpacked `package` folder and published integrity."""
    published = npm("view", spec, "dist.integrity", cwd=workdir)
    tarball = workdir / npm("pack", "--silent", spec, cwd=workdir).splitlines()[-1]
    algorithm, _, expected = published.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if actual != expected:
        sys.exit(f"{spec}: the tarball does not match its published integrity")
    unpacked = workdir / tarball.name.removesuffix(".tgz")
    with tarfile.open(tarball) as archive:
        archive.extractall(unpacked, filter="data")
    return unpacked / "package", published


def copy(source: Path, relative: str) -> dict[str, str]:
    data = source.read_bytes()
    target = TARGET / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return {"path": relative, "integrity": sri(data)}


def main() -> None:
    packages: list[dict[str, Any]] = []
    shutil.rmtree(TARGET, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        unpacked: dict[str, Path] = {}

        def package_dir(spec: str) -> tuple[Path, str]:
            folder, published = npm_pack(spec, workdir)
            unpacked[spec] = folder
            return folder, published

        for release in RELEASES:
            source, published = package_dir(release.spec)
            files = [
                copy(source / src, f"{release.spec}/{dst}") for src, dst in release.files.items()
            ]
            for holder, src, dst in release.licences:
                folder = unpacked.get(holder) or package_dir(holder)[0]
                files.append(copy(folder / src, f"{release.spec}/{dst}"))
            entry: dict[str, Any] = {
                "name": release.name,
                "version": release.version,
                "license": json.loads((source / "package.json").read_text())["license"],
                "tarball_integrity": published,
                "files": files,
            }
            if release.note:
                entry["note"] = release.note
            packages.append(entry)
    manifest = {
        "about": "Released npm files served by ragstream's GraphiQL page, copied unmodified by "
        "tools/vendor_graphiql.py; `integrity` is each file's sha384 (Subresource Integrity).",
        "packages": packages,
    }
    (TARGET / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
