"""The vocabulary of evaluations. A leaf module: models, constraints and schema reuse it."""

from __future__ import annotations

from enum import StrEnum


class ProjectType(StrEnum):
    NEW_ERP = "NEW_ERP"
    ERP_MIGRATION = "ERP_MIGRATION"
    ERP_UPGRADE = "ERP_UPGRADE"
    OTHER = "OTHER"


class EvaluationStatus(StrEnum):
    DRAFT = "DRAFT"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    ARCHIVED = "ARCHIVED"
