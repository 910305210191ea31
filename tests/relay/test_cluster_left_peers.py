"""LeftPeers, the batching loop behind presence releases and topic drops (relay.cluster)."""

from __future__ import annotations

import trio

from relay.cluster._left_peers import LeftPeers
from relay.cluster._redis import ClusterUnavailable


async def test_batches_retries_and_skips_peers_back_on_the_node(autojump_clock) -> None:
    local: set[str] = set()
    left = LeftPeers("things", batch=2, retry=0.5, local_peers=lambda: local)
    calls: list[tuple[float, list[str]]] = []
    failing = [True]
    keep = {"a", "b", "c", "d"}

    async def delete(batch: list[str]) -> None:
        calls.append((trio.current_time(), sorted(batch)))
        await trio.sleep(0.01)
        if failing[0]:
            failing[0] = False
            raise ClusterUnavailable("Redis is down")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.run, delete, lambda p: p in keep)
        for peer in ("a", "b", "c", "d", "e"):
            left.add(peer)
        local.add("e")  # registered here again: its state is its new session's
        await trio.sleep(0)
        keep.discard("a")  # e.g. registered a topic again while its batch was failing
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    deleted = [peer for _, batch in calls[1:] for peer in batch]
    assert all(len(batch) <= 2 for _, batch in calls)
    assert calls[1][0] - calls[0][0] >= 0.5  # the failed batch waited out the retry
    failed = set(calls[0][1])
    assert sorted(deleted) == sorted({"a", "b", "c", "d"} - ({"a"} & failed))
    assert "e" not in deleted and left.pending == set()
