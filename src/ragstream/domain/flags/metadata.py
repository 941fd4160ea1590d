"""Each feature's metadata: the fields a flag may set, their types and their bounds.

A flag's metadata is a JSON object; every field is optional (what a flag leaves out comes from
less specific scopes, then the built-in default). Anything else is BAD_USER_INPUT naming the
field (``metadata.<name>``), so a typo never becomes a silently ignored setting.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ragstream.domain.documents.formats import SUPPORTED_TYPES
from ragstream.domain.errors import InvalidInput
from ragstream.domain.flags.enums import FeatureKey

MAX_MODEL_NAME = 200
MAX_CONCURRENT = 100
MAX_ANSWER_TOKENS = 200_000


@dataclass(frozen=True)
class MetadataBounds:
    """Server limits a flag cannot exceed (the server could not honour more)."""

    max_upload_bytes: int


Check = Callable[[Any, str, MetadataBounds], Any]


def _integer(value: Any, field: str, low: int, high: int | None) -> int:
    # bool is an int in Python, but `true` is not a number in JSON.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{field} must be an integer", field=field)
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise InvalidInput(f"{field} must be {bounds}", field=field)
    return value


def _daily_limit(value: Any, field: str, bounds: MetadataBounds) -> int | None:
    return None if value is None else _integer(value, field, 0, None)


def _max_concurrent(value: Any, field: str, bounds: MetadataBounds) -> int:
    return _integer(value, field, 1, MAX_CONCURRENT)


def _max_answer_tokens(value: Any, field: str, bounds: MetadataBounds) -> int:
    return _integer(value, field, 1, MAX_ANSWER_TOKENS)


def _model(value: Any, field: str, bounds: MetadataBounds) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{field} must be a model name", field=field)
    name: str = value.strip()
    if len(name) > MAX_MODEL_NAME or any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise InvalidInput(
            f"{field} must be at most {MAX_MODEL_NAME} printable characters", field=field
        )
    return name


def _max_bytes(value: Any, field: str, bounds: MetadataBounds) -> int:
    return _integer(value, field, 1, bounds.max_upload_bytes)


def _types(value: Any, field: str, bounds: MetadataBounds) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{field} must be a list of MIME types", field=field)
    unknown = [v for v in value if v not in SUPPORTED_TYPES]
    if unknown:
        raise InvalidInput(f"{field} may only contain {', '.join(SUPPORTED_TYPES)}", field=field)
    # Kept in the canonical order, once each: an empty list allows no file at all.
    return [t for t in SUPPORTED_TYPES if t in value]


FIELDS: dict[FeatureKey, dict[str, Check]] = {
    FeatureKey.CHAT: {
        "dailyLimit": _daily_limit,
        "maxConcurrent": _max_concurrent,
        "model": _model,
        "maxAnswerTokens": _max_answer_tokens,
    },
    FeatureKey.UPLOADS: {"maxBytes": _max_bytes, "types": _types},
    FeatureKey.SEARCH: {},
}


def parse_key(value: str) -> FeatureKey:
    try:
        return FeatureKey(value)
    except ValueError:
        known = ", ".join(k.value for k in FeatureKey)
        raise InvalidInput(f"unknown feature; the features are {known}", field="key") from None


def validate_metadata(key: FeatureKey, metadata: object, bounds: MetadataBounds) -> dict[str, Any]:
    """The metadata as stored: checked field by field, normalised (e.g. trimmed model names)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidInput("metadata must be a JSON object", field="metadata")
    fields = FIELDS[key]
    cleaned: dict[str, Any] = {}
    for name, value in metadata.items():
        check = fields.get(name)
        if check is None:
            allowed = ", ".join(fields) or "no fields"
            raise InvalidInput(
                f"{key.value} has no metadata field {name!r} (it takes {allowed})",
                field=f"metadata.{name}",
            )
        cleaned[name] = check(value, f"metadata.{name}", bounds)
    return cleaned
