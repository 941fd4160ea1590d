"""The `ragstream` command.

Each command imports what it uses when it runs: `ragstream --help` needs argparse alone, and
the commands without HTTP neither the GraphQL schema nor a web server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import getpass
import logging
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from ragstream.documents_cli import add_commands as add_knowledge_commands
from ragstream.persisted_cli import add_command as add_persisted_command

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from ragstream.db.embedded import EarlyStart
    from ragstream.settings import Settings
    from ragstream.state import AppState

STARTUP_FAILURE = 3  # uvicorn's exit status for a server that could not start
logger = logging.getLogger("ragstream")


def _settings(args: argparse.Namespace) -> Settings:
    from ragstream.settings import Settings

    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    return Settings(**overrides) if overrides else Settings()


def cmd_serve(args: argparse.Namespace) -> int:
    from ragstream.db.embedded import EarlyStart, exclusive_server_lock
    from ragstream.observability.logs import configure_logging
    from ragstream.settings import check_serving

    settings = _settings(args)
    # Before the application's modules are imported: some of them log as they load.
    configure_logging(str(settings.log_format), settings.log_level)
    check_serving(settings)
    _check_port_free(settings.host, settings.port)
    # The embedded database belongs to one server; replicas sharing an external database are fine.
    lock = (
        exclusive_server_lock(settings.data_dir)
        if settings.database_url is None
        else contextlib.nullcontext()
    )
    with lock:
        # The embedded server starts while the application's modules are imported.
        early = EarlyStart(settings.data_dir) if settings.database_url is None else None
        try:
            if args.workers > 1:
                from ragstream.workers import serve_workers

                return serve_workers(settings, early, args.workers)
            return _serve(settings, early)
        finally:
            if early is not None:
                early.close()


def _workers(value: str) -> int:
    from ragstream.workers import worker_count

    try:
        return worker_count(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of workers (a positive number, or auto)"
        ) from None


def _check_port_free(host: str, port: int) -> None:
    """Refuses a port another process listens on before anything starts, naming the fix.

    uvicorn would find out only after the database and the application had started, and say
    no more than errno 98. The port may still be taken in between; uvicorn then reports it.
    """
    from ragstream.settings import ConfigurationError

    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return  # anything else (an unknown host name, ...) uvicorn reports as it is
            raise ConfigurationError(
                f"port {port} on {host} is in use by another process; stop it, or serve on "
                "another port with --port or RAGSTREAM_PORT"
            ) from None


# Allocations (net of deallocations) between two young collections. Python's 700 is passed
# by the objects a few dozen requests in flight hold at once, so under load the young
# generation was collected every ten requests or so, over objects still in use; a request's
# objects are freed when it ends, and cycles are still collected, a little later.
_YOUNG_COLLECTION_THRESHOLD = 7000


def freeze_startup_heap() -> None:
    """What start-up built lives as long as the process: the schema, the mappers, the
    imported modules. Frozen (after its garbage is gone), full collections stop walking it
    again and again under load. Called once the server listens."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG_COLLECTION_THRESHOLD, older, oldest)


