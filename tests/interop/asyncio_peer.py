"""Run an asyncio peer (aiortc, aioice) on a worker thread and talk to it from trio.

The peer coroutine gets ``to_trio(item)``. Its first item must be
``("inbox", put)``, where ``put(item)`` hands an item to the asyncio side (e.g.
``lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)``). An item
``("error", text)`` fails the test at the next ``receive``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import trio

Item = tuple[Any, ...]


class AsyncioPeerThread:
    """``peer(to_trio=..., **peer_args)`` under ``asyncio.run`` on a worker thread."""

    def __init__(
        self,
        nursery: trio.Nursery,
        peer: Callable[..., Coroutine[Any, Any, None]],
        *,
        buffer: int = 256,
        **peer_args: Any,
    ) -> None:
        self._send, self._receive = trio.open_memory_channel[Item](buffer)
        token = trio.lowlevel.current_trio_token()

        def to_trio(item: Item) -> None:
            trio.from_thread.run_sync(self._send.send_nowait, item, trio_token=token)

        nursery.start_soon(
            lambda: trio.to_thread.run_sync(
                asyncio.run, peer(to_trio=to_trio, **peer_args), abandon_on_cancel=True
            )
        )
        self._to_peer: Callable[[Item], None] | None = None

    async def ready(self) -> None:
        """Wait until the asyncio loop runs and can take items."""
        while self._to_peer is None:
            item = await self._receive.receive()
            assert item[0] == "inbox", item
            self._to_peer = item[1]

    async def receive(self) -> Item:
        item = await self._receive.receive()
        assert item[0] != "error", item
        if item[0] == "inbox":
            self._to_peer = item[1]
            return await self.receive()
        return item

    def send(self, item: Item) -> None:
        assert self._to_peer is not None
        self._to_peer(item)
