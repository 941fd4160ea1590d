"""Trusted documents: Automatic Persisted Queries and a registered manifest.

A client may send ``extensions.persistedQuery = {version: 1, sha256Hash}`` instead of the
document; the server answers from the documents it knows (``PersistedQueryNotFound`` when it
does not), and a client that then sends the document with its hash registers it. This works
the same over HTTP GET, POST and websockets.

`RAGSTREAM_PERSISTED_QUERIES`:
- ``automatic`` (default): any document may run; hashes are remembered in a bounded LRU
  (per process) beside the registered manifest.
- ``only``: only documents of the registered manifest run, by hash or by their full text;
  everything else is FORBIDDEN. Register with `ragstream persist-queries FILE.json`.
- ``off``: the extension is refused (PERSISTED_QUERY_NOT_SUPPORTED).

The manifest lives in a JSON file (`persisted_queries_manifest`, by default in the data
directory) that the server reads at start-up: a deployment ships it with its clients and
restarts.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ragstream.domain.errors import DomainError, Forbidden, InvalidInput

NOT_FOUND_MESSAGE = "PersistedQueryNotFound"
NOT_SUPPORTED_MESSAGE = "PersistedQueryNotSupported"
MANIFEST_FILE = "persisted-queries.json"


class PersistedQueryNotFound(DomainError):
    code = "PERSISTED_QUERY_NOT_FOUND"


class PersistedQueryNotSupported(DomainError):
    code = "PERSISTED_QUERY_NOT_SUPPORTED"


def document_hash(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()


def read_manifest(data: Any) -> dict[str, str]:
    """Hash -> document from an Apollo manifest (``operations: [{id, body}]``) or a plain
    ``{hash: document}`` map; each hash must be the document's SHA-256."""
    if isinstance(data, dict) and isinstance(data.get("operations"), list):
        pairs = [
            (op.get("id"), op.get("body")) for op in data["operations"] if isinstance(op, dict)
        ]
    elif isinstance(data, dict):
        pairs = list(data.items())
    else:
        raise InvalidInput("a manifest is a JSON object")
    documents: dict[str, str] = {}
    for key, document in pairs:
        if not isinstance(key, str) or not isinstance(document, str):
            raise InvalidInput("every manifest entry needs a hash and a document")
        if document_hash(document) != key.lower():
            raise InvalidInput(f"the hash {key} is not the SHA-256 of its document")
        documents[key.lower()] = document
    return documents


def load_manifest(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    return read_manifest(json.loads(path.read_text()))


def save_manifest(path: Path, documents: Mapping[str, str]) -> None:
    """Written whole to a temporary file, then moved over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".persisted-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(dict(sorted(documents.items())), handle, indent=1)
    os.replace(temporary, path)


class PersistedDocuments:
    """Which document an operation runs, given what it sent."""

    def __init__(self, mode: str, manifest: Mapping[str, str], cache_size: int = 1000) -> None:
        self.mode = mode
        self.manifest = dict(manifest)
        self.cache_size = cache_size
        self._automatic: OrderedDict[str, str] = OrderedDict()

    @property
    def active(self) -> bool:
        """Whether operations without the extension need looking at (only mode)."""
        return self.mode == "only"

    def resolve(self, query: str | None, extensions: Mapping[str, Any] | None) -> str | None:
        """The document to run; raises the error the client gets instead."""
        persisted = (extensions or {}).get("persistedQuery")
        if persisted is None:
            if self.mode == "only" and (query is None or document_hash(query) not in self.manifest):
                raise Forbidden("only registered operations run on this server")
            return query
        if self.mode == "off":
            raise PersistedQueryNotSupported(NOT_SUPPORTED_MESSAGE)
        key = persisted.get("sha256Hash") if isinstance(persisted, dict) else None
        if not isinstance(key, str) or persisted.get("version", 1) != 1:
            raise InvalidInput("persistedQuery needs version 1 and a sha256Hash")
        key = key.lower()
        if query is not None:
            if document_hash(query) != key:
                raise InvalidInput("provided sha256Hash does not match the query")
            if self.mode == "only" and key not in self.manifest:
                raise Forbidden("only registered operations run on this server")
            self._remember(key, query)
            return query
        known = self.manifest.get(key) or self._recall(key)
        if known is None:
            raise PersistedQueryNotFound(NOT_FOUND_MESSAGE)
        return known

    def _remember(self, key: str, query: str) -> None:
        if self.mode != "automatic" or key in self.manifest:
            return
        self._automatic[key] = query
        self._automatic.move_to_end(key)
        while len(self._automatic) > self.cache_size:
            self._automatic.popitem(last=False)

    def _recall(self, key: str) -> str | None:
        if self.mode != "automatic":
            return None
        query = self._automatic.get(key)
        if query is not None:
            self._automatic.move_to_end(key)
        return query


def persisted_of(context: Any) -> PersistedDocuments | None:
    state = getattr(context, "state", None)
    persisted: PersistedDocuments | None = getattr(state, "persisted", None)
    return persisted


def wants_resolving(persisted: PersistedDocuments | None, extensions: Any) -> bool:
    """Cheap: most operations carry no extension and most servers are not in only mode."""
    return persisted is not None and (
        persisted.active or (isinstance(extensions, dict) and "persistedQuery" in extensions)
    )
