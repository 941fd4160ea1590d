"""What applies to one account: flags resolved over the scopes, on top of the built-in defaults.

For each feature, the most specific scope that sets it (user, evaluation, role, global) decides
whether it is on, and is reported as its source. Each metadata field comes from the most
specific flag that sets that field, then from the built-in default: a user flag that raises
only `dailyLimit` keeps the model a global flag chose.

The built-in defaults are the server's settings (`RAGSTREAM_DAILY_MESSAGE_LIMIT`, the chat
model, `RAGSTREAM_MAX_UPLOAD_BYTES`, ...), so a deployment without flags behaves as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ragstream.domain.documents.formats import SUPPORTED_TYPES
from ragstream.domain.errors import Forbidden, InvalidInput
from ragstream.domain.flags.enums import PRECEDENCE, FeatureKey, FeatureSource, FlagScope
from ragstream.domain.flags.metadata import MetadataBounds
from ragstream.domain.users.enums import Role
from ragstream.settings import Settings


@dataclass(frozen=True)
class FlagValue:
    """One stored flag as resolution sees it."""

    scope: FlagScope
    key: FeatureKey
    enabled: bool
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class FeatureDefaults:
    """The built-in default of every feature, taken from the server's settings."""

    daily_message_limit: int
    max_concurrent_generations: int
    chat_model: str
    max_answer_tokens: int
    max_upload_bytes: int

    @property
    def bounds(self) -> MetadataBounds:
        return MetadataBounds(max_upload_bytes=self.max_upload_bytes)

    def for_role(self, role: Role) -> dict[FeatureKey, tuple[bool, dict[str, Any]]]:
        # Admins are not exempt by a special case: their default simply has no daily limit.
        # A flag on the ADMIN role (or on one admin) can give them one.
        daily: int | None = None if role == Role.ADMIN else self.daily_message_limit
        return {
            FeatureKey.CHAT: (
                True,
                {
                    "dailyLimit": daily,
                    "maxConcurrent": self.max_concurrent_generations,
                    "model": self.chat_model,
                    "maxAnswerTokens": self.max_answer_tokens,
                },
            ),
            FeatureKey.UPLOADS: (
                True,
                {"maxBytes": self.max_upload_bytes, "types": list(SUPPORTED_TYPES)},
            ),
            FeatureKey.SEARCH: (True, {}),
        }


@dataclass(frozen=True)
class Feature:
    key: FeatureKey
    enabled: bool
    metadata: dict[str, Any]
    source: FeatureSource


def feature_disabled(key: FeatureKey) -> Forbidden:
    return Forbidden(
        f"the {key.value} feature is not enabled for this account",
        extensions={"reason": "FEATURE_DISABLED", "feature": key.value},
    )


@dataclass(frozen=True)
class ChatPolicy:
    enabled: bool
    daily_limit: int | None  # None: no daily limit
    max_concurrent: int
    model: str
    max_answer_tokens: int


@dataclass(frozen=True)
class UploadPolicy:
    enabled: bool
    max_bytes: int
    types: tuple[str, ...]

    def require_enabled(self) -> None:
        if not self.enabled:
            raise feature_disabled(FeatureKey.UPLOADS)

    def check_type(self, mime_type: str, field: str) -> None:
        if mime_type not in self.types:
            raise InvalidInput(
                f"{mime_type} documents are not allowed for this account", field=field
            )


@dataclass(frozen=True)
class Features:
    """Every feature as it applies to one account (and, for chat, one conversation)."""

    by_key: Mapping[FeatureKey, Feature]

    def __iter__(self) -> Any:
        return iter(self.by_key[k] for k in FeatureKey)

    def require(self, key: FeatureKey) -> Feature:
        """The feature, or FORBIDDEN (reason FEATURE_DISABLED) when it is switched off."""
        feature = self.by_key[key]
        if not feature.enabled:
            raise feature_disabled(key)
        return feature

    def chat(self) -> ChatPolicy:
        feature = self.by_key[FeatureKey.CHAT]
        meta = feature.metadata
        return ChatPolicy(
            enabled=feature.enabled,
            daily_limit=meta["dailyLimit"],
            max_concurrent=meta["maxConcurrent"],
            model=meta["model"],
            max_answer_tokens=meta["maxAnswerTokens"],
        )

    def uploads(self) -> UploadPolicy:
        feature = self.by_key[FeatureKey.UPLOADS]
        return UploadPolicy(
            enabled=feature.enabled,
            max_bytes=feature.metadata["maxBytes"],
            types=tuple(feature.metadata["types"]),
        )


def resolve(flags: Iterable[FlagValue], defaults: FeatureDefaults, role: Role) -> Features:
    """Features from the flags that apply (any order; at most one per key and scope)."""
    found: dict[tuple[FeatureKey, FlagScope], FlagValue] = {(f.key, f.scope): f for f in flags}
    by_key: dict[FeatureKey, Feature] = {}
    for key, (enabled, base) in defaults.for_role(role).items():
        chain = [found[(key, scope)] for scope in PRECEDENCE if (key, scope) in found]
        metadata = dict(base)
        for flag in reversed(chain):  # least specific first; more specific fields win
            metadata.update(flag.metadata)
        if chain:
            by_key[key] = Feature(key, chain[0].enabled, metadata, FeatureSource(chain[0].scope))
        else:
            by_key[key] = Feature(key, enabled, metadata, FeatureSource.DEFAULT)
    return Features(by_key)


def decode_flags(raw: str | None) -> list[FlagValue]:
    """Flags as the viewer statement returns them: a JSON array of [scope, key, enabled, meta]."""
    return [
        FlagValue(FlagScope(scope), FeatureKey(key), bool(enabled), metadata)
        for scope, key, enabled, metadata in json.loads(raw or "[]")
    ]


@dataclass
class AccountFlags:
    """The flags read with an account (user, role and global scopes), decoded on first use.

    Most requests never look at them; those that do pay for one small JSON decode.
    """

    role: Role
    raw: str | None
    defaults: FeatureDefaults
    _flags: list[FlagValue] | None = field(default=None, repr=False)
    _features: Features | None = field(default=None, repr=False)

    @property
    def flags(self) -> list[FlagValue]:
        if self._flags is None:
            self._flags = decode_flags(self.raw)
        return self._flags

    def features(self) -> Features:
        if self._features is None:
            self._features = resolve(self.flags, self.defaults, self.role)
        return self._features

    def with_evaluation(self, evaluation_flags: Iterable[FlagValue]) -> Features:
        """For a conversation linked to an evaluation: that evaluation's flags join in."""
        return resolve([*self.flags, *evaluation_flags], self.defaults, self.role)


def defaults_from_settings(settings: Settings, *, chat_model: str) -> FeatureDefaults:
    """``chat_model`` is the configured provider's model (the offline answerer has its own)."""
    return FeatureDefaults(
        daily_message_limit=settings.daily_message_limit,
        max_concurrent_generations=settings.chat_max_concurrent_generations,
        chat_model=chat_model,
        max_answer_tokens=settings.chat_max_output_tokens,
        max_upload_bytes=settings.max_upload_bytes,
    )
