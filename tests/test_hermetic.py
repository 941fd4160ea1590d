"""No test sees the developer's shell: exported keys and settings, and a `.env` in the working
directory, stay out, so a test can never call a real provider or touch a real database."""

from __future__ import annotations

import pytest

# Run by an inner pytest session started from a shell that exports a key and settings and has
# a `.env`; it lists everything of that shell that the settings still see.
LEAKS = """
import os
from pathlib import Path

from ragstream.settings import Settings


def test_nothing_of_the_shell_reaches_the_settings():
    settings = Settings()
    leaks = [n for n in os.environ if n.upper().startswith(("OPENAI_", "RAGSTREAM_"))]
    if settings.openai_api_key is not None:
        leaks.append("openai_api_key")
    if settings.openai_base_url is not None:
        leaks.append("openai_base_url")
    if (settings.chat_provider, settings.embedding_provider) != ("extractive", "hashing"):
        leaks.append("online providers")
    if settings.database_url is not None:
        leaks.append("database_url " + settings.database_url)
    if not settings.data_dir.is_relative_to(Path.cwd()):
        leaks.append("data_dir " + str(settings.data_dir))
    assert not leaks, "leaks: " + ", ".join(leaks)
"""


def run_with_a_leaky_shell(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str
) -> pytest.RunResult:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-exported-in-the-shell")
    monkeypatch.setenv("openai_base_url", "https://provider.invalid/v1")  # read in any case
    monkeypatch.setenv("RAGSTREAM_CHAT_PROVIDER", "openai")
    (pytester.path / ".env").write_text(
        "RAGSTREAM_DATABASE_URL=postgresql+asyncpg://someone@db.invalid/production\n"
    )
    pytester.makepyfile(test_leaks=LEAKS)
    # Only the plugins named here: installed ones have their own views on the session.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)


def test_the_suite_runs_without_the_shells_keys_settings_and_env_file(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    hermetic = run_with_a_leaky_shell(pytester, monkeypatch, "-p", "tests.hermetic")
    hermetic.assert_outcomes(passed=1)


def test_without_the_fixture_that_shell_would_reach_the_settings(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control: the same session without the fixture sees every leak the check looks for.
    leaky = run_with_a_leaky_shell(pytester, monkeypatch)
    leaky.assert_outcomes(failed=1)
    report = leaky.stdout.str()
    for leak in (
        "OPENAI_API_KEY",
        "openai_base_url",
        "RAGSTREAM_CHAT_PROVIDER",
        "online providers",
        "someone@db.invalid",
    ):
        assert leak in report, leak
