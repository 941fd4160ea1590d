"""The vocabulary of feature flags, shared by the models, the constraints and the schema."""

from __future__ import annotations

from enum import StrEnum


class FeatureKey(StrEnum):
    """The features a flag can switch and tune; each has its own metadata (see metadata.py)."""

    CHAT = "chat"
    UPLOADS = "uploads"
    SEARCH = "search"


class FlagScope(StrEnum):
    """Where a flag is set, most specific first (the order evaluation follows)."""

    USER = "USER"
    EVALUATION = "EVALUATION"
    ROLE = "ROLE"
    GLOBAL = "GLOBAL"


class FeatureSource(StrEnum):
    """Which scope decided a feature for an account: a flag's scope, or the built-in default."""

    USER = "USER"
    EVALUATION = "EVALUATION"
    ROLE = "ROLE"
    GLOBAL = "GLOBAL"
    DEFAULT = "DEFAULT"


class FlagChangeAction(StrEnum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    DELETED = "DELETED"


class UsageGroupBy(StrEnum):
    """How `usageReport` groups the usage ledger."""

    DAY = "DAY"
    USER = "USER"
    MODEL = "MODEL"


# Evaluation order: the first scope that sets a key decides.
PRECEDENCE = (FlagScope.USER, FlagScope.EVALUATION, FlagScope.ROLE, FlagScope.GLOBAL)
