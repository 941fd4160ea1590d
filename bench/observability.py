"""What metrics and request logs cost per request: the same app with them on and off.

    python -m bench.observability                # me and list, 5 rounds of 300 requests
    python -m bench.observability --requests 200 --block 20

Two apps run in this process over one migrated database (the embedded PostgreSQL): "off"
(RAGSTREAM_METRICS=false, RAGSTREAM_LOG_REQUESTS=false) and "on" (metrics, and a JSON line
per request written to a file, logging set up as `ragstream serve` sets it up with
`RAGSTREAM_LOG_FORMAT=json`). Requests go one at a time through httpx's ASGI transport, in
small blocks that alternate between the two apps (the order rotates each round); each block
measures this process's CPU time per request. The client's share of that time is the same for
both apps, so "added" (on minus off, medians over the blocks) is the price of the
observability itself; compare it with a request's CPU in `python -m bench.peers` for the share
it adds to a served request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from bench.common import bench_settings, embedded_database
from ragstream.app import create_app
from ragstream.observability.logs import configure_logging

QUERIES = {
    "me": "{ me { id } }",
    "list": "{ evaluations(first: 20) { edges { node { id title companyName status "
    "overallScore createdAt owner { displayName } } } } }",
}
VARIANTS: dict[str, dict[str, Any]] = {
    "off": {"metrics": False, "log_requests": False},
    "on": {"metrics": True, "log_requests": True},
}


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            yield client


async def post(client: httpx.AsyncClient, query: str, token: str, **variables: Any) -> Any:
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"authorization": f"Bearer {token}"},
    )
    body = response.json()
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    return body["data"]


async def seed(client: httpx.AsyncClient) -> str:
    data = await post(
        client,
        "mutation($input: RegisterInput!) { register(input: $input) { accessToken } }",
        "",
        input={"email": "bench@example.com", "password": "bench password 123", "displayName": "B"},
    )
    token: str = data["register"]["accessToken"]
    for i in range(20):
        await post(
            client,
            "mutation($input: CreateEvaluationInput!) { createEvaluation(input: $input) { id } }",
            token,
            input={"title": f"Evaluation {i}", "companyName": "ACME"},
        )
    return token


async def cpu_per_request(client: httpx.AsyncClient, query: str, token: str, count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        await post(client, query, token)
    return (time.process_time() - started) / count * 1e6


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def run(args: argparse.Namespace) -> None:
    async with embedded_database() as (database, name, tmp):
        url = database.url(name)
        log_file = (tmp / "requests.log").open("w")
        configure_logging("json", "info", log_file)  # as `serve` does, into a file
        logging.getLogger("httpx").setLevel(logging.WARNING)  # the bench client's own lines
        apps = {
            variant: create_app(
                bench_settings(
                    url,
                    tmp / variant,
                    environment="production",
                    ingestion_worker=False,
                    **overrides,
                )
            )
            for variant, overrides in VARIANTS.items()
        }
        async with serving(apps["off"]) as off, serving(apps["on"]) as on:
            clients = {"off": off, "on": on}
            token = await seed(off)
            for client in clients.values():  # warm-up: pools, caches, parsed documents
                for query in args.queries:
                    await cpu_per_request(client, QUERIES[query], token, args.requests // 3)
            runs: dict[tuple[str, str], list[float]] = {}
            loads = [load_average()]
            names = list(clients)
            for round_index in range(args.rounds):
                order = names[round_index % 2 :] + names[: round_index % 2]
                for query in args.queries:
                    # Small alternating blocks: both apps see the machine in the same state.
                    for _ in range(args.requests // args.block):
                        for variant in order:
                            cpu = await cpu_per_request(
                                clients[variant], QUERIES[query], token, args.block
                            )
                            runs.setdefault((query, variant), []).append(cpu)
                loads.append(load_average())
        configure_logging("json", "warning")
        log_file.close()
        lines = sum(
            json.loads(line)["logger"] == "ragstream.requests"
            for line in (tmp / "requests.log").read_text().splitlines()
        )
    print(
        f"{args.rounds} rounds x {args.requests} sequential requests per (query, variant) in "
        f"alternating blocks of {args.block}, in-process; medians over blocks; {lines} JSON "
        "request lines written by 'on'"
    )
    print("\n| query | off: CPU µs/req | on: CPU µs/req | added µs/req | on / off |")
    print("|---|---|---|---|---|")
    for query in args.queries:
        off_cpu = statistics.median(runs[(query, "off")])
        on_cpu = statistics.median(runs[(query, "on")])
        print(
            f"| {query} | {off_cpu:,.0f} | {on_cpu:,.0f} | {on_cpu - off_cpu:,.0f} "
            f"| {on_cpu / off_cpu:.3f}x |"
        )
    print(f"\nload average (1, 5, 15 min) before the rounds and after each: {'; '.join(loads)}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", nargs="+", choices=list(QUERIES), default=list(QUERIES))
    parser.add_argument("--requests", type=int, default=300, help="per (round, query, variant)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=20, help="requests per alternating block")
    args = parser.parse_args()
    if not 10 <= args.requests <= 5_000 or not 1 <= args.rounds <= 20:
        parser.error("requests must be 10..5000 and rounds 1..20")
    if not 1 <= args.block <= args.requests:
        parser.error("block must be 1..requests")
    return args


def main() -> None:
    asyncio.run(run(parse_args()))


if __name__ == "__main__":
    main()
