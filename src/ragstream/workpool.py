"""CPU-heavy work in worker processes, never on a serving event loop.

Parsing and chunking a document and embedding a batch with the offline hashing embedder take
seconds of pure-Python CPU for a large document. Run in a thread, they hold the GIL and stall
every request of the process (a 15 MB upload kept `/healthz` waiting for seconds); here they run
in a process pool, one process per core by default, created when the app (or a worker command)
starts. Beside a server the processes run at a lower scheduling priority (nice 10), so on a busy
machine the serving processes get the CPU first; a `ragstream worker` process serves nothing,
and its pool runs at its own priority (a lower one would only hand the CPU to other programs).

A job gets ``time_limit`` seconds. The worker process interrupts itself when they are up
(``JobTimeout``); should the job not notice (stuck inside a C extension), the pool's processes
are ended a little later and the pool starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import FrameType
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
# How long after its own deadline a job may still take before its process is ended. Generous:
# the parent's clock also counts starting a worker process, which takes seconds on a busy machine.
KILL_GRACE_SECONDS = 30.0
SERVING_NICENESS = 10  # how much nicer than their parent the processes beside a server are
PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent exits


class JobTimeout(Exception):
    """A job ran past its time limit."""


class _Deadline(BaseException):
    """Raised inside a worker when its time is up; a BaseException, so the job's own
    ``except Exception`` handlers (e.g. around a PDF library) cannot swallow it."""


class WorkPoolBroken(Exception):
    """A worker process died (killed, out of memory) during the job; worth another attempt."""


def _start_worker(niceness: int) -> None:
    if niceness:
        with contextlib.suppress(OSError):
            os.nice(niceness)
    # Linux: end with the parent, even when it exits without shutting the pool down (killed,
    # or a process that never ran its shutdown), instead of waiting forever as an orphan.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    # The parent handles Ctrl-C and shuts the pool down; workers must not die mid-job first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise _Deadline


def _timed(timeout: float | None, work: Callable[..., T], *args: Any) -> T:
    """Runs in the worker process: ``work(*args)``, interrupted after ``timeout`` seconds."""
    if timeout is None:
        return work(*args)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return work(*args)
    except _Deadline:
        raise JobTimeout from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


class WorkPool:
    def __init__(
        self,
        processes: int | None = None,
        *,
        niceness: int = SERVING_NICENESS,
        kill_grace_seconds: float = KILL_GRACE_SECONDS,
    ) -> None:
        self.processes = max(1, processes or os.cpu_count() or 1)
        self.niceness = niceness
        self.kill_grace_seconds = kill_grace_seconds
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn: the parent runs threads and an event loop, which forking would copy.
            self._executor = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(self.niceness,),
            )
        return self._executor

    async def run(self, work: Callable[..., T], *args: Any, time_limit: float | None = None) -> T:
        """``work(*args)`` in a worker process; ``work`` and the arguments must pickle."""
        future = asyncio.get_running_loop().run_in_executor(
            self._pool(), _timed, time_limit, work, *args
        )
        try:
            if time_limit is None:
                return await future
            async with asyncio.timeout(time_limit + self.kill_grace_seconds):
                return await future
        except _Deadline:  # the alarm rang just as the job returned
            raise JobTimeout from None
        except TimeoutError:
            logger.warning("a job outlived its time limit; restarting the worker processes")
            self._restart()
            raise JobTimeout from None
        except BrokenProcessPool:
            self._restart()
            raise WorkPoolBroken("a worker process stopped during the job") from None

    def _restart(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            _end(executor)

    def shutdown(self) -> None:
        """Ends the worker processes; jobs still running are abandoned."""
        self._restart()


def _end(executor: ProcessPoolExecutor) -> None:
    # The executor cannot stop a running job; its processes are ended instead.
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(OSError, AttributeError):
            process.terminate()
