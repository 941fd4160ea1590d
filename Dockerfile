# Production image: ragstream against an external PostgreSQL with pgvector (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY src ./src
COPY migrations ./migrations
# Editable install keeps alembic.ini and migrations/ beside the package, where `ragstream migrate`
# looks for them.
RUN pip install -e . \
    && useradd --create-home --uid 10001 ragstream \
    && mkdir -p /data && chown ragstream /data

USER ragstream
ENV RAGSTREAM_HOST=0.0.0.0 \
    RAGSTREAM_PORT=8000 \
    RAGSTREAM_DATA_DIR=/data \
    RAGSTREAM_ENVIRONMENT=production
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["ragstream", "serve"]
