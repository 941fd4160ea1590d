"""Application factory and lifespan: everything stateful is built here, nothing at import."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from ragstream.db.embedded import start_embedded
from ragstream.db.engine import make_engine, make_sessionmaker
from ragstream.db.migrate import upgrade_to_head
from ragstream.documents_worker import ingestion_worker
from ragstream.domain.chat.generation import GenerationManager
from ragstream.domain.chat.preparation import knowledge_base_retriever
from ragstream.domain.llm.chat import build_chat_provider
from ragstream.domain.llm.embeddings import build_embedder
from ragstream.domain.llm.openai_client import check_openai_key
from ragstream.domain.retrieval.service import SearchTuning
from ragstream.domain.users.auth import AuthService
from ragstream.domain.users.passwords import PasswordHasher
from ragstream.domain.users.ratelimit import SlidingWindowLimiter
from ragstream.domain.users.tokens import TokenService
from ragstream.edge import UnexpectedErrorMiddleware
from ragstream.graphiql import GraphiQLAssets
from ragstream.middleware import BodyLimitMiddleware, RequestIdMiddleware
from ragstream.schema import build_schema
from ragstream.security_headers import SecurityHeadersMiddleware
from ragstream.settings import ConfigurationError, Settings, resolve_jwt_secret
from ragstream.socket_limits import SocketRegistry, WebSocketLimitMiddleware
from ragstream.state import AppState
from ragstream.view import GraphQLView
from ragstream.workpool import WorkPool

logger = logging.getLogger(__name__)

__all__ = ["AppState", "build_state", "connect", "create_app"]


def build_state(settings: Settings) -> AppState:
    """Everything that can be checked without a database; raises ConfigurationError early."""
    if settings.redis_url:
        # Refused rather than ignored: replicas without shared fan-out would silently lose events.
        raise ConfigurationError(
            "RAGSTREAM_REDIS_URL is set, but this version fans out streams and events in-process "
            "only; unset it and run a single server (add `ragstream worker` processes to scale "
            "ingestion)"
        )
    check_openai_key(settings)
    tokens = TokenService(
        resolve_jwt_secret(settings),
        access_ttl=settings.access_token_ttl_seconds,
        refresh_ttl=settings.refresh_token_ttl_seconds,
    )
    hasher = PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_kib=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
        concurrency=settings.password_hash_concurrency,
        wait_seconds=settings.password_hash_wait_seconds,
    )
    limiter = SlidingWindowLimiter(settings.login_attempts_per_minute)
    client_limiter = SlidingWindowLimiter(settings.login_attempts_per_minute_per_client)
    too_many_accounts = "too many accounts created; try again later"
    register_limiter = SlidingWindowLimiter(
        settings.registrations_per_hour, window=3600, message=too_many_accounts
    )
    register_client_limiter = SlidingWindowLimiter(
        settings.registrations_per_hour_per_client, window=3600, message=too_many_accounts
    )
    return AppState(
        settings=settings,
        schema=build_schema(settings),
        tokens=tokens,
        auth=AuthService(
            hasher,
            tokens,
            limiter,
            client_limiter,
            register_limiter=register_limiter,
            register_client_limiter=register_client_limiter,
        ),
        chat=GenerationManager(settings, build_chat_provider(settings)),
        sockets=SocketRegistry(
            per_address=settings.ws_max_sockets_per_address,
            per_user=settings.ws_max_sockets_per_user,
        ),
    )


async def check_pgvector(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        available = await conn.scalar(
            text("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")
        )
    if not available:
        raise ConfigurationError(
            "the configured PostgreSQL has no pgvector extension; install pgvector "
            "(e.g. use the pgvector/pgvector image) or unset RAGSTREAM_DATABASE_URL"
        )


@contextlib.asynccontextmanager
async def connect(state: AppState, *, migrate: bool = True) -> AsyncIterator[None]:
    """Start (or reach) the database, migrate it and open the pool; undo all of it on exit."""
    settings = state.settings
    url = settings.database_url
    if url is None:
        state.embedded = await asyncio.to_thread(start_embedded, settings.data_dir)
        url = state.embedded.url()
    state.engine = make_engine(url, settings)
    try:
        await check_pgvector(state.engine)
        if migrate:
            await asyncio.to_thread(
                upgrade_to_head, url, embedding_dimensions=settings.embedding_dimensions
            )
        state.database_url = url
        state.sessionmaker_ = make_sessionmaker(state.engine)
        # Processes start with the first job, not here.
        state.work_ = WorkPool(settings.work_processes)
        state.embedder_ = build_embedder(settings, state.work_)
        yield
    finally:
        for task in list(state.background):
            task.cancel()
        await asyncio.gather(*state.background, return_exceptions=True)
        if state.embedder_ is not None:
            await state.embedder_.aclose()
        if state.work_ is not None:
            state.work_.shutdown()
        await state.engine.dispose()
        if state.embedded is not None:
            await asyncio.to_thread(state.embedded.stop)


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


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    state = build_state(settings)
    assets = GraphiQLAssets.load() if settings.graphiql_enabled else None
    view = GraphQLView(state, assets)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started = False
        try:
            async with (
                connect(state),
                ingestion_worker(state),
                state.chat.running(
                    state.sessionmaker,
                    knowledge_base_retriever(state.embedder, SearchTuning.from_settings(settings)),
                ),
            ):
                started = True
                logger.info("ragstream ready")
                yield
        except ConfigurationError as exc:
            if not started:
                state.startup_error = exc
            raise
        finally:
            state.auth.hasher.close()

    routes = [
        Route("/graphql", view, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", view),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
    ]
    if assets is not None:
        routes.append(Route("/static/{path:path}", assets.endpoint, methods=["GET", "HEAD"]))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestIdMiddleware),
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
    return app
