"""`/metrics` after real traffic: operations, errors, sign-ins, chat, ingestion, the pool."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from gql import GraphQLRequest

from ragstream.observability.metrics import PrometheusMetrics
from ragstream.settings import Settings
from tests.chat_stub import ChatScript, ChatStub
from tests.chat_support import CHAT, chat_all, chat_server, eventually, new_conversation
from tests.conftest import make_settings
from tests.database_faults import database_unreachable
from tests.documents_support import SEARCH, create, ingest_text
from tests.metrics_support import Scrape, parse, scrape
from tests.support import PASSWORD, LiveServer, running_server

OPERATIONS = "ragstream_graphql_operation_duration_seconds_count"


async def post(server: LiveServer, query: str, token: str | None = None, **extra: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with server.http_client() as client:
        response = await client.post("/graphql", json={"query": query, **extra}, headers=headers)
    return response.json()


async def test_operations_errors_and_sign_ins_are_counted(server: LiveServer) -> None:
    account = await server.register()
    before = await scrape(server)
    prepared = server.state.prepared
    assert prepared is not None
    answered = prepared.answered

    for _ in range(3):
        await post(server, "query Me { me { id } }", account.access_token)
    # The second and third are answered without the pipeline (schema/prepared.py): counted alike.
    assert prepared.answered == answered + 2
    missing = f'query Missing {{ evaluation(id: "{uuid.uuid4()}") {{ id }} }}'
    assert (await post(server, missing, account.access_token))["errors"][0]["extensions"][
        "code"
    ] == "NOT_FOUND"
    await post(server, "query Broken { nope }")
    login = (
        "mutation SignIn($e: String!, $p: String!) { login(email: $e, password: $p) { tokenType } }"
    )
    await post(server, login, variables={"e": account.email, "p": PASSWORD})
    await post(server, login, variables={"e": account.email, "p": "wrong password here"})

    after = await scrape(server)
    assert after.delta(before, OPERATIONS, operation="Me", type="query", outcome="ok") == 3
    assert after.delta(before, OPERATIONS, operation="Missing", type="query", outcome="error") == 1
    assert after.delta(before, OPERATIONS, operation="-", type="query", outcome="rejected") == 1
    assert after.delta(before, OPERATIONS, operation="SignIn", type="mutation", outcome="ok") == 1
    assert (
        after.delta(before, OPERATIONS, operation="SignIn", type="mutation", outcome="error") == 1
    )
    assert after.delta(before, "ragstream_graphql_errors_total", code="NOT_FOUND") == 1
    assert after.delta(before, "ragstream_graphql_errors_total", code="BAD_USER_INPUT") == 1
    assert after.delta(before, "ragstream_graphql_errors_total", code="UNAUTHENTICATED") == 1
    assert after.delta(before, "ragstream_login_attempts_total", outcome="ok") == 1
    assert after.delta(before, "ragstream_login_attempts_total", outcome="failed") == 1
    # Labels carry no ids or user data.
    assert not any(account.email in str(key) or account.id in str(key) for key in after.samples)


async def test_sign_in_refusals_and_capped_operation_names(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        database_url, tmp_path, login_attempts_per_minute=2, metrics_max_operation_names=2
    )
    async with running_server(settings) as server:
        account = await server.register()
        before = await scrape(server)
        login = (
            'mutation($e: String!) { login(email: $e, password: "wrong password here") '
            "{ tokenType } }"
        )
        codes = [
            (await post(server, login, variables={"e": account.email}))["errors"][0]["extensions"][
                "code"
            ]
            for _ in range(3)
        ]
        for name in ("First", "Second", "Third", "Fourth"):
            await post(server, f"query {name} {{ __typename }}")
        after = await scrape(server)

    assert codes == ["UNAUTHENTICATED", "UNAUTHENTICATED", "RATE_LIMITED"]
    assert after.delta(before, "ragstream_login_attempts_total", outcome="failed") == 2
    assert after.delta(before, "ragstream_login_attempts_total", outcome="rate_limited") == 1
    assert after.delta(before, "ragstream_graphql_errors_total", code="RATE_LIMITED") == 1
    # Two names get labels of their own ("anonymous" is not a name); the rest share "other".
    assert after.delta(before, OPERATIONS, operation="First", type="query", outcome="ok") == 1
    assert after.delta(before, OPERATIONS, operation="Second", type="query", outcome="ok") == 1
    assert after.delta(before, OPERATIONS, operation="other", type="query", outcome="ok") == 2
    assert after.value(OPERATIONS, operation="Third", type="query", outcome="ok") == 0


async def test_a_streamed_chat_is_counted(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=("One", " two", " three", "."), delay=0.05)
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        conversation = await new_conversation(server, account.access_token)
        before = await scrape(server)
        variables = {"input": {"conversationId": conversation, "content": "Count to three"}}
        events = []
        during: Scrape | None = None
        async with server.websocket(account.access_token) as session:
            async for data in session.subscribe(GraphQLRequest(CHAT, variable_values=variables)):
                events.append(data["chat"])
                if during is None:
                    during = await scrape(server)
        completed = events[-1]["message"]
        after = await scrape(server)

        chat_stub.script = ChatScript(tokens=("a", "b", "c"), error_after=1)
        failed = await chat_all(server, account.access_token, conversation, "Again")
        last = await scrape(server)

    assert during is not None
    assert during.value("ragstream_websockets_open") == 1
    assert during.value("ragstream_subscriptions_active") == 1
    assert after.value("ragstream_websockets_open") == 0
    assert after.value("ragstream_subscriptions_active") == 0
    provider = {"provider": "openai", "model": "stub-model"}
    assert completed["status"] == "COMPLETE"
    assert after.value("ragstream_generations_active", **provider) == 0
    assert after.delta(before, "ragstream_generations_total", **provider, outcome="ok") == 1
    assert (
        after.delta(before, "ragstream_generation_tokens_total", **provider)
        == completed["completionTokens"]
    )
    assert after.delta(before, "ragstream_provider_first_token_seconds_count", **provider) == 1
    assert after.delta(before, "ragstream_provider_duration_seconds_count", **provider) == 1
    assert after.delta(before, "ragstream_search_duration_seconds_count", kind="chat") == 1
    assert (
        after.delta(before, OPERATIONS, operation="anonymous", type="subscription", outcome="ok")
        == 1
    )

    assert failed[-1]["code"] == "PROVIDER_ERROR"
    assert last.delta(after, "ragstream_generations_total", **provider, outcome="failed") == 1
    assert (
        last.delta(after, "ragstream_provider_failures_total", **provider, code="PROVIDER_ERROR")
        == 1
    )


async def test_an_ingestion_and_a_search_are_counted(server: LiveServer) -> None:
    account = await server.register()
    before = await scrape(server)
    await ingest_text(server, account.access_token, "Pumps move water uphill. " * 20)
    hits = await post(server, SEARCH, account.access_token, variables={"q": "pumps water"})
    assert hits["data"]["search"]

    async def job_counted() -> bool:
        scraped = await scrape(server)
        return (
            scraped.delta(before, "ragstream_ingestion_job_duration_seconds_count", outcome="ready")
            >= 1
        )

    await eventually(job_counted)
    after = await scrape(server)
    assert (
        after.delta(before, "ragstream_ingestion_job_duration_seconds_count", outcome="ready") == 1
    )
    assert after.value("ragstream_ingestion_jobs_running") == 0
    # Finished jobs leave the queue; the waiting and running states are always listed.
    assert after.samples[("ragstream_ingestion_jobs", frozenset({("state", "todo")}))] == 0
    assert after.samples[("ragstream_ingestion_jobs", frozenset({("state", "doing")}))] == 0
    assert after.delta(before, "ragstream_search_duration_seconds_count", kind="search") == 1


async def test_the_pool_gauges_count_connections_in_use_and_waiting(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        database_url, tmp_path, db_pool_size=1, db_max_overflow=0, ingestion_worker=False
    )
    async with running_server(settings) as server:
        account = await server.register()
        registry = server.state.metrics.registry  # type: ignore[attr-defined]

        def gauge(name: str) -> float:
            value = registry.get_sample_value(name)
            assert value is not None
            return float(value)

        async with server.state.sessionmaker() as held:
            await held.connection()  # the pool's only connection
            assert gauge("ragstream_db_pool_in_use") == 1
            query = asyncio.create_task(post(server, "{ me { id } }", account.access_token))

            async def waiting() -> bool:
                return gauge("ragstream_db_pool_waiting") == 1

            await eventually(waiting)
        assert (await query)["data"]["me"]["id"] == account.id
        assert gauge("ragstream_db_pool_waiting") == 0
        assert gauge("ragstream_db_pool_in_use") == 0

        # No worker runs here: a new document's job waits in the queue.
        assert (await create(server, account.access_token, "Queued text.")).ok()
        assert (await scrape(server)).value("ragstream_ingestion_jobs", state="todo") == 1


async def test_the_pool_gauge_gives_back_connections_that_fail(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path, ingestion_worker=False)
    async with running_server(settings) as server:
        account = await server.register()
        registry = server.state.metrics.registry  # type: ignore[attr-defined]
        engine = server.state.engine
        assert engine is not None
        async with database_unreachable(database_url):
            # The pooled connection was ended under it, and cannot be opened again; then an
            # empty pool fails to open a new one.
            for empty_the_pool in (False, False, True):
                if empty_the_pool:
                    await engine.dispose()
                failed = await post(server, "{ me { id } }", account.access_token)
                assert [e["extensions"]["code"] for e in failed["errors"]] == [
                    "INTERNAL_SERVER_ERROR"
                ]
                assert registry.get_sample_value("ragstream_db_pool_in_use") == 0
        served = await post(server, "{ me { id } }", account.access_token)
        assert served["data"]["me"]["id"] == account.id
        assert registry.get_sample_value("ragstream_db_pool_in_use") == 0


async def test_metrics_are_off_in_production_unless_a_token_protects_them(
    database_url: str, tmp_path: Path
) -> None:
    off = make_settings(database_url, tmp_path, environment="production")
    async with running_server(off) as server, server.http_client() as client:
        assert (await client.get("/metrics")).status_code == 404
        assert not server.state.metrics.enabled

    token = "metrics-" + "t" * 32
    protected = make_settings(database_url, tmp_path, environment="production", metrics_token=token)
    async with running_server(protected) as server, server.http_client() as client:
        url = "/metrics"
        refused = await client.get(url)
        wrong = await client.get(url, headers={"Authorization": "Bearer not-the-token"})
        assert (refused.status_code, wrong.status_code) == (401, 401)
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "ragstream_" not in refused.text + wrong.text
        scraped = await scrape(server, token)
        assert "ragstream_websockets_open" in {name for name, _ in scraped.samples}


def test_settings_turn_metrics_on_in_development_only() -> None:
    assert Settings(environment="development").metrics_enabled
    assert not Settings(environment="production").metrics_enabled
    assert Settings(environment="production", metrics=True).metrics_enabled
    assert not Settings(environment="development", metrics=False).metrics_enabled


RECORD = """
import sys
from ragstream.observability.metrics import PrometheusMetrics
metrics = PrometheusMetrics(provider="extractive", model="extractive")
metrics.operation("Me", "query", "ok", 0.01)
metrics.websocket(1)
metrics.pool_in_use(1)
if sys.argv[1] == "show":
    sys.stdout.write(metrics.exposition()[0].decode())
