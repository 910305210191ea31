"""The node's Redis connection: coredis under trio, behind the few calls the cluster makes.

coredis (anyio) runs natively on trio: no thread, no asyncio loop. Its connection
pool's task group is entered by :func:`open_redis_link`, so its reader and writer tasks
live inside the caller's ``async with`` (a nursery we own); a cancelled command drops
its connection, never the pool. What this wrapper adds:

- one error type, :class:`ClusterUnavailable`, for every way Redis can fail (refused,
  reset, slow past ``timeout``, an error reply), so callers need one ``except``;
- no hidden retries (coredis' default retries a command that may have run; a
  cross-node message carries an id instead and is retried knowingly);
- a subscription that raises on a lost connection instead of reconnecting silently
  with a backoff of up to 16 s (the inbox reconnects itself, and knows it is down);
- the round trip and error counters the node exports.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

logger = logging.getLogger("relay.cluster")


class ClusterUnavailable(Exception):
    """Redis could not be reached or did not answer in time (the message says how)."""


def _coredis() -> Any:
    try:
        import coredis
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ClusterUnavailable(
            "the relay cluster needs the 'cluster' extra: pip install 'darkswap-trio[cluster]'"
        ) from exc
    return coredis


class RedisLink:
    """Commands on the node's Redis (see the module docstring)."""

    def __init__(self, client: Any, timeout: float) -> None:
        self._client = client
        self.timeout = timeout
        self._scripts: dict[str, Any] = {}
        self.round_trip: float | None = None  # seconds, of the last command that succeeded
        self.errors = 0
        self.up = False  # whether the last command succeeded
        self.on_result: Any = None  # callable(ok: bool, seconds: float) for metrics

    async def _call(self, what: str, command: Any) -> Any:
        start = trio.current_time()
        try:
            with trio.fail_after(self.timeout):
                result = await command
        except trio.TooSlowError:
            self._failed(start)
            raise ClusterUnavailable(
                f"Redis did not answer {what} within {self.timeout} s"
            ) from None
        except BaseException as exc:
            if not _redis_failure(exc):
                _raise_cancelled_or(exc)
            self._failed(start)
            raise ClusterUnavailable(f"Redis {what} failed: {_describe(exc)}") from exc
        self.round_trip = trio.current_time() - start
        self.up = True
        if self.on_result is not None:
            self.on_result(True, self.round_trip)
        return result

    def _failed(self, start: float) -> None:
        self.errors += 1
        self.up = False
        if self.on_result is not None:
            self.on_result(False, trio.current_time() - start)

    async def script(self, source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a Lua script (EVALSHA, loaded again after a Redis restart)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._client.register_script(source)
        return await self._call("EVALSHA", script(keys=list(keys), args=list(args)))

    async def publish(self, channel: str, message: str) -> int:
        """PUBLISH; the number of subscribers that got ``message``."""
        return int(await self._call("PUBLISH", self._client.publish(channel, message)))

    async def ping(self) -> None:
        await self._call("PING", self._client.ping())

    @asynccontextmanager
    async def subscription(self, channel: str) -> AsyncIterator[AsyncIterator[str]]:
        """Subscribe to ``channel``; yields an iterator of its messages' payloads.

        Raises ClusterUnavailable (from entering or from the iterator) when the
        connection fails: nothing is retried here.
        """
        pubsub = self._client.pubsub(
            channels=[channel],
            retry_policy=None,
            ignore_subscribe_messages=True,
            subscription_timeout=self.timeout,
        )

        async def payloads() -> AsyncIterator[str]:
            async for message in pubsub:
                if message["type"] == "message" and isinstance(message["data"], str):
                    yield message["data"]
            raise ClusterUnavailable("Redis subscription ended")

        try:
            async with pubsub:
                yield payloads()
        except BaseException as exc:
            if not _redis_failure(exc) or isinstance(exc, ClusterUnavailable):
                _raise_cancelled_or(exc)
            raise ClusterUnavailable(
                f"Redis subscription to {channel} failed: {_describe(exc)}"
            ) from exc


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _redis_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (possibly a group, from coredis' task groups) is only Redis or
    connection failures: never when it carries a cancellation or a bug."""
    import anyio

    failures = (
        _coredis().exceptions.RedisError,
        OSError,
        anyio.ClosedResourceError,
        anyio.BrokenResourceError,
        anyio.EndOfStream,
        ClusterUnavailable,
    )
    return all(isinstance(leaf, failures) for leaf in _leaves(exc))


def _raise_cancelled_or(exc: BaseException) -> None:
    """Re-raise ``exc``; but a group of a cancellation and connection errors (coredis'
    task groups, torn down by our cancellation) is the cancellation alone."""
    leaves = _leaves(exc)
    cancelled = [leaf for leaf in leaves if isinstance(leaf, trio.Cancelled)]
    others = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
    if cancelled and all(_redis_failure(leaf) for leaf in others):
        raise cancelled[0]
    raise exc


def _describe(exc: BaseException) -> str:
    return "; ".join(str(leaf) or type(leaf).__name__ for leaf in _leaves(exc))


@asynccontextmanager
async def open_redis_link(url: str, timeout: float) -> AsyncIterator[RedisLink]:
    """A :class:`RedisLink` to ``url``, usable until the block exits.

    Entering does not need Redis to be up: commands raise ClusterUnavailable until it is.
    """
    coredis = _coredis()
    client = coredis.Redis.from_url(
        url,
        decode_responses=True,
        connect_timeout=timeout,
        stream_timeout=timeout,
        retry_policy=coredis.retry.NoRetryPolicy(),
        verify_version=False,
    )
    async with client:
        yield RedisLink(client, timeout if timeout > 0 else math.inf)


def quiet_coredis_logs() -> None:
    """coredis logs every failed connect with a traceback; the node says it once instead."""
    logging.getLogger("coredis").setLevel(logging.CRITICAL)
