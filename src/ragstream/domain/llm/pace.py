"""When the next read of a streamed provider response may begin.

An answer that is read at its followers' pace (`Answer._stream`) says, after each read, when
the next one may begin. A transport that leaves what arrives meanwhile in the socket
(`StreamingTransport`) honours it: it starts reading the socket again only then, from a timer
of the event loop, so the answer's task is woken once, by the data, instead of once by a sleep
and once more by the data. With a ``grid`` the reads of every paced answer begin on its ticks:
the reads of many answers begin, and their data is handled, in one turn of the event loop, and
a process serving many of them (see `streaming_http.STRICT_TICKS`) wakes up once per tick
rather than once per answer. The
answer, which sets the pace in its own task, finds out from ``honoured`` whether a transport
took it; through any other transport it sleeps instead.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(slots=True)
class ReadPace:
    not_before: float = 0.0  # on the event loop's clock
    # Reads begin on multiples of this (seconds; 0: as soon as ``not_before`` passed); on a
    # crowded tick a read that finds nothing waits for the next tick, not for the data.
    grid: float = 0.0
    honoured: bool = False  # set by a transport that defers its reads to ``not_before``
    # Told how many seconds after ``not_before`` the deferred read began (the loop's lag).
    late: Callable[[float], None] | None = None


# The pace of the reads made in the current task (None: read as data arrives).
READ_PACE: ContextVar[ReadPace | None] = ContextVar("ragstream_read_pace", default=None)
