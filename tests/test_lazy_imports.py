"""Each command imports what it uses: `--help` nothing heavy, an offline server no OpenAI client."""

from __future__ import annotations

import json

from tests.processes import run_python

HEAVY = ("strawberry", "sqlalchemy", "procrastinate", "rich", "openai", "alembic", "numpy")

HELP = """
import json, sys
from ragstream.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
loaded = sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[1:])
print(json.dumps(loaded), file=sys.stderr)
"""
OFFLINE_APP = """
import json, sys
from ragstream.app import create_app
from ragstream.settings import Settings
create_app(Settings(jwt_secret="x" * 40, data_dir=sys.argv[1]))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[2:])
print(json.dumps(loaded), file=sys.stderr)
"""


async def imported(code: str, *args: str) -> list[str]:
    """The modules of the named packages that ``code`` imported in a fresh process."""
    status, _, stderr = await run_python(code, *args)
    assert status == 0, stderr
    modules: list[str] = json.loads(stderr.strip().splitlines()[-1])
    return modules


async def test_help_imports_none_of_the_heavy_libraries() -> None:
    assert await imported(HELP, *HEAVY) == []


async def test_an_offline_server_imports_neither_the_openai_client_nor_numpy(
    tmp_path: object,
) -> None:
    # numpy comes with the first embedding, the OpenAI client only with an openai provider.
    assert await imported(OFFLINE_APP, str(tmp_path), "openai", "numpy") == []
