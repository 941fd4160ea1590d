"""The rules an evaluation obeys, as pure functions (no database, no GraphQL).

Every violation is an ``InvalidInput`` (BAD_USER_INPUT) whose ``field`` names the input that is
wrong, with list positions spelled ``criteria[2].weight``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ragstream.domain.errors import InvalidInput
from ragstream.domain.evaluations.enums import EvaluationStatus, ProjectType

MAX_TITLE = 200
MAX_COMPANY_NAME = 200
MAX_NOTES = 20_000
MAX_CRITERIA = 50
MAX_CRITERION_NAME = 100
MAX_CRITERION_NOTES = 2_000
MIN_SCORE = 0.0
MAX_SCORE = 5.0
# Weights are relative, so any positive number works; the bound keeps weight * score finite.
MAX_WEIGHT = 1_000_000.0
MAX_SEARCH = 200

__all__ = [
    "MAX_CRITERIA",
    "Criterion",
    "check_completion",
    "overall_score",
    "validate_company_name",
    "validate_criteria",
    "validate_notes",
    "validate_project_type",
    "validate_search",
    "validate_status",
    "validate_title",
]


@dataclass(frozen=True)
class Criterion:
    """One weighted criterion; ``score`` is None until it has been assessed."""

    name: str
    weight: float
    score: float | None = None
    notes: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "score": self.score, "notes": self.notes}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Criterion:
        score = value.get("score")
        return cls(
            name=str(value["name"]),
            weight=float(value["weight"]),
            score=None if score is None else float(score),
            notes=value.get("notes"),
        )


def _single_line(value: str) -> str:
    return " ".join(value.split())


def _bounded_text(value: str, *, field: str, label: str, maximum: int) -> str:
    value = _single_line(value)
    if not 1 <= len(value) <= maximum:
        raise InvalidInput(f"{label} must be 1 to {maximum} characters", field=field)
    return value


def validate_title(title: str) -> str:
    """Whitespace collapsed, then 1..200 characters."""
    return _bounded_text(title, field="title", label="title", maximum=MAX_TITLE)


def validate_company_name(name: str) -> str:
    """Whitespace collapsed, then 1..200 characters."""
    return _bounded_text(name, field="companyName", label="company name", maximum=MAX_COMPANY_NAME)


def validate_notes(
    notes: str | None, *, field: str = "notes", maximum: int = MAX_NOTES
) -> str | None:
    """Free text kept as written (line breaks matter); blank means no notes."""
    if notes is None or not notes.strip():
        return None
    if len(notes) > maximum:
        raise InvalidInput(f"notes must be at most {maximum} characters", field=field)
    return notes


def validate_project_type(value: str) -> ProjectType:
    try:
        return ProjectType(value)
    except ValueError:
        raise InvalidInput("unknown project type", field="projectType") from None


def validate_status(value: str) -> EvaluationStatus:
    try:
        return EvaluationStatus(value)
    except ValueError:
        raise InvalidInput("unknown status", field="status") from None


def validate_search(search: str | None) -> str | None:
    """The text filter: blank means no filter."""
    if search is None or not search.strip():
        return None
    search = _single_line(search)
    if len(search) > MAX_SEARCH:
        raise InvalidInput(f"search must be at most {MAX_SEARCH} characters", field="filter.search")
    return search


def _validate_criterion(index: int, criterion: Criterion) -> Criterion:
    field = f"criteria[{index}]"
    name = _bounded_text(
        criterion.name, field=f"{field}.name", label="criterion name", maximum=MAX_CRITERION_NAME
    )
    weight = criterion.weight
    if not math.isfinite(weight) or not 0 < weight <= MAX_WEIGHT:
        raise InvalidInput(
            f"weight must be greater than 0 and at most {MAX_WEIGHT:g}", field=f"{field}.weight"
        )
    score = criterion.score
    if score is not None and (not math.isfinite(score) or not MIN_SCORE <= score <= MAX_SCORE):
        raise InvalidInput(
            f"score must be between {MIN_SCORE:g} and {MAX_SCORE:g}, or null",
            field=f"{field}.score",
        )
    notes = validate_notes(criterion.notes, field=f"{field}.notes", maximum=MAX_CRITERION_NOTES)
    return Criterion(name=name, weight=float(weight), score=score, notes=notes)


def validate_criteria(criteria: Sequence[Criterion]) -> list[Criterion]:
    """At most 50 criteria, names unique (ignoring case), weight > 0, score in 0..5 or null."""
    if len(criteria) > MAX_CRITERIA:
        raise InvalidInput(f"at most {MAX_CRITERIA} criteria are allowed", field="criteria")
    seen: set[str] = set()
    result: list[Criterion] = []
    for index, criterion in enumerate(criteria):
        checked = _validate_criterion(index, criterion)
        key = checked.name.casefold()
        if key in seen:
            raise InvalidInput(
                f"criterion name {checked.name!r} is used twice", field=f"criteria[{index}].name"
            )
        seen.add(key)
        result.append(checked)
    return result


def overall_score(criteria: Sequence[Criterion]) -> float | None:
    """The weighted mean of the scored criteria; None when no criterion is scored."""
    scored = [(c.weight, c.score) for c in criteria if c.score is not None]
    if not scored:
        return None
    total_weight = math.fsum(weight for weight, _ in scored)
    mean = math.fsum(weight * score for weight, score in scored) / total_weight
    # Rounding noise must not push a mean of scores in 0..5 outside 0..5.
    return min(max(mean, MIN_SCORE), MAX_SCORE)


def check_completion(status: str, criteria: Sequence[Criterion], *, field: str) -> None:
    """A COMPLETED evaluation has at least one criterion and every criterion scored."""
    if status != EvaluationStatus.COMPLETED:
        return
    if not criteria:
        raise InvalidInput("a completed evaluation needs at least one criterion", field=field)
    unscored = [c.name for c in criteria if c.score is None]
    if unscored:
        raise InvalidInput(
            "a completed evaluation needs every criterion scored; unscored: " + ", ".join(unscored),
            field=field,
        )
