"""Presence claims in pipelined batches (relay/cluster/_claims.py) on a real Redis: one
write for concurrent claims, each still the atomic CLAIM (a live holder refuses), a claim
cancelled before its write never lands, NOSCRIPT after SCRIPT FLUSH, stop fails waiters."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from redis_helpers import running_redis

from relay.cluster import _wire
from relay.cluster._claims import ClaimBatches
from relay.cluster._redis import ClusterUnavailable, RedisLink, open_redis_link

PREFIX = "c:"
TTL_MS = 60_000


def counting(link: RedisLink) -> list[int]:
    """The number of commands of each pipelined write on ``link``."""
    writes: list[int] = []
    pipeline = link.pipeline

    async def counted(*commands: bytes) -> list[Any]:
        writes.append(len(commands))
        return await pipeline(*commands)

    link.pipeline = counted  # type: ignore[method-assign]
    return writes


async def live_node(link: RedisLink, node: str, epoch: str) -> str:
    await link.command("HSET", _wire.node_key(PREFIX, node), "epoch", epoch)
    return _wire.presence_value(node, epoch)


async def test_concurrent_claims_share_one_write_and_keep_the_single_holder_rule() -> None:
    with trio.fail_after(20):
        async with running_redis() as redis, open_redis_link(redis.url, 5.0) as link:
            ours = await live_node(link, "a", "e1")
            theirs = await live_node(link, "b", "e2")
            await link.command("SET", _wire.peer_key(PREFIX, "taken"), theirs)
            await link.command("SET", _wire.peer_key(PREFIX, "dead"), "gone|e0")
            claims = ClaimBatches(link, [PREFIX, ours, TTL_MS])
            writes = counting(link)
            peers = [f"p{i}" for i in range(40)] + ["taken", "dead"]
            results: dict[str, str | None] = {}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(claims.run)

                async def claim(peer: str) -> None:
                    results[peer] = await claims.claim(_wire.peer_key(PREFIX, peer))

                async with trio.open_nursery() as claimers:
                    for peer in peers:
                        claimers.start_soon(claim, peer)
                nursery.cancel_scope.cancel()
            assert results.pop("taken") == theirs  # a live other node holds it
            assert set(results.values()) == {None}  # new ones and a dead node's are ours
            assert sum(writes) == len(peers) and len(writes) <= 2  # batched, not one by one
            for peer in results:
                assert await link.command("GET", _wire.peer_key(PREFIX, peer)) == ours
            assert await link.command("GET", _wire.peer_key(PREFIX, "taken")) == theirs


async def test_a_claim_cancelled_before_its_write_never_lands() -> None:
    with trio.fail_after(20):
        async with running_redis() as redis, open_redis_link(redis.url, 5.0) as link:
            ours = await live_node(link, "a", "e1")
            claims = ClaimBatches(link, [PREFIX, ours, TTL_MS])
            with trio.move_on_after(0.01):  # run() is not started: the claim stays queued
                await claims.claim(_wire.peer_key(PREFIX, "gone"))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(claims.run)
                assert await claims.claim(_wire.peer_key(PREFIX, "next")) is None
                nursery.cancel_scope.cancel()
            assert await link.command("EXISTS", _wire.peer_key(PREFIX, "gone")) == 0
            assert await link.command("GET", _wire.peer_key(PREFIX, "next")) == ours


async def test_claims_after_script_flush_and_after_stop() -> None:
    with trio.fail_after(20):
        async with running_redis() as redis, open_redis_link(redis.url, 5.0) as link:
            ours = await live_node(link, "a", "e1")
            claims = ClaimBatches(link, [PREFIX, ours, TTL_MS])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(claims.run)
                assert await claims.claim(_wire.peer_key(PREFIX, "one")) is None
                await link.command("SCRIPT", "FLUSH")  # as after a Redis restart
                assert await claims.claim(_wire.peer_key(PREFIX, "two")) is None
                nursery.cancel_scope.cancel()
            assert await link.command("GET", _wire.peer_key(PREFIX, "two")) == ours
            with pytest.raises(ClusterUnavailable, match="stopped"):
                await claims.claim(_wire.peer_key(PREFIX, "three"))
