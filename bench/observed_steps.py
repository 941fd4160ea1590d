"""`ragstream serve` with each step of observing a request timed inside the running server.

    python -m bench.observed_steps serve --port 8000     # any `ragstream` arguments

Every 1,000 HTTP requests the server writes one line to stderr: the thread CPU time per request
spent in each step (the request line as the request ends; making its fields, its record,
filtering and formatting it when its batch runs; the operation observer; the duration
histogram, and within it the groups of operations it observes together; the pool gauge), in
garbage collection by generation (and each generation's collections per 1,000 requests), and in
the whole request as the request id middleware sees it (meaningful with one connection at a
time: with more, a request's time includes the others' work between its awaits). Drive it with
any load, e.g. `wrk` with bench/wrk_post.lua. The clock is
read around each step (a few tenths of a microsecond each), and that is included.

A step costs more here than in a loop of its own: in the middle of a request's other work, little
of its code and data is still in the processor's caches.
"""

from __future__ import annotations

import functools
import gc
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from ragstream.observability import logs, metrics
from ragstream.schema import observed

REPORT_EVERY = 1000
spent: dict[str, int] = {}  # nanoseconds by step
requests = 0


def timed(owner: Any, name: str, step: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(original)
    def step_timed(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time_ns()
        try:
            return original(*args, **kwargs)
        finally:
            spent[step] = spent.get(step, 0) + time.thread_time_ns() - started

    setattr(owner, name, step_timed)


collecting = [0]  # when the collection running now started


def garbage_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        collecting[0] = time.thread_time_ns()
    elif requests:  # not start-up's collections
        step = f"gc_gen{info['generation']}"
        spent[step] = spent.get(step, 0) + time.thread_time_ns() - collecting[0]


collections_at_start: list[dict[str, int]] = []  # gc.get_stats() at the first request


def report() -> None:
    per_request = " ".join(
        f"{step}={ns / requests / 1000:.1f}" for step, ns in sorted(spent.items())
    )
    counted = requests - 1  # since the first request
    collections = " ".join(
        f"gen{generation}={(now['collections'] - then['collections']) * 1000 / counted:.1f}"
        for generation, (now, then) in enumerate(
            zip(gc.get_stats(), collections_at_start, strict=True)
        )
    )
    sys.stderr.write(
        f"steps after {requests} requests, us per request: {per_request}; "
        f"collections per 1,000 requests: {collections}\n"
    )
    sys.stderr.flush()


def time_requests() -> None:
    call = logs.RequestLogMiddleware.__call__

    async def request_timed(self: Any, scope: Any, receive: Any, send: Any) -> None:
        global requests
        started = time.thread_time_ns()
        try:
            await call(self, scope, receive, send)
        finally:
            if scope["type"] == "http":
                spent["request"] = spent.get("request", 0) + time.thread_time_ns() - started
                requests += 1
                if requests == 1:
                    collections_at_start[:] = gc.get_stats()
                if requests % REPORT_EVERY == 0:
                    report()

    logs.RequestLogMiddleware.__call__ = request_timed  # type: ignore[method-assign]


def main() -> None:
    timed(logs, "_log_request", "line_in_request")
    timed(logs, "_http_line", "line_fields")
    timed(logs, "RequestRecord", "line_record")
    timed(logs.RequestIdFilter, "filter", "line_filter")
    timed(logs.JsonFormatter, "format", "line_format")
    timed(logging.Logger, "handle", "line_handled")
    timed(observed.ObserveOperations, "_finish", "operation_observer")
    timed(metrics.PrometheusMetrics, "operation", "histogram")  # its groups included
    timed(metrics.PrometheusMetrics, "_observe_pending", "histogram_group")
    timed(metrics.PrometheusMetrics, "pool_in_use", "pool_gauge")
    gc.callbacks.append(garbage_collection)
    time_requests()
    from ragstream.cli import main as ragstream

    sys.exit(ragstream(sys.argv[1:]))


if __name__ == "__main__":
    main()
