"""Per-generation stream buffers: what lets any client watch, or resume, a running answer.

A running generation writes its text deltas to a `GenerationStream`; followers read from any
character offset and are woken when more arrives. Nothing here touches the database.

`MemoryStreamHub` serves one process (`open`, `follow`, `close`); other processes and replicas
follow an answer through the event broker (`remote.py`: with Redis, one Redis Stream per
answer holding its coalesced deltas with their offsets).
"""

from __future__ import annotations

import asyncio
import bisect
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from ragstream.domain.chat.views import Ending, SourceView


@dataclass(frozen=True)
class SourcesItem:
    sources: Sequence[SourceView]


@dataclass(frozen=True)
class TextItem:
    offset: int  # index of text[0] in the whole answer
    text: str


@dataclass(frozen=True)
class EndItem:
    ending: Ending


StreamItem = SourcesItem | TextItem | EndItem


class GenerationStream:
    """The text of one answer so far, its sources once known, and how it ended."""

    __slots__ = (
        "_end_waiters",
        "_ends",
        "_joined",
        "_joined_parts",
        "_parts",
        "_waiters",
        "ending",
        "paced",
        "sources",
    )

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._ends: list[int] = []  # cumulative length after each part
        self._waiters: list[asyncio.Future[None]] = []
        self._end_waiters: list[asyncio.Future[None]] = []
        self._joined = ""
        self._joined_parts = 0
        self.sources: Sequence[SourceView] | None = None
        self.ending: Ending | None = None
        # Read from its provider at the followers' pace (its reads begin at least a window
        # apart, so appends average at most one per window): a follower sends each append
        # at once, with no window of its own, as soon as it is read rather than up to a
        # window later.
        self.paced = False

    @property
    def length(self) -> int:
        return self._ends[-1] if self._ends else 0

    @property
    def finished(self) -> bool:
        return self.ending is not None

    def append(self, delta: str) -> None:
        if not delta or self.ending is not None:
            return
        self._parts.append(delta)
        self._ends.append(self.length + len(delta))
        self._wake()

    def set_sources(self, sources: Sequence[SourceView]) -> None:
        self.sources = tuple(sources)
        self._wake()

    def finish(self, ending: Ending) -> None:
        if self.ending is None:
            self.ending = ending
            self._wake()
            waiters, self._end_waiters = self._end_waiters, []
            for waiter in waiters:
                _resolve(waiter)

    def text(self) -> str:
        """The whole text so far (joined incrementally, so frequent flushes stay cheap)."""
        if self._joined_parts < len(self._parts):
            self._joined += "".join(self._parts[self._joined_parts :])
            self._joined_parts = len(self._parts)
        return self._joined

    def read_from(self, offset: int) -> str:
        """Text from character ``offset`` to now, in time proportional to its length."""
        if offset >= self.length:
            return ""
        index = bisect.bisect_right(self._ends, offset)
        start = self._ends[index - 1] if index else 0
        return self._parts[index][offset - start :] + "".join(self._parts[index + 1 :])

    async def changed(self) -> None:
        """Returns after the next append, sources or finish."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done():
                waiter.cancel()

    async def finished_within(self, delay: float) -> None:
        """Returns when the stream ends, or after ``delay`` seconds, whichever comes first.

        A follower waits here once per event: a future and a timer handle, no cancellation
        (``asyncio.timeout`` would cancel the task and catch the error every time).
        """
        if self.ending is not None:
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._end_waiters.append(waiter)
        timer = loop.call_later(delay, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if self.ending is None:
                self._end_waiters.remove(waiter)

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Crowd:
    """The followers of this process's running answers, and the pace their number asks for.

    Every follower sends at most one text item per window. The window stretches:

    - with many followers, so that all of them together send at most ``events_per_second``
      items, up to ``MAX_CROWD_WINDOW``: each event is a write to a socket, which costs the
      process more than the text it carries, so a busy process sends fewer, larger events;
    - when the process is behind: followers that wake up late (their timers fire after their
      due time because the event loop is busy) report by how much (``late``), and the window
      grows to twice that lag, up to ``MAX_STRETCH`` seconds. A busy process thus sends fewer,
      larger deltas instead of building queues, and returns to the base window as it catches up.
    """

    MAX_STRETCH = 0.5  # seconds; a token waits at most this long for its event, plus the lag
    # Seconds; past this many followers per events_per_second, the budget gives way to delay.
    MAX_CROWD_WINDOW = 1 / 3
    _SMOOTHING = 0.05  # weight of each new observation of the lag

    def __init__(self, events_per_second: float) -> None:
        self.events_per_second = events_per_second
        self.size = 0
        self.lag = 0.0  # how late followers wake up (exponentially smoothed), in seconds

    def window(self, base: float) -> float:
        crowd = min(self.size / self.events_per_second, self.MAX_CROWD_WINDOW)
        return max(base, crowd, min(2 * self.lag, self.MAX_STRETCH))

    def late(self, seconds: float) -> None:
        """A follower woke up ``seconds`` after it was due (0 when on time)."""
        self.lag += (max(seconds, 0.0) - self.lag) * self._SMOOTHING


async def follow(
    stream: GenerationStream, from_offset: int, *, window: float, crowd: Crowd | None = None
) -> AsyncGenerator[StreamItem, None]:
    """Sources (once known), then the text from ``from_offset``, then the ending.

    The first text item carries everything already buffered. After that text is sent as it
    arrives, but at most one item per ``window`` seconds (stretched by ``crowd``): deltas
    arriving within the window are merged, so a fast provider, a slow client or a busy process
    costs fewer events instead of a growing backlog.
    """
    loop = asyncio.get_running_loop()
    offset = max(from_offset, 0)
    sources_sent = False
    last_sent = -window
    if crowd is not None:
        crowd.size += 1
    try:
        while True:
            if not sources_sent and stream.sources is not None:
                sources_sent = True
                yield SourcesItem(stream.sources)
                continue
            if stream.length > offset:
                pace = window if crowd is None else crowd.window(window)
                due = last_sent + pace
                wait = due - loop.time()
                if wait > 0 and not stream.paced:
                    await stream.finished_within(wait)
                    if crowd is not None and stream.ending is None:
                        crowd.late(loop.time() - due)
                text = stream.read_from(offset)
                yield TextItem(offset, text)
                offset += len(text)
                last_sent = loop.time()
                continue
            if stream.ending is not None:
                yield EndItem(stream.ending)
                return
            await stream.changed()
    finally:
        if crowd is not None:
            crowd.size -= 1


class MemoryStreamHub:
    """Streams of the generations running in this process."""

    def __init__(self, crowd: Crowd | None = None) -> None:
        self._streams: dict[uuid.UUID, GenerationStream] = {}
        self.crowd = crowd

    def open(self, message_id: uuid.UUID) -> GenerationStream:
        stream = GenerationStream()
        self._streams[message_id] = stream
        return stream

    def get(self, message_id: uuid.UUID) -> GenerationStream | None:
        return self._streams.get(message_id)

    def follow(
        self, message_id: uuid.UUID, from_offset: int, *, window: float
    ) -> AsyncGenerator[StreamItem, None] | None:
        stream = self._streams.get(message_id)
        if stream is None:
            return None
        return follow(stream, from_offset, window=window, crowd=self.crowd)

    def close(self, message_id: uuid.UUID) -> None:
        self._streams.pop(message_id, None)

    def __len__(self) -> int:
        return len(self._streams)
