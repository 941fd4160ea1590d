from __future__ import annotations

import unicodedata

from email_validator import EmailNotValidError, validate_email

from ragstream.domain.errors import InvalidInput

MAX_DISPLAY_NAME = 100


def normalize_email(email: str) -> str:
    """Syntax-checked and lower-cased, so uniqueness is case-insensitive. No DNS look-ups."""
    try:
        result = validate_email(email.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput("email address is not valid", field="email") from exc
    return result.normalized.lower()


def normalize_display_name(name: str, field: str = "displayName") -> str:
    name = " ".join(name.split())
    if not 1 <= len(name) <= MAX_DISPLAY_NAME:
        raise InvalidInput(f"display name must be 1 to {MAX_DISPLAY_NAME} characters", field=field)
    check_storable_text(name, field=field)
    return name


def check_storable_text(value: str, *, field: str) -> None:
    """Refuse control characters (PostgreSQL refuses NUL) and lone surrogates (no UTF-8 form)."""
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise InvalidInput(f"{field} contains characters that are not allowed", field=field)
