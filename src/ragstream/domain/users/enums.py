"""The vocabulary of accounts. A leaf module: the models, the constraints and the schema use it."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    USER = "USER"
    ADMIN = "ADMIN"
