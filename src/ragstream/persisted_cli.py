"""`ragstream persist-queries FILE.json`: checks a manifest against the schema and registers it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragstream.settings import Settings


def check_documents(documents: dict[str, str]) -> None:
    """Every document must parse and validate against this server's schema."""
    from graphql import GraphQLError, parse, validate

    from ragstream.domain.errors import InvalidInput
    from ragstream.schema import build_schema  # the whole schema: only when registering
    from ragstream.settings import Settings

    schema = build_schema(Settings(introspection=True))._schema
    for key, document in documents.items():
        try:
            errors = validate(schema, parse(document))
        except GraphQLError as exc:
            errors = [exc]
        if errors:
            raise InvalidInput(f"document {key[:12]}… is not valid here: {errors[0].message}")


def register(settings: Settings, manifest_file: Path) -> tuple[int, int]:
    """Adds the file's documents to the registered manifest; returns (added, total)."""
    from ragstream.domain.errors import InvalidInput
    from ragstream.persisted import load_manifest, read_manifest, save_manifest

    try:
        incoming = read_manifest(json.loads(manifest_file.read_text()))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {manifest_file}: {exc}") from exc
    check_documents(incoming)
    path = settings.manifest_path
    registered = load_manifest(path)
    added = len(incoming.keys() - registered.keys())
    save_manifest(path, {**registered, **incoming})
    return added, len(registered) + added


def cmd_persist_queries(args: argparse.Namespace) -> int:
    from ragstream.settings import Settings

    settings = Settings()
    added, total = register(settings, Path(args.manifest))
    print(
        f"registered {added} new documents ({total} in {settings.manifest_path}); "
        "restart the server to use them"
    )
    return 0


def add_command(sub: Any) -> None:
    persist = sub.add_parser(
        "persist-queries",
        help="register trusted documents (an Apollo persisted query manifest or {hash: query})",
    )
    persist.add_argument("manifest", help="the manifest JSON file")
    persist.set_defaults(func=cmd_persist_queries)
