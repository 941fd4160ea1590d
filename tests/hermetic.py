"""Keeps the developer's shell out of the tests: no exported key or setting, no `.env`, can reach
the code under test, so a test can never call a real provider or use a real data dir."""

from __future__ import annotations

import os

import pytest

# Read by the settings (RAGSTREAM_*, OPENAI_API_KEY, OPENAI_BASE_URL) and by the openai client
# (OPENAI_*). Names are matched case-insensitively, as pydantic-settings reads them.
CLEARED_PREFIXES = ("RAGSTREAM_", "OPENAI_")


@pytest.fixture(autouse=True)
def hermetic_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    for name in list(os.environ):
        if name.upper().startswith(CLEARED_PREFIXES):
            monkeypatch.delenv(name)
    # Settings read `.env` from the working directory, and the default data dir lies under
    # XDG_DATA_HOME: both point into an empty folder of this test's own.
    home = tmp_path_factory.mktemp("home")
    monkeypatch.chdir(home)
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
