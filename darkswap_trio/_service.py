"""The ``async with`` shape shared by objects that own tasks through ``run()``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Self

import trio


class NotStarted(RuntimeError):
    """The object's ``run`` is not running: use ``async with`` or ``nursery.start(obj.run)``.

    Raised by :class:`P2PNetwork`, :class:`RelayManager` and :class:`WebRtcTransport` when
    used before they start or after they stop.
    """


class TaskOwner:
    """Mixin: ``async with obj:`` runs ``obj.run`` in a nursery and ``obj.stop()`` on exit.

    Subclasses define ``async run(*, task_status)`` (calling ``started``) and ``async stop()``.
    ``await nursery.start(obj.run)`` remains the way to run it in a caller's nursery.
    """

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._context = self._running_context()
        return await self._context.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._context.__aexit__(*exc_info)

    @asynccontextmanager
    async def _running_context(self) -> AsyncIterator[Self]:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run)
            try:
                yield self
            finally:
                await self.stop()
                nursery.cancel_scope.cancel()
