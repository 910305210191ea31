"""A private redis-server per test (unix socket in a short temporary directory).

Debian's ``redis-server`` (scripts/install-redis.sh installs it); tests skip with a reason
only when it is absent. Nothing is persisted: a restart starts empty, like a lost Redis.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
READY = b"eady to accept connections"  # "Ready ..." (7.2+) or "... now ready ..." (7.0)


def require_redis() -> None:
    if not Path(REDIS_SERVER).exists():
        reason = "redis-server is not installed (scripts/install-redis.sh installs it)"
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(f"CI runs as root, so the cluster tests must run: {reason}")
        pytest.skip(reason)


class RedisServer:
    """One redis-server process on a unix socket; :meth:`kill` and :meth:`start` again."""

    def __init__(self, nursery: trio.Nursery, directory: Path, *args: str) -> None:
        self._nursery = nursery
        self._args = list(args)  # more redis-server options, e.g. "--requirepass", "x"
        self.socket = directory / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.process: trio.Process | None = None

    async def start(self) -> None:
        command = [
            REDIS_SERVER, "--port", "0", "--unixsocket", str(self.socket),
            "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
            "--logfile", "", "--loglevel", "notice", *self._args,
        ]  # fmt: skip
        self.process = await self._nursery.start(
            partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
        )
        assert self.process.stdout is not None
        output = b""
        with trio.fail_after(10):
            while READY not in output:
                chunk = await self.process.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError(f"redis-server exited: {output.decode(errors='replace')}")
                output += chunk
        self._nursery.start_soon(_drain, self.process.stdout)

    async def kill(self) -> None:
        """kill -9: what a crashed Redis looks like to its clients."""
        if self.process is not None:
            self.process.kill()
            await self.process.wait()
            self.process = None
            self.socket.unlink(missing_ok=True)


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(65536):
        pass


@asynccontextmanager
async def running_redis(*args: str) -> AsyncIterator[RedisServer]:
    """A started redis-server (``args``: more options), killed when the block exits."""
    require_redis()
    directory = Path(tempfile.mkdtemp(prefix="redis-", dir="/tmp"))  # unix paths are short
    try:
        async with trio.open_nursery() as nursery:
            server = RedisServer(nursery, directory, *args)
            await server.start()
            try:
                yield server
            finally:
                await server.kill()
                nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
