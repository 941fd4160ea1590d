"""Prometheus metrics, behind one small facade so a server with metrics off pays nothing.

`Metrics` is the do-nothing base every caller holds; `PrometheusMetrics` records. Labels never
carry ids or user data: operation names are capped (`metrics_max_operation_names`, then
"other"), error codes come from the fixed contract, provider and model from the settings.

Multi-process: when ``PROMETHEUS_MULTIPROC_DIR`` is set (it must be set before the process
starts and the directory emptied at each deployment), prometheus-client writes every value to
files there and `/metrics` merges the files of all processes. Gauges say how to merge:
"livesum" for things in progress, so a dead process stops counting.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ragstream.domain.errors import RateLimited

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
KNOWN_CODES = frozenset(
    {
        "UNAUTHENTICATED",
        "FORBIDDEN",
        "NOT_FOUND",
        "BAD_USER_INPUT",
        "CONFLICT",
        "RATE_LIMITED",
        "INTERNAL_SERVER_ERROR",
        "PERSISTED_QUERY_NOT_FOUND",
        "PERSISTED_QUERY_NOT_SUPPORTED",
    }
)
# Latency buckets (seconds) from a cached read to a long answer.
# Operations waiting to be observed in one go (one process only; a scrape observes them first).
PENDING_OPERATIONS = 64
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """Records nothing: what a server with metrics off holds. Every method is a no-op."""

    enabled = False

    def operation(self, name: str, kind: str, outcome: str, seconds: float) -> None:
        pass

    def error(self, code: str) -> None:
        pass

    def websocket(self, delta: int) -> None:
        pass

    def subscription(self, delta: int) -> None:
        pass

    def generation_started(self) -> None:
        pass

    def generation_ended(
        self, *, outcome: str, tokens: int, first_token: float | None, total: float
    ) -> None:
        pass

    def provider_failure(self, code: str) -> None:
        pass

    @contextlib.contextmanager
    def search(self, kind: str) -> Iterator[None]:
        yield

    def ingestion_started(self) -> None:
        pass

    def ingestion_ended(self, outcome: str, seconds: float) -> None:
        pass

    def ingestion_queue(self, counts: dict[str, int]) -> None:
        pass

    @contextlib.contextmanager
    def login_attempt(self) -> Iterator[None]:
        yield

    def pool_in_use(self, delta: int) -> None:
        pass

    def pool_waiting(self, delta: int) -> None:
        pass

    def operation_label(self, name: str | None) -> str:
        return name or "anonymous"

    def exposition(self) -> tuple[bytes, str]:
        raise RuntimeError("metrics are off")


class PrometheusMetrics(Metrics):
    """Records into its own registry (or the multi-process files when configured)."""

    enabled = True

    def __init__(self, *, provider: str, model: str, max_operation_names: int = 100) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.max_operation_names = max_operation_names
        self._names: set[str] = set()
        self._provider = (provider, model)
        # Labelled series by their label values: `.labels()` builds and checks its key on every
        # call, and operations are counted per request. Bounded by the labels' own caps.
        self._children: dict[tuple[Any, ...], Any] = {}
        self._multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        # One process: operations are observed in groups, as `_pending` fills up and before
        # anything reads the registry (registered first, so it collects first). Observing one
        # in the middle of each request's other work cost several times what a group costs
        # per operation. Several processes: each is written to this process's file at once.
        self._pending: deque[tuple[str, str, str, float]] = deque()
        r = self.registry
        r.register(_BeforeCollecting(self._observe_pending))
        self._operations = Histogram(
            "ragstream_graphql_operation_duration_seconds",
            "GraphQL operations by name, type and outcome (ok, error, rejected); a "
            "subscription's duration is its lifetime.",
            ["operation", "type", "outcome"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self._errors = Counter(
            "ragstream_graphql_errors",
            "GraphQL errors sent to clients, by extensions.code.",
            ["code"],
            registry=r,
        )
        self._websockets = Gauge(
            "ragstream_websockets_open",
            "Open GraphQL websockets.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._subscriptions = Gauge(
            "ragstream_subscriptions_active",
            "Subscriptions running (over websockets or HTTP).",
            registry=r,
            multiprocess_mode="livesum",
        )
        labels = ["provider", "model"]
        self._generations_active = Gauge(
            "ragstream_generations_active",
            "Answers whose provider call is running.",
            labels,
            registry=r,
            multiprocess_mode="livesum",
        )
        self._generations = Counter(
            "ragstream_generations",
            "Provider calls ended, by outcome (ok, failed, stopped).",
            [*labels, "outcome"],
            registry=r,
        )
        self._tokens = Counter(
            "ragstream_generation_tokens",
            "Completion tokens streamed (as the provider reported them, else estimated).",
            labels,
            registry=r,
        )
        self._first_token = Histogram(
            "ragstream_provider_first_token_seconds",
            "Time from the provider call to its first token.",
            labels,
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self._provider_time = Histogram(
            "ragstream_provider_duration_seconds",
            "Time from the provider call to its end.",
            labels,
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self._provider_failures = Counter(
            "ragstream_provider_failures",
            "Provider calls that failed, by the code stored on the answer.",
            [*labels, "code"],
            registry=r,
        )
        self._search = Histogram(
            "ragstream_search_duration_seconds",
            "Hybrid retrieval, for the search query (search) or a chat answer (chat).",
            ["kind"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self._ingestion_running = Gauge(
            "ragstream_ingestion_jobs_running",
            "Ingestion jobs being worked on.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._ingestion = Histogram(
            "ragstream_ingestion_job_duration_seconds",
            "Ingestion job runs by how they ended: ready, failed, retry, gone.",
            ["outcome"],
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self._queue = Gauge(
            "ragstream_ingestion_jobs",
            "Ingestion jobs in the queue by state, read from the database at each scrape.",
            ["state"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self._logins = Counter(
            "ragstream_login_attempts",
            "Sign-in attempts by outcome (ok, failed, rate_limited).",
            ["outcome"],
            registry=r,
        )
        self._pool_in_use = Gauge(
            "ragstream_db_pool_in_use",
            "Database connections checked out of the pool.",
            registry=r,
            multiprocess_mode="livesum",
        )
        # One process: the connections in use are a plain count that the gauge reads when it is
        # collected (checkouts and returns are two per request, and a gauge takes a lock for
        # each). Several processes: each writes its own value to its file as it changes.
        self._checked_out = 0
        if not self._multiprocess:
            self._pool_in_use.set_function(lambda: self._checked_out)
        self._pool_waiting = Gauge(
            "ragstream_db_pool_waiting",
            "Requests waiting for a database connection (or for one to be opened).",
            registry=r,
            multiprocess_mode="livesum",
        )

    # --- GraphQL -----------------------------------------------------------------------------

    def operation_label(self, name: str | None) -> str:
        if not name:
            return "anonymous"
        if name in self._names:
            return name
        if len(self._names) < self.max_operation_names:
            self._names.add(name)
            return name
        return "other"

    def _child(self, metric: MetricWrapperBase, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def operation(self, name: str, kind: str, outcome: str, seconds: float) -> None:
        if self._multiprocess:
            self._child(self._operations, name, kind, outcome).observe(seconds)
            return
        pending = self._pending
        pending.append((name, kind, outcome, seconds))
        if len(pending) >= PENDING_OPERATIONS:
            self._observe_pending()

    def _observe_pending(self) -> None:
        pending = self._pending
        while pending:  # popleft: an operation may be added from another thread meanwhile
            name, kind, outcome, seconds = pending.popleft()
            self._child(self._operations, name, kind, outcome).observe(seconds)

    def error(self, code: str) -> None:
        self._child(self._errors, code if code in KNOWN_CODES else "OTHER").inc()

    def websocket(self, delta: int) -> None:
        self._websockets.inc(delta)

    def subscription(self, delta: int) -> None:
        self._subscriptions.inc(delta)

    # --- chat --------------------------------------------------------------------------------

    def generation_started(self) -> None:
        self._child(self._generations_active, *self._provider).inc()

    def generation_ended(
        self, *, outcome: str, tokens: int, first_token: float | None, total: float
    ) -> None:
        labels = self._provider
        self._child(self._generations_active, *labels).dec()
        self._child(self._generations, *labels, outcome).inc()
        if tokens:
            self._child(self._tokens, *labels).inc(tokens)
        if first_token is not None:
            self._child(self._first_token, *labels).observe(first_token)
        self._child(self._provider_time, *labels).observe(total)

    def provider_failure(self, code: str) -> None:
        self._child(self._provider_failures, *self._provider, code).inc()

    # --- knowledge base ----------------------------------------------------------------------

    @contextlib.contextmanager
    def search(self, kind: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._child(self._search, kind).observe(time.perf_counter() - started)

    def ingestion_started(self) -> None:
        self._ingestion_running.inc()

    def ingestion_ended(self, outcome: str, seconds: float) -> None:
        self._ingestion_running.dec()
        self._child(self._ingestion, outcome).observe(seconds)

    def ingestion_queue(self, counts: dict[str, int]) -> None:
        for state, count in counts.items():
            self._queue.labels(state).set(count)

    # --- sign-in and the database ------------------------------------------------------------

    @contextlib.contextmanager
    def login_attempt(self) -> Iterator[None]:
        outcome = "failed"
        try:
            yield
            outcome = "ok"
        except RateLimited:
            outcome = "rate_limited"
            raise
        finally:
            self._child(self._logins, outcome).inc()

    def pool_in_use(self, delta: int) -> None:
        if self._multiprocess:
            self._pool_in_use.inc(delta)
        else:
            self._checked_out += delta

    def pool_waiting(self, delta: int) -> None:
        self._pool_waiting.inc(delta)

    # --- exposition --------------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self._collected_registry()), CONTENT_TYPE_LATEST

    def _collected_registry(self) -> CollectorRegistry:
        if not os.environ.get(MULTIPROC_ENV):
            return self.registry
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]  # untyped upstream
        return merged


class _BeforeCollecting:
    """A collector with no metrics of its own that runs ``step`` whenever its registry is
    collected (a scrape, `get_sample_value`)."""

    def __init__(self, step: Callable[[], None]) -> None:
        self.step = step

    def describe(self) -> Iterable[Any]:
        return ()

    def collect(self) -> Iterable[Any]:
        self.step()
        return ()


def build_metrics(*, enabled: bool, provider: str, model: str, max_operation_names: int) -> Metrics:
    if not enabled:
        return Metrics()
    return PrometheusMetrics(
        provider=provider, model=model, max_operation_names=max_operation_names
    )


def mark_process_dead() -> None:
    """At shutdown in multi-process mode: this process's live gauges stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]  # untyped