def _serve(settings: Settings, early: EarlyStart | None) -> int:
    import uvicorn

    from ragstream.app import create_app
    from ragstream.workers import server_options

    # With the embedded database, serve holds its data-dir lock: no other server uses it.
    app = create_app(settings, early=early, alone=settings.database_url is None)
    state: AppState = app.state.ragstream
    config = uvicorn.Config(
        _config_errors_without_traceback(app, state), **server_options(settings)
    )
    # uvicorn's own start-up lines repeat what the banner says; its errors still show.
    uvicorn_log = logging.getLogger("uvicorn.error")  # as the config above set it
    uvicorn_log.setLevel(max(logging.WARNING, uvicorn_log.level))

    class Server(uvicorn.Server):
        """uvicorn's server, which logs ragstream's banner once it listens."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                freeze_startup_heap()
                logger.info("%s", startup_banner(state, self))

    server = Server(config)
    try:
        with _stopped_by_signals(server):
            server.run()
    except SystemExit:
        # uvicorn exits 3 after any failed start-up; a configuration error is reported as one,
        # by main(), with status 2.
        if state.startup_error is None:
            raise
        raise state.startup_error from None
    # A failed start-up exits inside run() (SystemExit 3) and a crash raises; a server that
    # started and got here has shut down cleanly, whether a signal asked it to or not.
    return 0 if server.started else STARTUP_FAILURE


def startup_banner(state: AppState, server: uvicorn.Server) -> str:
    """Where the server listens and what it runs with, in one block."""
    from ragstream.workers import serving_banner

    settings = state.settings
    host, port = (
        server.servers[0].sockets[0].getsockname()[:2]
        if server.servers
        else (settings.host, settings.port)
    )
    return serving_banner(
        settings,
        host,
        port,
        embedded=state.embedded is not None,
        embeddings=state.embedder.name,
        processes=1,
    )


def _config_errors_without_traceback(app: ASGIApp, state: AppState) -> ASGIApp:
    """The app, except that a start-up stopped by a ConfigurationError reports no traceback.

    Starlette sends the lifespan failure with the formatted traceback, which uvicorn logs; a
    configuration error is the operator's to fix, and serve prints its message on its own.
    """

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and state.startup_error is not None:
                message = {"type": "lifespan.startup.failed", "message": ""}
            await send(message)

        await app(scope, receive, lifespan_send)

    return wrapped


@contextlib.contextmanager
def _stopped_by_signals(server: uvicorn.Server) -> Iterator[None]:
    """SIGTERM / SIGINT stop the server gracefully, and the process then exits with status 0.

    uvicorn handles both signals while it serves; after its graceful shutdown it restores the
    handlers it found and raises the caught signal again, which with the default handlers ends
    the process by SIGTERM (status -15) or KeyboardInterrupt. The handlers installed here are
    the ones it finds: a signal raised again after a shutdown only asks for an exit that has
    already happened, and one that arrives before uvicorn listens stops the server as soon as
    it has started.
    """

    def request_exit(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, request_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_migrate(args: argparse.Namespace) -> int:
    from ragstream.backend import Backend, connect
    from ragstream.settings import Settings

    async def run() -> None:
        # The database alone: no JWT secret, schema or providers are needed to migrate.
        async with connect(Backend(settings=Settings())):
            pass

    asyncio.run(run())
    print("database is at the latest migration")
    return 0


def cmd_create_admin(args: argparse.Namespace) -> int:
    from ragstream.backend import Backend, connect
    from ragstream.domain.users.admin import account_exists, ensure_admin
    from ragstream.domain.users.passwords import PasswordHasher, check_password_policy
    from ragstream.domain.users.validation import normalize_email
    from ragstream.settings import Settings

    normalize_email(args.email)  # refuse a bad address before starting the database
    if args.password is not None:
        check_password_policy(args.password)
    backend = Backend(settings=Settings())
    hasher = PasswordHasher.from_settings(backend.settings)

    async def run() -> str | None:
        async with connect(backend):
            password = args.password
            if password is None:
                # An existing account is only promoted; a new one needs a password.
                async with backend.sessionmaker() as session:
                    exists = await account_exists(session, args.email)
                if not exists:
                    password = await asyncio.to_thread(_ask_password)
                    if password is None:
                        return None
                    check_password_policy(password)
            async with backend.sessionmaker.begin() as session:
                return await ensure_admin(session, hasher, email=args.email, password=password)

    outcome = asyncio.run(run())
    if outcome is None:
        print("passwords do not match", file=sys.stderr)
        return 1
    print(outcome)
    return 0


def _ask_password() -> str | None:
    """The new account's password, typed twice; None when the two differ."""
    password = getpass.getpass("Password: ")
    return password if password == getpass.getpass("Repeat password: ") else None


def cmd_export_schema(args: argparse.Namespace) -> int:
    from ragstream.schema import export_sdl

    sdl = export_sdl()
    if args.output:
        Path(args.output).write_text(sdl)
    else:
        sys.stdout.write(sdl)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragstream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="migrate the database, then serve GraphQL")
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000)")
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="server processes on the port: a number, or auto (one per core); default 1",
    )
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)

    admin = sub.add_parser("create-admin", help="create an admin account or promote one")
    admin.add_argument("--email", required=True)
    admin.add_argument(
        "--password",
        help="for a new account prompted for when omitted; an existing account keeps its own "
        "unless given",
    )
    admin.set_defaults(func=cmd_create_admin)

    export = sub.add_parser("export-schema", help="print the GraphQL SDL")
    export.add_argument("--output", "-o", help="write to this file instead of stdout")
    export.set_defaults(func=cmd_export_schema)
    add_knowledge_commands(sub)
    add_persisted_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ragstream.domain.errors import DomainError
    from ragstream.observability.logs import configure_command_logging
    from ragstream.settings import ConfigurationError

    configure_command_logging()
    try:
        return int(args.func(args))
    except ConfigurationError as exc:
        print(f"ragstream: {exc}", file=sys.stderr)
        return 2
    except DomainError as exc:  # e.g. an invalid email given to create-admin
        print(f"ragstream: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
