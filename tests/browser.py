"""A headless Chromium driven over the DevTools protocol, with everything it does recorded.

The browser can resolve no host but 127.0.0.1 and runs with its background services off; the
page's console messages, exceptions, network requests and websocket frames are kept so a test can
assert on all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.processes import stop_process

# A guard against hangs, never asserted as a performance limit.
WITHIN = 60.0

FLAGS = (
    "--headless",
    "--no-sandbox",  # the tests run as root in a container, where the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # No name resolves except the loopback address: nothing can leave the machine.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def chromium_executable() -> str:
    """Debian's chromium; in CI its absence is a failure, locally a skip."""
    executable = shutil.which("chromium")
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return executable


@dataclass
class Page:
    """One tab: commands go to it, its events are recorded in order."""

    browser: Browser
    session_id: str
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, session_id=self.session_id)

    async def evaluate(self, expression: str) -> Any:
        reply = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str) -> Any:
        """Polls a JavaScript expression until it is truthy; returns its value."""
        try:
            async with asyncio.timeout(WITHIN):
                while True:
                    value = await self.evaluate(expression)
                    if value:
                        return value
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(
                f"still false: {expression}\nconsole errors: {self.console_errors()}"
            ) from None

    async def wait_for_element(self, selector: str) -> None:
        await self.wait_for(f"document.querySelector({json.dumps(selector)}) !== null")

    def params_of(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.events if name == method]

    def console_errors(self) -> list[str]:
        errors = [
            json.dumps(params.get("args"))
            for params in self.params_of("Runtime.consoleAPICalled")
            if params.get("type") in ("error", "assert")
        ]
        errors += [
            json.dumps(p["exceptionDetails"]) for p in self.params_of("Runtime.exceptionThrown")
        ]
        errors += [
            f"{p['entry'].get('source')}: {p['entry'].get('text')} {p['entry'].get('url', '')}"
            for p in self.params_of("Log.entryAdded")
            if p["entry"].get("level") == "error"
        ]
        return errors

    def requested_urls(self) -> list[str]:
        urls = [p["request"]["url"] for p in self.params_of("Network.requestWillBeSent")]
        return urls + [p["url"] for p in self.params_of("Network.webSocketCreated")]

    def websocket_frames(self, direction: str) -> list[dict[str, Any]]:
        """Decoded text frames, `direction` "Sent" or "Received"."""
        return [
            json.loads(p["response"]["payloadData"])
            for p in self.params_of(f"Network.webSocketFrame{direction}")
            if p["response"].get("opcode") == 1
        ]


class Browser:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.pages: dict[str, Page] = {}

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"id": next(self.ids), "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[message["id"]] = reply
        await self.connection.send(json.dumps(message))
        async with asyncio.timeout(WITHIN):
            return await reply

    async def read(self) -> None:
        async for raw in self.connection:
            message = json.loads(raw)
            if "id" in message:
                reply = self.pending.pop(message["id"])
                if "error" in message:
                    reply.set_exception(AssertionError(f"DevTools error: {message['error']}"))
                else:
                    reply.set_result(message.get("result", {}))
            elif message.get("sessionId") in self.pages:
                self.pages[message["sessionId"]].events.append(
                    (message["method"], message.get("params", {}))
                )

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        self.pages[page.session_id] = page
        for domain in ("Page", "Runtime", "Log", "Network"):
            await page.send(f"{domain}.enable")
        return page


async def _devtools_url(process: asyncio.subprocess.Process, profile: Path) -> str:
    """Chromium writes its debugging port and browser path to DevToolsActivePort once listening."""
    port_file = profile / "DevToolsActivePort"
    async with asyncio.timeout(WITHIN):
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            if process.returncode is not None:
                raise AssertionError(f"chromium exited with {process.returncode}")
            await asyncio.sleep(0.05)
    port, path = port_file.read_text().splitlines()[:2]
    return f"ws://127.0.0.1:{port}{path}"


@contextlib.asynccontextmanager
async def chromium(executable: str) -> AsyncIterator[Browser]:
    profile = Path(tempfile.mkdtemp(prefix="ragstream-chromium-"))
    process = await asyncio.create_subprocess_exec(
        executable,
        *FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        url = await _devtools_url(process, profile)
        async with connect(url, max_size=None) as connection:
            browser = Browser(connection)
            reader = asyncio.create_task(browser.read())
            try:
                yield browser
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
    finally:
        await stop_process(process, WITHIN)
        shutil.rmtree(profile, ignore_errors=True)