"""


@pytest.mark.parametrize("processes", [3])
def test_multi_process_mode_merges_every_process(tmp_path: Path, processes: int) -> None:
    """With PROMETHEUS_MULTIPROC_DIR each process writes its own files and /metrics sums them."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(processes - 1):
        subprocess.run([sys.executable, "-c", RECORD, "record"], env=env, check=True)  # noqa: S603
    shown = subprocess.run(  # noqa: S603
        [sys.executable, "-c", RECORD, "show"], env=env, check=True, capture_output=True, text=True
    )
    merged = parse(shown.stdout)
    assert merged.value(OPERATIONS, operation="Me", type="query", outcome="ok") == processes
    assert merged.value("ragstream_websockets_open") == processes
    # Written to each process's file as it changes (one process alone reads its count instead).
    assert merged.value("ragstream_db_pool_in_use") == processes


def test_the_grafana_dashboard_reads_only_exported_metrics() -> None:
    """deploy/grafana-dashboard.json names metrics that /metrics really exports."""
    dashboard = json.loads(
        (Path(__file__).parents[1] / "deploy" / "grafana-dashboard.json").read_text()
    )
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"ragstream_[a-z_]+", target["expr"])
    }
    registry = PrometheusMetrics(provider="p", model="m").registry
    exported = {sample_name for family in registry.collect() for sample_name in _names(family)}
    assert used
    assert used <= exported, used - exported


def _names(family: Any) -> set[str]:
    if family.type == "histogram":
        return {f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum")}
    if family.type == "counter":
        return {f"{family.name}_total"}
    return {family.name}


def test_every_operation_is_in_each_scrape_however_few_or_many() -> None:
    """Operations are observed in groups in one process: a scrape still sees each one, the
    first alone and then a count that is not a multiple of the group."""
    metrics = PrometheusMetrics(provider="p", model="m")
    labels = {"operation": "Me", "type": "query", "outcome": "ok"}
    metrics.operation("Me", "query", "ok", 0.002)
    assert metrics.registry.get_sample_value(OPERATIONS, labels) == 1
    for _ in range(150):
        metrics.operation("Me", "query", "ok", 0.02)
    scraped = parse(metrics.exposition()[0].decode())
    assert scraped.value(OPERATIONS, **labels) == 151
    assert (
        scraped.value("ragstream_graphql_operation_duration_seconds_bucket", le="0.0025", **labels)
        == 1
    )
    assert (
        scraped.value("ragstream_graphql_operation_duration_seconds_bucket", le="0.025", **labels)
        == 151
    )
