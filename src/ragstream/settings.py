"""Runtime configuration, read from the environment and `.env` (prefix ``RAGSTREAM_``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_JWT_SECRET_BYTES = 32


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("ragstream", appauthor=False))


class Settings(BaseSettings):
    """Every setting ragstream reads; `.env.example` documents each one."""

    model_config = SettingsConfigDict(
        env_prefix="RAGSTREAM_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    environment: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"

    # Storage
    database_url: str | None = None
    data_dir: Path = Field(default_factory=default_data_dir)
    # A fixed pool: a request beyond it waits for a connection. Connections opened beyond the
    # pool (overflow) are closed when given back, so under sustained load every request past
    # the pool paid a new connection (and its TLS negotiation) and its close.
    db_pool_size: int = 20
    db_max_overflow: int = 0
    # Longest wait for a pooled connection (and to connect); past it a request answers
    # RATE_LIMITED (SERVER_BUSY) instead of hanging.
    db_pool_timeout: float = 5.0
    db_statement_timeout_ms: int = 30_000

    # Auth
    jwt_secret: SecretStr | None = None
    access_token_ttl_seconds: int = 15 * 60
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    # argon2id cost; the defaults are above the OWASP minimum (19 MiB, t=2, p=1).
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65_536
    # One lane per hash: a hash then keeps to one core, and the hashes running at once (one
    # fewer than the cores by default, None) leave a core to the event loop and PostgreSQL.
    argon2_parallelism: int = 1
    password_hash_concurrency: int | None = None
    # A sign-in whose hash cannot start within this wait is RATE_LIMITED (SERVER_BUSY).
    password_hash_wait_seconds: float = 2.0
    login_attempts_per_minute: int = 10
    login_attempts_per_minute_per_client: int = 60
    registrations_per_hour: int = 1_000  # all clients together
    registrations_per_hour_per_client: int = 20

    # HTTP / GraphQL surface
    cors_origins: list[str] = Field(default_factory=list)
    introspection: bool | None = None  # None: on in development, off in production
    graphiql: bool | None = None  # None: follows introspection
    max_query_depth: int = 10
    max_aliases: int = 15
    max_directives: int = 50
    max_fields: int = 300  # field selections per operation, fragments expanded
    max_tokens: int = 2_000
    max_body_bytes: int = 1_000_000
    # Arrays and objects nested in a JSON body, GET variables or websocket message.
    max_json_depth: int = 32
    # List items one operation may ask for, nested lists multiplied (see schema/list_size.py).
    max_list_items: int = 10_000
    max_upload_bytes: int = 20 * 1024 * 1024
    ws_connection_init_timeout_seconds: float = 10.0
    ws_max_operations: int = 20
    ws_max_message_bytes: int | None = None  # None: max_body_bytes; larger messages close 1009
    ws_max_sockets_per_user: int = 10
    ws_max_sockets_per_address: int = 100
    # A message the client has not made room for (by reading) within this time closes it (1008).
    ws_send_timeout_seconds: float = 30.0

    # Providers
    openai_api_key: SecretStr | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, validation_alias="OPENAI_BASE_URL")
    chat_provider: Literal["openai", "extractive"] | None = None
    embedding_provider: Literal["openai", "hashing"] | None = None
    chat_model: str = "gpt-4o-mini"
    embedding_model: str = "text-embedding-3-small"
    embedding_dimensions: int = 384
    embedding_batch_size: int = 64
    embedding_request_dimensions: bool = True  # off for servers that reject `dimensions`
    openai_max_retries: int = 3
    openai_timeout_seconds: float = 60.0

    # Knowledge base
    ingestion_worker: bool = True  # run the ingestion worker inside `ragstream serve`
    ingestion_concurrency: int = 2
    ingestion_max_attempts: int = 5
    ingestion_retry_base_seconds: int = 2
    # A worker whose heartbeat is this old counts as gone: its jobs are retried (heartbeats
    # come every sixth of it, at most 10 s apart).
    ingestion_stalled_seconds: float = 30.0
    ingestion_recovery_interval_seconds: float = 30.0
    # How often the worker looks for jobs whose retry time has come (new jobs wake it at once).
    ingestion_poll_seconds: float = 5.0
    # How long a stopping worker's running jobs may go on (see check_ingestion_timing).
    ingestion_shutdown_timeout_seconds: float = 10.0
    chunk_target_tokens: int = 500
    chunk_overlap_tokens: int = 50
    # Per document (see domain/documents/reading.py); past any of them it ends FAILED.
    ingestion_max_text_chars: int = 5_000_000
    ingestion_max_chunks: int = 5_000
    ingestion_max_token_chars: int = 100  # longer runs without whitespace are cut
    ingestion_timeout_seconds: float = 120.0  # per parse-and-chunk job, per embedding batch
    # Worker processes for parsing, chunking and offline embedding; None: one per core.
    work_processes: int | None = None
    search_candidates: int = 60
    search_scan: int = 400  # HNSW candidates ordered exactly, of which the closest are kept
    search_ef_search: int = 200  # HNSW candidate list per scan round: recall against time
    search_max_scan_tuples: int = 20_000  # how far a filtered HNSW scan looks for readable rows
    search_common_term_share: float = 0.05  # words in more chunks only rank, never select
    # Connections of their own (not the requests' pool) on which that many searches at once
    # run their full-text half beside the vector half (retrieval/service.py SideSessions);
    # 0: both halves in turn.
    search_side_connections: int = Field(default=4, ge=0)
    document_events_poll_seconds: float = 2.0

    # Limits
    daily_message_limit: int = 200
    redis_url: str | None = None

    # Operating (README, Operating): metrics, logs, traces, trusted documents
    # /metrics: None means on in development; in production on only when metrics_token is set.
    metrics: bool | None = None
    metrics_token: SecretStr | None = None  # when set, /metrics wants `Authorization: Bearer` it
    metrics_max_operation_names: int = 100  # distinct operation-name labels, then "other"
    log_format: Literal["json", "text"] | None = None  # None: json in production, else text
    log_requests: bool = True  # one line per HTTP request and per websocket operation
    # Trusted documents (ragstream/persisted.py): automatic persisted queries, only the
    # registered manifest, or neither.
    persisted_queries: Literal["automatic", "only", "off"] = "automatic"
    persisted_queries_cache_size: int = 1_000  # hashes remembered per process (automatic)
    persisted_queries_manifest: Path | None = None  # None: persisted-queries.json in data_dir
    # Traces (observability/tracing.py): OTLP over HTTP to this collector, e.g.
    # http://localhost:4318; the standard OTEL_EXPORTER_OTLP_* variables work too.
    otel_exporter_otlp_endpoint: str | None = None
    otel_service_name: str | None = None  # None: OTEL_SERVICE_NAME, else "ragstream"
    # Cache-Control max-age of GET queries that no viewer can change (anonymous, no errors).
    get_cache_max_age_seconds: int = 60
    # The hottest reads (`me`, the evaluations list) answered from a compiled plan, with the
    # same bytes and errors as field-by-field execution (schema/compiled.py); off: always execute.
    compiled_reads: bool = True

    # Chat (see domain/chat): generation, streaming and persistence
    chat_system_prompt: str | None = None  # None: the built-in prompt in domain/chat/prompt.py
    chat_max_concurrent_generations: int = 3
    # Answers under way in the whole process: what one process streams (bench/stream.py runs
    # 1,000 at 20 tokens/s each). Past it a send waits up to chat_admission_wait_seconds, with
    # at most chat_admission_queue_length others, then is RATE_LIMITED (SERVER_BUSY). The
    # database is not what limits it: an answer's statements take turns on
    # chat_database_lanes connections (its question, retrieval, its end), never more.
    chat_max_active_generations: int = 1_000
    chat_admission_queue_length: int = 100
    chat_admission_wait_seconds: float = 2.0
    # None: the pool (size + overflow) less a quarter of it, which other requests keep.
    chat_database_lanes: int | None = None
    chat_retrieval_limit: int = 5
    chat_history_budget_tokens: int = 2_000
    chat_sources_budget_tokens: int = 3_000
    chat_max_message_chars: int = 8_000
    chat_max_output_tokens: int = 1_024
    # Longest answer kept; past it the answer ends COMPLETE, cut, with a truncation marker.
    chat_max_answer_chars: int = 20_000
    chat_temperature: float = 0.2
    chat_timeout_seconds: float = 300.0
    chat_first_token_timeout_seconds: float = 60.0
    chat_stall_timeout_seconds: float = 30.0
    chat_max_retries: int = 2
    chat_retry_backoff_seconds: float = 0.5
    chat_coalesce_window_ms: int = 30
    # Text events per second that all of a process's followers send together at most: with
    # many followers the coalescing window stretches, up to 1/3 s (domain/chat/streams.py:
    # Crowd). 1,000: from about 34 followers on, events carry more than one window's text.
    chat_max_events_per_second: int = 1_000
    chat_flush_interval_ms: int = 500
    chat_shutdown_grace_seconds: float = 5.0
    # Each server process holds a lease on the answers it generates and renews it every third
    # of this; answers of a process killed without a shutdown become INTERRUPTED at most this
    # plus a third of it after its last renewal (domain/chat/ownership.py).
    chat_lease_seconds: float = 15.0
    # A follower of an answer generated by another process re-reads it when no event came
    # for this long (domain/chat/remote.py).
    chat_follow_poll_seconds: float = 1.0
    extractive_word_delay_ms: int = 15

    @model_validator(mode="after")
    def _resolve_defaults(self) -> Settings:
        # Compose files pass unset variables as empty strings: treat them as absent.
        if self.openai_api_key is not None and not self.openai_api_key.get_secret_value():
            self.openai_api_key = None
        if not self.openai_base_url:
            self.openai_base_url = None
        if self.introspection is None:
            self.introspection = self.environment == "development"
        if self.graphiql is None:
            self.graphiql = self.introspection
        if self.metrics_token is not None and not self.metrics_token.get_secret_value():
            self.metrics_token = None
        if self.log_format is None:
            self.log_format = "json" if self.environment == "production" else "text"
        if self.metrics is None:
            self.metrics = self.environment == "development" or self.metrics_token is not None
        online = self.openai_api_key is not None
        if self.chat_provider is None:
            self.chat_provider = "openai" if online else "extractive"
        if self.embedding_provider is None:
            self.embedding_provider = "openai" if online else "hashing"
        return self

    @property
    def introspection_enabled(self) -> bool:
        return bool(self.introspection)

    @property
    def graphiql_enabled(self) -> bool:
        return bool(self.graphiql)

    @property
    def ingestion_heartbeat_seconds(self) -> float:
        """How often a worker writes its heartbeat: a sixth of the stalled time, at most 10 s."""
        return max(0.2, min(10.0, self.ingestion_stalled_seconds / 6))

    @property
    def ingestion_heartbeat_timeout_seconds(self) -> float:
        """How long a heartbeat may take before its worker is stopped and replaced: half an
        interval, at least 1 s."""
        return max(1.0, self.ingestion_heartbeat_seconds / 2)

    @property
    def ws_message_limit(self) -> int:
        return self.ws_max_message_bytes or self.max_body_bytes

    @property
    def metrics_enabled(self) -> bool:
        return bool(self.metrics)

    @property
    def manifest_path(self) -> Path:
        return self.persisted_queries_manifest or self.data_dir / "persisted-queries.json"

    @property
    def observe_operations(self) -> bool:
        """Whether each GraphQL operation is measured (for metrics, its log line or both)."""
        return self.metrics_enabled or self.log_requests

    @property
    def answer_connection_attempts(self) -> int:
        """Pool timeouts an admitted answer's retrieval or end waits through before failing:
        enough for every connection in use to come back (a statement timeout)."""
        return max(2, math.ceil(self.db_statement_timeout_ms / 1000 / self.db_pool_timeout) + 1)

    @property
    def chat_database_connections(self) -> int:
        """Connections the chat's own statements use at once (`chat_database_lanes`)."""
        if self.chat_database_lanes is not None:
            return self.chat_database_lanes
        pool = self.db_pool_size + self.db_max_overflow
        return max(1, pool - pool // 4)


# What a stopping ingestion worker may take besides its jobs' grace: cancelling its side
# tasks, aborting the jobs still running and recording that (see check_ingestion_timing).
STOP_STEPS_SECONDS = 1.0


class ConfigurationError(RuntimeError):
    """Raised at start-up when the configuration cannot be used; the message says how to fix it."""


def check_serving(settings: Settings) -> bytes:
    """What the server refuses to start without, checked before anything starts (serve starts
    the embedded database early); returns the JWT signing key."""
    check_openai_key(settings)
    if settings.ingestion_worker:
        check_ingestion_timing(settings)
    return resolve_jwt_secret(settings)


def check_ingestion_timing(settings: Settings) -> None:
    """Refuses a shutdown grace that would let the recovery retry a stopping worker's jobs.

    A worker's jobs count as stalled once its heartbeat is ``ingestion_stalled_seconds`` old.
    A heartbeat stores the time it began, and may have taken nearly its timeout to succeed;
    the next one, an interval later, fails at its timeout; the worker then stops, and its
    running jobs get their grace, then a second (`STOP_STEPS_SECONDS`) to be aborted. All of
    it must fit in the stalled time, else a job could be run twice at once.
    """
    stalled = settings.ingestion_stalled_seconds
    taken = (
        settings.ingestion_heartbeat_seconds
        + 2 * settings.ingestion_heartbeat_timeout_seconds
        + STOP_STEPS_SECONDS
    )
    if settings.ingestion_shutdown_timeout_seconds + taken >= stalled:
        raise ConfigurationError(
            "RAGSTREAM_INGESTION_SHUTDOWN_TIMEOUT_SECONDS "
            f"({settings.ingestion_shutdown_timeout_seconds:g}) must be under "
            f"RAGSTREAM_INGESTION_STALLED_SECONDS ({stalled:g}) less what heartbeats and "
            f"stopping may take ({taken:g} s): otherwise a stopping worker's jobs could be "
            "retried elsewhere while they still run; lower the first or raise the second"
        )


def check_openai_key(settings: Settings) -> None:
    """Refuses a configuration where a provider is `openai` but no key is set.

    Without this the server would start and then fail every answer or every ingestion. Local
    OpenAI-compatible servers (Ollama, vLLM) accept any key, so they need one set too.
    """
    if settings.openai_api_key is None and _openai_providers(settings):
        raise missing_openai_key(settings)


def _openai_providers(settings: Settings) -> list[str]:
    providers = (
        ("RAGSTREAM_CHAT_PROVIDER", settings.chat_provider),
        ("RAGSTREAM_EMBEDDING_PROVIDER", settings.embedding_provider),
    )
    return [f"{name}=openai" for name, provider in providers if provider == "openai"]


def missing_openai_key(settings: Settings) -> ConfigurationError:
    needing = " and ".join(_openai_providers(settings)) or "an openai provider"
    return ConfigurationError(
        f"OPENAI_API_KEY is required by {needing}; set it (a local OpenAI-compatible server "
        "accepts any value, e.g. OPENAI_API_KEY=local) or choose the offline providers "
        "(extractive, hashing)"
    )


def resolve_jwt_secret(settings: Settings) -> bytes:
    """The signing key: the configured one (>= 32 bytes), or in development one kept on disk.

    Production refuses to start without an explicit secret, so tokens never silently change
    between deployments.
    """
    if settings.jwt_secret is not None:
        secret = settings.jwt_secret.get_secret_value().encode()
        if len(secret) < MIN_JWT_SECRET_BYTES:
            raise ConfigurationError(
                f"RAGSTREAM_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes "
                f"(got {len(secret)}); generate one with: python -c "
                "'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return secret
    if settings.environment == "production":
        raise ConfigurationError(
            "RAGSTREAM_JWT_SECRET is required in production; generate one with: python -c "
            "'import secrets; print(secrets.token_urlsafe(48))'"
        )
    path = settings.data_dir / "jwt_secret"
    if path.exists():
        secret = path.read_bytes().strip()
        if len(secret) >= MIN_JWT_SECRET_BYTES:
            return secret
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    secret = os.urandom(48).hex().encode()
    # Written with owner-only permissions before any content lands in it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the mode above only applies to a file that did not exist yet
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return secret
