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


ESTABLISHED = "01"  # the state column of /proc/net/tcp


def _socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server's end of a loopback TCP connection (from /proc/net/tcp*)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if (
                    state == ESTABLISHED
                    and int(local.rsplit(":", 1)[1], 16) == server_port
                    and int(remote.rsplit(":", 1)[1], 16) == client_port
                ):
                    return inode
    return None


def process_serving(server_port: int, client_port: int, candidates: list[int]) -> int | None:
    """Which of ``candidates`` (process ids) holds the server's end of the connection that a
    client made from ``client_port`` to ``server_port``, as the kernel has it; None if none."""
    inode = _socket_inode(server_port, client_port)
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for pid in candidates:
        fds = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fds)
        except FileNotFoundError:
            continue
        for name in names:
            try:
                if os.readlink(f"{fds}/{name}") == wanted:
                    return pid
            except FileNotFoundError:  # closed meanwhile
                continue
    return None


def children_of(pid: int) -> list[int]:
    """The process ids whose parent is ``pid``."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
        if ppid == pid:
            children.append(int(entry))
    return children
