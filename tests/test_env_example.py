"""`.env.example` documents every setting ragstream reads."""

from __future__ import annotations

from pathlib import Path

from ragstream.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _env_name(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else f"RAGSTREAM_{name.upper()}"


def test_every_setting_is_in_env_example() -> None:
    documented = {
        line.lstrip("# ").split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line
    }
    missing = [_env_name(n) for n in Settings.model_fields if _env_name(n) not in documented]
    assert missing == []
