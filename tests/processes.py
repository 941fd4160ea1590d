"""Python code run in a fresh process, as a command would run: no state from the test session."""

from __future__ import annotations

import asyncio
import os
import sys


async def run_python(code: str, *args: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``python -c CODE ARGS``, without RAGSTREAM_*, OPENAI_*
    or XDG_RUNTIME_DIR in its environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAGSTREAM_", "OPENAI_")) and k != "XDG_RUNTIME_DIR"
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def stop_process(process: asyncio.subprocess.Process, within: float) -> None:
    """Asks a still-running process to stop (SIGTERM); kills it if it has not within ``within``."""
    if process.returncode is not None:
        return
    process.terminate()
    try:
        async with asyncio.timeout(within):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
