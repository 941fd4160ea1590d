"""Ports for the servers tests start as subprocesses (ragstream serve, redis-server).

Asking the kernel for a free port and handing its number to another process leaves a gap
before that process binds it, in which the other xdist worker's next server, or any outgoing
connection given that port as its local end, can take it: the server then fails to start, or
the test talks to another test's server. So ports come from below the kernel's ephemeral range
(where outgoing connections never get theirs), each worker from a block of its own, one after
the other, each checked free before it is handed out.
"""

from __future__ import annotations

import itertools
import os
import random
import socket

BLOCK = 1_500
FIRST = 20_000  # the block of worker gw<n> starts at FIRST + n * BLOCK, below 32768


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # set by pytest-xdist for its workers
    return int(worker.removeprefix("gw")) if worker.startswith("gw") else 0


def _ports() -> itertools.cycle[int]:
    start = FIRST + (_worker_index() % 8) * BLOCK
    # A random place in the block, so two test sessions on one machine rarely meet.
    offset = random.randrange(BLOCK)
    return itertools.cycle([start + (offset + i) % BLOCK for i in range(BLOCK)])


_NEXT = _ports()


def free_port() -> int:
    """The next port of this worker's block that nothing is bound to on loopback."""
    for _ in range(BLOCK):
        port = next(_NEXT)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port in this worker's block")
