"""OpenTelemetry traces, optional: nothing of OpenTelemetry is imported unless they are on.

On when `RAGSTREAM_OTEL_EXPORTER_OTLP_ENDPOINT` is set, or the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the exporter also reads
the other standard `OTEL_*` variables: headers, timeout, `OTEL_SERVICE_NAME`, ...). Spans:

- one per HTTP request or websocket (`TraceMiddleware`), continuing an incoming `traceparent`;
- one per GraphQL operation (`graphql.<type> <name>`, from the operation observer);
- one per SQL statement (the statement text only, never its parameters);
- the provider call of each answer, each embedding call, each retrieval, each ingestion job.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ragstream.settings import Settings

STANDARD_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class Tracing:
    """Traces nothing: what a server without tracing holds."""

    enabled = False

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Any]:
        yield None

    def start(self, name: str, **attributes: Any) -> Any:
        return None

    def observe_engine(self, engine: AsyncEngine) -> None:
        pass

    def shutdown(self) -> None:
        pass


class OpenTelemetryTracing(Tracing):
    enabled = True

    def __init__(self, exporter: SpanExporter, *, service_name: str, batch: bool = True) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self.tracer: Tracer = self.provider.get_tracer("ragstream")

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Span]:
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    def start(self, name: str, **attributes: Any) -> Span:
        """A span that is not made current: for work that ends in another callback."""
        return self.tracer.start_span(name, attributes=attributes)

    def observe_engine(self, engine: AsyncEngine) -> None:
        from opentelemetry.trace import Status, StatusCode
        from sqlalchemy import event

        sync_engine = engine.sync_engine
        key = "ragstream_span"

        def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            context = args[1] if len(args) > 1 else None
            span = self.start(
                "db.query",
                **{"db.system": "postgresql", "db.statement": statement[:2000]},
            )
            if context is not None:
                setattr(context, key, span)

        def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            context = args[1] if len(args) > 1 else None
            span = getattr(context, key, None)
            if span is not None:
                span.end()

        def failed(exception_context: Any) -> None:
            span = getattr(exception_context.execution_context, key, None)
            if span is not None:
                span.set_status(
                    Status(StatusCode.ERROR, type(exception_context.original_exception).__name__)
                )
                span.end()

        event.listen(sync_engine, "before_cursor_execute", before)
        event.listen(sync_engine, "after_cursor_execute", after)
        event.listen(sync_engine, "handle_error", failed)

    def shutdown(self) -> None:
        self.provider.shutdown()


def tracing_wanted(settings: Settings) -> bool:
    return bool(settings.otel_exporter_otlp_endpoint) or any(
        os.environ.get(name) for name in STANDARD_ENDPOINTS
    )


def build_tracing(settings: Settings, exporter: SpanExporter | None = None) -> Tracing:
    """``exporter`` replaces the OTLP one (tests pass an in-memory exporter)."""
    service_name = settings.otel_service_name or os.environ.get("OTEL_SERVICE_NAME") or "ragstream"
    if exporter is not None:
        return OpenTelemetryTracing(exporter, service_name=service_name, batch=False)
    if not tracing_wanted(settings):
        return Tracing()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = settings.otel_exporter_otlp_endpoint
    otlp = (
        OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")
        if endpoint
        else OTLPSpanExporter()
    )
    return OpenTelemetryTracing(otlp, service_name=service_name)


class TraceMiddleware:
    """A span per request or websocket, child of the caller's `traceparent` when it sent one."""

    def __init__(self, app: ASGIApp, *, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.tracing.enabled:
            await self.app(scope, receive, send)
            return
        from opentelemetry import context, propagate

        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
        token = context.attach(propagate.extract(carrier))
        try:
            name = f"{scope.get('method', 'WEBSOCKET')} {scope['path']}"
            request_id = scope.get("state", {}).get("request_id")
            with self.tracing.span(
                name, **{"http.route": scope["path"], "ragstream.request_id": str(request_id)}
            ):
                await self.app(scope, receive, send)
        finally:
            context.detach(token)


@contextlib.contextmanager
def current_span(tracing: Tracing, name: str, **attributes: Any) -> Iterator[Any]:
    """A span made current for the code between entering and leaving, which may be two hooks
    of one extension rather than one block (the operation observer)."""
    if not tracing.enabled:
        yield None
        return
    from opentelemetry import context, trace

    span = tracing.start(name, **attributes)
    token = context.attach(trace.set_span_in_context(span))
    try:
        yield span
    finally:
        context.detach(token)
        span.end()
