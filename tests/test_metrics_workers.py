"""`serve --workers N` with metrics on: any worker's `/metrics` counts every worker's requests."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.chat_stub import ChatStub
from tests.test_scale_processes import serving

REQUESTS = 12
NAMED = "query Ping { __typename }"
COUNT = re.compile(
    r'^ragstream_graphql_operation_duration_seconds_count\{[^}]*operation="Ping"[^}]*\} (\S+)$',
    re.MULTILINE,
)


async def test_every_scrape_sums_the_operations_of_all_workers(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with serving(
        database_url, tmp_path, chat_stub, "--workers", "2", RAGSTREAM_METRICS="true"
    ) as (_, server):
        # Each request on a connection of its own, so both workers take some of them.
        for _ in range(REQUESTS):
            async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as client:
                answer = await client.post("/graphql", json={"query": NAMED})
                assert answer.json() == {"data": {"__typename": "Query"}}
        counts = []
        for _ in range(6):
            async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as client:
                scrape = await client.get("/metrics")
            assert scrape.status_code == 200
            counts.append(sum(float(value) for value in COUNT.findall(scrape.text)))

    assert counts == [REQUESTS] * 6
