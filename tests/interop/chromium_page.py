"""A page served to headless Chromium that it drives over a WebSocket: commands out,
JSON reports in. Shared by the TURN interop tests (each brings its own page)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from test_browser_chromium import CHROMIUM_FLAGS, find_chromium

from darkswap_trio.websocket import WebSocketConnection, WebSocketRequest, serve_websocket

LOOPBACK = "127.0.0.1"


class Page:
    """The page's signaling WebSocket: commands out, reports in (all logged)."""

    def __init__(self, connection: WebSocketConnection) -> None:
        self.connection = connection
        self.log: list[dict[str, Any]] = []

    async def command(self, **message: Any) -> None:
        await self.connection.send(json.dumps(message))

    async def expect(self, kind: str) -> dict[str, Any]:
        """The next report of ``kind``; the others in between are only logged."""
        while True:
            report = json.loads(await self.connection.receive())
            self.log.append(report)
            assert report["type"] != "error", (report, self.log)
            if report["type"] == kind:
                return report

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.log if r["type"] == kind]


@asynccontextmanager
async def chromium_page(
    page: str, query: str, time_limit: float, *extra_flags: str
) -> AsyncIterator[Page]:
    """Serve ``page`` at ``/?<query>``, start Chromium on it (from this thread, so in its
    namespace), yield once the page's WebSocket is open (AssertionError with Chromium's
    output after ``time_limit``), kill Chromium at exit."""
    binary = find_chromium()
    assert binary is not None
    connections, incoming = trio.open_memory_channel[WebSocketConnection](1)
    finished = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        if not request.is_websocket:
            body = page.encode() if request.path.startswith("/?") else b"not found\n"
            await request.reject(200, body, content_type="text/html; charset=utf-8")
            return
        await connections.send(await request.accept())
        await finished.wait()

    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_websocket, handler, LOOPBACK, 0)
            port = listeners[0].socket.getsockname()[1]
            output_path = os.path.join(profile, "output.txt")
            with open(output_path, "wb") as output:
                process = subprocess.Popen(
                    [binary, *CHROMIUM_FLAGS, *extra_flags, f"--user-data-dir={profile}/profile",
                     f"http://{LOOPBACK}:{port}/?{query}"],
                    stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                    start_new_session=True,
                )  # fmt: skip
            try:
                with trio.move_on_after(time_limit) as waited:
                    connection = await incoming.receive()
                if waited.cancelled_caught:
                    tail = Path(output_path).read_bytes()[-3000:].decode(errors="replace")
                    raise AssertionError(f"Chromium never opened the page:\n{tail}")
                yield Page(connection)
            finally:
                nursery.cancel_scope.cancel()
                finished.set()
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
