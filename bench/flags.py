"""Server CPU that resolving the viewer's feature flags adds to a request.

Starts two ragstream apps in this process over one throw-away embedded database: one in the
`development` environment, which has no flags, and one in `production`, where the measured
account has flags at every scope (user, role and global, for every feature) and 2,000 other
accounts have flags of their own. The same account asks both, in interleaved rounds:

  floor       `{ me { id } }`: the viewer statement, flags not looked at
  id+flags    `{ me { id } }` where flags exist (they ride along with the viewer, undecoded)
  features    `{ me { id features { key enabled metadata source } } }` without any flag
  features+   the same with flags at every scope

Client and servers share this process, so CPU time per request (process time / requests) is
the servers' work plus the client's, which is the same in every scenario; differences between
scenarios are the servers'. Also timed: decoding and resolving the flags alone (no GraphQL).

    python bench/flags.py
    python bench/flags.py --rounds 21 --requests 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import text

from bench.common import bench_settings, embedded_database, graphql, live_app, register
from ragstream.domain.flags.features import AccountFlags, FeatureDefaults
from ragstream.domain.users.enums import Role

ID_ONLY = "{ me { id } }"
FEATURES = "{ me { id features { key enabled metadata source } } }"
KEYS = {
    "chat": '{"dailyLimit": 500, "maxConcurrent": 2, "model": "m-%s"}',
    "uploads": '{"maxBytes": 1000000, "types": ["text/plain", "application/pdf"]}',
    "search": "{}",
}


async def seed_flags(state: Any, user_id: str, others: int) -> None:
    """Production flags: every feature at user, role and global scope for the measured account,
    and a user flag per feature for each of ``others`` other accounts."""
    async with state.sessionmaker.begin() as session:
        await session.execute(
            text(
                "INSERT INTO users (email, display_name, password_hash) "
                "SELECT 'other-' || n || '@example.com', 'Other', 'x' "
                "FROM generate_series(1, :n) AS n"
            ),
            {"n": others},
        )
        for key, metadata in KEYS.items():
            for scope, user, role in (
                ("GLOBAL", None, None),
                ("ROLE", None, "USER"),
                ("USER", user_id, None),
            ):
                await session.execute(
                    text(
                        "INSERT INTO feature_flags (environment, key, scope, user_id, role, "
                        "enabled, metadata) VALUES ('production', :key, :scope, "
                        "CAST(:user AS uuid), :role, true, CAST(:metadata AS jsonb))"
                    ),
                    {
                        "key": key,
                        "scope": scope,
                        "user": user,
                        "role": role,
                        "metadata": metadata.replace("%s", scope.lower()),
                    },
                )
            await session.execute(
                text(
                    "INSERT INTO feature_flags (environment, key, scope, user_id, enabled, "
                    "metadata) SELECT 'production', :key, 'USER', id, false, "
                    "CAST(:metadata AS jsonb) FROM users WHERE email LIKE 'other-%'"
                ),
                {"key": key, "metadata": metadata.replace("%s", "other")},
            )
        await session.execute(text("ANALYZE feature_flags"))


async def cpu_per_request(
    client: httpx.AsyncClient, url: str, query: str, token: str, requests: int
) -> tuple[float, float]:
    """(CPU ms, wall ms) per request, over ``requests`` sequential requests."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(requests):
        await graphql(client, url, query, token=token)
    return (
        (time.process_time() - cpu) * 1000 / requests,
        (time.perf_counter() - wall) * 1000 / requests,
    )


def resolve_alone(raw: str, defaults: FeatureDefaults, runs: int) -> float:
    """Microseconds to decode and resolve one account's flags (what a request pays for them)."""
    start = time.process_time()
    for _ in range(runs):
        AccountFlags(role=Role.USER, raw=raw, defaults=defaults).features()
    return (time.process_time() - start) * 1e6 / runs


async def main(rounds: int, requests: int, others: int) -> None:
    async with embedded_database() as (database, name, data_dir):
        url = database.url(name)
        common: dict[str, Any] = {"introspection": True, "access_token_ttl_seconds": 3600}
        development = bench_settings(url, data_dir, environment="development", **common)
        production = bench_settings(url, data_dir, environment="production", **common)
        async with contextlib.AsyncExitStack() as stack:
            dev_url, dev_state = await stack.enter_async_context(live_app(development))
            prod_url, prod_state = await stack.enter_async_context(live_app(production))
            client = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
            user_id, token = await register(client, dev_url)
            await seed_flags(prod_state, user_id, others)
            async with prod_state.sessionmaker() as session:
                raw = await session.scalar(
                    text(
                        "SELECT json_agg(json_build_array(scope, key, enabled, metadata))::text "
                        "FROM feature_flags WHERE environment = 'production' AND "
                        "(user_id = CAST(:u AS uuid) OR scope IN ('ROLE', 'GLOBAL'))"
                    ),
                    {"u": user_id},
                )
            scenarios: dict[str, Callable[[], Any]] = {
                "floor": lambda: cpu_per_request(client, dev_url, ID_ONLY, token, requests),
                "id+flags": lambda: cpu_per_request(client, prod_url, ID_ONLY, token, requests),
                "features": lambda: cpu_per_request(client, dev_url, FEATURES, token, requests),
                "features+": lambda: cpu_per_request(client, prod_url, FEATURES, token, requests),
            }
            # Warm-up: connection pools, statement caches, parser and validation caches.
            for run in scenarios.values():
                await run()
            cpu: dict[str, list[float]] = {k: [] for k in scenarios}
            wall: dict[str, list[float]] = {k: [] for k in scenarios}
            load_before = os.getloadavg()[0]
            for index in range(rounds):
                names = list(scenarios)
                shift = index % len(names)  # rotate the order: no scenario always runs first
                for key in names[shift:] + names[:shift]:
                    c, w = await scenarios[key]()
                    cpu[key].append(c)
                    wall[key].append(w)
            load_after = os.getloadavg()[0]
            alone = statistics.median(
                resolve_alone(raw or "[]", dev_state.feature_defaults, 20_000) for _ in range(5)
            )
    med = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"{rounds} interleaved rounds x {requests} requests, one account; ", end="")
    print(f"load average {load_before:.2f} -> {load_after:.2f} (2 cores shared)")
    print(f"{'scenario':<12}{'CPU ms/req':>12}{'wall ms/req':>13}{'vs floor':>11}{'ratio':>8}")
    for key in cpu:
        extra = med[key] - med["floor"]
        print(
            f"{key:<12}{med[key]:>12.3f}{statistics.median(wall[key]):>13.3f}"
            f"{extra:>+11.3f}{med[key] / med['floor']:>8.2f}"
        )
    print(
        f"flags present at every scope vs none, features asked: "
        f"{med['features+'] - med['features']:+.3f} ms CPU/request"
    )
    print(
        f"flags present vs none, features not asked:            "
        f"{med['id+flags'] - med['floor']:+.3f} ms CPU/request"
    )
    print(f"decoding + resolving the 9 flags alone:               {alone / 1000:.4f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--others", type=int, default=2_000, help="other accounts with flags")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.requests, args.others))
