"""Application factory and lifespan: everything stateful is built here, nothing at import."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from ragstream.backend import connect, shared_events
from ragstream.db.embedded import EarlyStart
from ragstream.documents_worker import ingestion_worker
from ragstream.domain.chat.generation import GenerationManager
from ragstream.domain.chat.preparation import knowledge_base_retriever
from ragstream.domain.errors import InvalidInput
from ragstream.domain.flags.features import defaults_from_settings
from ragstream.domain.llm.providers import build_chat_provider
from ragstream.domain.retrieval.service import SearchTuning
from ragstream.domain.users.auth import AuthService
from ragstream.domain.users.passwords import PasswordHasher
from ragstream.domain.users.ratelimit import SlidingWindowLimiter
from ragstream.domain.users.tokens import TokenService
from ragstream.edge import UnexpectedErrorMiddleware
from ragstream.graphiql import GraphiQLAssets
from ragstream.middleware import BodyLimitMiddleware
from ragstream.observability.endpoint import metrics_endpoint
from ragstream.observability.logs import RequestLogMiddleware, flush_request_lines
from ragstream.observability.metrics import build_metrics, mark_process_dead
from ragstream.observability.providers import observed
from ragstream.observability.search import timed_retriever
from ragstream.observability.tracing import TraceMiddleware, build_tracing
from ragstream.persisted import PersistedDocuments, load_manifest
from ragstream.prepared_lane import PreparedLane
from ragstream.schema import build_schema
from ragstream.schema.prepared import PreparedReads
from ragstream.security_headers import SecurityHeadersMiddleware
from ragstream.settings import ConfigurationError, Settings, check_serving
from ragstream.socket_limits import SocketRegistry, WebSocketLimitMiddleware
from ragstream.state import AppState
from ragstream.view import GraphQLView

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

logger = logging.getLogger(__name__)

__all__ = ["AppState", "build_state", "connect", "create_app"]


def build_state(settings: Settings, span_exporter: SpanExporter | None = None) -> AppState:
    """Everything that can be checked without a database; raises ConfigurationError early.

    ``span_exporter`` turns tracing on with that exporter (tests pass an in-memory one).
    """
    tokens = TokenService(
        check_serving(settings),
        access_ttl=settings.access_token_ttl_seconds,
        refresh_ttl=settings.refresh_token_ttl_seconds,
    )
    hasher = PasswordHasher.from_settings(settings)
    provider = build_chat_provider(settings)
    metrics = build_metrics(
        enabled=settings.metrics_enabled,
        provider=str(settings.chat_provider),
        model=provider.model,
        max_operation_names=settings.metrics_max_operation_names,
    )
    tracing = build_tracing(settings, span_exporter)
    # Counted in the database: every server process shares them.
    limiter = SlidingWindowLimiter("login-email", settings.login_attempts_per_minute)
    client_limiter = SlidingWindowLimiter(
        "login-client", settings.login_attempts_per_minute_per_client
    )
    too_many_accounts = "too many accounts created; try again later"
    register_limiter = SlidingWindowLimiter(
        "register", settings.registrations_per_hour, window=3600, message=too_many_accounts
    )
    register_client_limiter = SlidingWindowLimiter(
        "register-client",
        settings.registrations_per_hour_per_client,
        window=3600,
        message=too_many_accounts,
    )
    schema = build_schema(settings)
    return AppState(
        settings=settings,
        schema=schema,
        tokens=tokens,
        auth=AuthService(
            hasher,
            tokens,
            limiter,
            client_limiter,
            register_limiter=register_limiter,
            register_client_limiter=register_client_limiter,
        ),
        chat=GenerationManager(
            settings, observed(provider, metrics, tracing, str(settings.chat_provider))
        ),
        feature_defaults=defaults_from_settings(settings, chat_model=provider.model),
        sockets=SocketRegistry(
            per_address=settings.ws_max_sockets_per_address,
            per_user=settings.ws_max_sockets_per_user,
        ),
        metrics=metrics,
        tracing=tracing,
        persisted=build_persisted(settings),
        prepared=PreparedReads(schema._schema, max_list_items=settings.max_list_items)
        if settings.compiled_reads
        else None,
    )


def build_persisted(settings: Settings) -> PersistedDocuments:
    path = settings.manifest_path
    try:
        manifest = load_manifest(path)
    except (ValueError, InvalidInput) as exc:
        reason = exc.message if isinstance(exc, InvalidInput) else str(exc)
        raise ConfigurationError(
            f"the persisted query manifest {path} is unusable: {reason}"
        ) from exc
    if settings.persisted_queries == "only" and not manifest:
        raise ConfigurationError(
            f"RAGSTREAM_PERSISTED_QUERIES=only runs registered documents only, and {path} has "
            "none; register them with `ragstream persist-queries FILE.json`"
        )
    return PersistedDocuments(
        settings.persisted_queries, manifest, settings.persisted_queries_cache_size
    )


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    state: AppState = request.app.state.ragstream
    try:
        async with asyncio.timeout(2):
            async with state.sessionmaker() as session:
                await session.execute(text("SELECT 1"))
    except Exception:  # any failure means "not ready"; details go to the log only
        logger.warning("readiness check failed", exc_info=True)
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})


class App(Starlette):
    """The application: prepared reads go through their lane (prepared_lane.py) in front of
    the middleware stack, everything else through the stack."""

    lane: PreparedLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lane
        if lane is not None and lane.takes(scope):
            scope["app"] = self
            given_way = await lane(scope, receive, send)
            if given_way is None:
                return
            receive = given_way
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    early: EarlyStart | None = None,
    alone: bool = False,
    span_exporter: SpanExporter | None = None,
) -> Starlette:
    """The application; ``early``: the embedded server, already starting, for the lifespan;
    ``alone``: no other server can be using the database (serve holding the embedded
    database's data-dir lock), so answers a crash left running are interrupted at once;
    ``span_exporter``: traces go there (tests pass an in-memory exporter)."""
    settings = settings or Settings()
    state = build_state(settings, span_exporter)
    assets = GraphiQLAssets.load() if settings.graphiql_enabled else None
    view = GraphQLView(state, assets)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started = False
        try:
            async with (
                connect(state, early=early),
                shared_events(state),
                ingestion_worker(state),
                state.chat.running(
                    state.sessionmaker,
                    timed_retriever(
                        knowledge_base_retriever(
                            state.embedder, SearchTuning.from_settings(settings)
                        ),
                        state.metrics,
                        state.tracing,
                    ),
                    broker=state.broker,
                    alone=alone,
                    lease_sessionmaker=state.lease_sessionmaker,
                ),
            ):
                started = True  # serve logs the banner once it listens
                yield
        except ConfigurationError as exc:
            if not started:
                state.startup_error = exc
            raise
        finally:
            state.auth.hasher.close()
            if state.metrics.enabled:
                mark_process_dead()
            state.tracing.shutdown()
        # Answers saved or marked, workers stopped, the database released.
        logger.info("ragstream stopped")
        # Request lines still waiting go out now, whatever way the process then ends.
        flush_request_lines()

    routes = [
        Route("/graphql", view, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", view),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
    ]
    if settings.metrics_enabled:
        routes.append(Route("/metrics", metrics_endpoint))
    if assets is not None:
        routes.append(Route("/static/{path:path}", assets.endpoint, methods=["GET", "HEAD"]))
    # Tracing is on or off for the process: off, its middleware is left out (each layer costs
    # every request a call and a resumption per wait).
    tracing = [Middleware(TraceMiddleware, tracing=state.tracing)] if state.tracing.enabled else []
    app = App(
        routes=routes,
        middleware=[
            Middleware(RequestLogMiddleware, log_requests=settings.log_requests),
            *tracing,
            Middleware(SecurityHeadersMiddleware),
            Middleware(UnexpectedErrorMiddleware),
            Middleware(
                WebSocketLimitMiddleware,
                registry=state.sockets,
                max_message_bytes=settings.ws_message_limit,
                send_timeout_seconds=settings.ws_send_timeout_seconds,
            ),
            Middleware(
                BodyLimitMiddleware,
                max_bytes=settings.max_body_bytes,
                max_multipart_bytes=settings.max_upload_bytes + 64 * 1024,
            ),
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=[
                    "authorization",
                    "content-type",
                    "apollo-require-preflight",
                    "x-requested-with",
                    "x-request-id",
                ],
                expose_headers=["x-request-id"],
                max_age=600,
            ),
        ],
        lifespan=lifespan,
    )
    app.state.ragstream = state
    if state.prepared is not None:
        app.lane = PreparedLane(
            view, max_body_bytes=settings.max_body_bytes, log_requests=settings.log_requests
        )
    return app
