"""Start-up checks: the JWT secret, its development fallback, defaults and the data-dir lock."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ragstream import cli
from ragstream.app import create_app
from ragstream.db.embedded import exclusive_server_lock
from ragstream.settings import ConfigurationError, Settings, resolve_jwt_secret


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("secret", ["", "short", "x" * 31, "é" * 15])
def test_a_jwt_secret_under_32_bytes_refuses_to_start(tmp_path: Path, secret: str) -> None:
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        create_app(settings(tmp_path, jwt_secret=secret))


@pytest.mark.parametrize("secret", ["x" * 32, "é" * 16, "k" * 200])
def test_a_jwt_secret_of_32_bytes_or_more_is_accepted(tmp_path: Path, secret: str) -> None:
    assert resolve_jwt_secret(settings(tmp_path, jwt_secret=secret)) == secret.encode()
    create_app(settings(tmp_path, jwt_secret=secret))


def test_serve_exits_non_zero_with_a_clear_message_for_a_short_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGSTREAM_JWT_SECRET", "too-short")
    monkeypatch.setenv("RAGSTREAM_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "RAGSTREAM_JWT_SECRET must be at least 32 bytes (got 9)" in err
    assert "Traceback" not in err
    assert not (tmp_path / "data" / "pgdata").exists()


def test_a_grace_the_stalled_time_cannot_hold_refuses_to_start(tmp_path: Path) -> None:
    # a heartbeat every 5 s that may take 2.5 s, twice, and 1 s to stop leave 19 s of the 30
    with pytest.raises(ConfigurationError, match=r"\(19\) must be under .* \(11 s\)"):
        create_app(settings(tmp_path, ingestion_shutdown_timeout_seconds=19))
    create_app(settings(tmp_path, ingestion_shutdown_timeout_seconds=18.9))
    # with no worker in the server, it is the workers' concern
    create_app(settings(tmp_path, ingestion_shutdown_timeout_seconds=19, ingestion_worker=False))
    # heartbeats at most 10 s apart, which may take 5 s
    longer = {"ingestion_stalled_seconds": 81}
    with pytest.raises(ConfigurationError, match=r"\(60\) must be under .* \(21 s\)"):
        create_app(settings(tmp_path, ingestion_shutdown_timeout_seconds=60, **longer))
    create_app(settings(tmp_path, ingestion_shutdown_timeout_seconds=59.9, **longer))
    # a heartbeat every 5/6 s, which may take 1 s at least
    shorter = {"ingestion_stalled_seconds": 5}
    with pytest.raises(ConfigurationError, match=r"\(1.2\) must be under"):
        create_app(settings(tmp_path, ingestion_shutdown_timeout_seconds=1.2, **shorter))
    create_app(settings(tmp_path, ingestion_shutdown_timeout_seconds=1.1, **shorter))


def test_a_worker_process_with_such_a_grace_exits_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGSTREAM_INGESTION_SHUTDOWN_TIMEOUT_SECONDS", "20")
    monkeypatch.setenv("RAGSTREAM_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "RAGSTREAM_INGESTION_SHUTDOWN_TIMEOUT_SECONDS (20) must be under" in err
    assert "Traceback" not in err
    assert not (tmp_path / "data" / "pgdata").exists()


def test_production_requires_an_explicit_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="required in production; generate one with"):
        create_app(settings(tmp_path, environment="production"))
    assert not (tmp_path / "data" / "jwt_secret").exists()


def test_development_keeps_a_generated_secret_in_the_data_dir(tmp_path: Path) -> None:
    first = resolve_jwt_secret(settings(tmp_path))
    path = tmp_path / "data" / "jwt_secret"
    assert path.read_bytes() == first
    assert len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Reused on the next start, so tokens survive a restart.
    assert resolve_jwt_secret(settings(tmp_path)) == first
    create_app(settings(tmp_path))
    assert path.read_bytes() == first


def test_an_unusable_secret_file_is_replaced_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "data" / "jwt_secret"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"short")
    path.chmod(0o644)
    secret = resolve_jwt_secret(settings(tmp_path))
    assert len(secret) >= 32
    assert path.read_bytes() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_explicit_secret_wins_over_the_file(tmp_path: Path) -> None:
    resolve_jwt_secret(settings(tmp_path))
    explicit = "e" * 40
    assert resolve_jwt_secret(settings(tmp_path, jwt_secret=explicit)) == explicit.encode()


def test_introspection_and_graphiql_follow_the_environment(tmp_path: Path) -> None:
    development = settings(tmp_path)
    assert development.introspection_enabled
    assert development.graphiql_enabled
    production = settings(tmp_path, environment="production", jwt_secret="p" * 40)
    assert not production.introspection_enabled
    assert not production.graphiql_enabled
    forced = settings(tmp_path, environment="production", introspection=True)
    assert forced.introspection_enabled
    assert forced.graphiql_enabled
    assert not settings(tmp_path, introspection=True, graphiql=False).graphiql_enabled


def test_settings_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGSTREAM_MAX_QUERY_DEPTH", "7")
    monkeypatch.setenv("RAGSTREAM_CORS_ORIGINS", '["https://app.example"]')
    monkeypatch.setenv("RAGSTREAM_DATA_DIR", str(tmp_path / "elsewhere"))
    loaded = Settings()
    assert loaded.max_query_depth == 7
    assert loaded.cors_origins == ["https://app.example"]
    assert loaded.data_dir == tmp_path / "elsewhere"


def test_a_second_server_on_one_data_dir_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with exclusive_server_lock(data_dir):
        with (
            pytest.raises(ConfigurationError, match="already serving data dir") as refused,
            exclusive_server_lock(data_dir),
        ):
            pass
        assert f"pid {os.getpid()}" in str(refused.value)
        assert "RAGSTREAM_DATA_DIR" in str(refused.value)
    # Released on exit: the next server may start.
    with exclusive_server_lock(data_dir):
        pass
