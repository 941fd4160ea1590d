"""Jobs the work pool tests send to worker processes.

Kept apart from the test modules: a spawned worker imports the module of every job it runs, and
these import nothing from the test suite, so a worker starts in a fraction of a second.
"""

from __future__ import annotations

import os
import signal
import time


def sleep_for(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def sleep_deaf_to_alarms(seconds: float) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        time.sleep(seconds)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})


def die() -> None:
    os._exit(1)


def niceness() -> int:
    return os.nice(0)
