"""The topic rendezvous of a relay cluster lives in Redis (docs/PROTOCOL.md 14.6, 16.5):
peers registered on different nodes find each other, the bounds hold cluster-wide,
registrations expire and go with their session, a killed node's peers are not named,
and with Redis down a node answers from its own peers. Real redis-server, relays in
this process (and one ``python -m relay`` process that gets SIGKILL)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from redis_helpers import RedisServer, running_redis
from relayclient import RelayClient, connect, make_config, new_peer
from test_cluster_processes import RelayNode

from darkswap_trio.proto.signaling import Ping, Pong, TopicPeers, TopicRegister
from relay import serve_relay
from relay.cluster._topic_store import Refused, Registered, decode_register_reply_untrusted
from relay.cluster._wire import ClusterParseError

PREFIX = "t:"
HITS = "darkswap_relay_limit_hits_total"


@asynccontextmanager
async def cluster(
    redis: RedisServer, count: int, *, limits: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[list[Any]]:
    """``count`` relays (nodes n1, n2, ...) in this process, sharing ``redis``."""
    async with trio.open_nursery() as nursery:
        servers = []
        for index in range(1, count + 1):
            config = make_config(**(limits or {}))
            config.cluster.redis_url = redis.url
            config.cluster.node_id = f"n{index}"
            config.cluster.key_prefix = PREFIX
            for key, value in settings.items():
                setattr(config.cluster, key, value)
            servers.append(await nursery.start(serve_relay, config))
        yield servers
        nursery.cancel_scope.cancel()


async def join(client: RelayClient, server: Any) -> None:
    await client.register_extended(new_peer(), server.peer_id, open_mode=True)


async def sample(client: RelayClient, topic: str = "t") -> set[str]:
    await client.send(TopicRegister(topic))
    return set((await client.expect(TopicPeers)).peers)


async def sample_until(client: RelayClient, want: set[str], topic: str = "t") -> None:
    """Register again until the sample is ``want`` (Redis' clock and batched drops)."""
    while await sample(client, topic) != want:
        await trio.sleep(0.05)


def hits(server: Any, limit: str) -> float:
    return server.metrics.value(HITS, {"limit": limit}) or 0.0


def gauge(server: Any, name: str) -> float:
    return server.metrics.value(name) or 0.0


async def test_subscribers_on_three_nodes_find_each_other_within_cluster_bounds() -> None:
    limits = {"max_peers_per_topic": 3, "max_topics_per_peer": 2, "max_topics": 3}
    with trio.fail_after(30):
        async with running_redis() as redis, cluster(redis, 3, limits=limits) as (n1, n2, n3):
            async with connect(n1) as a, connect(n2) as b, connect(n3) as c, connect(n3) as d:
                for client, server in ((a, n1), (b, n2), (c, n3), (d, n3)):
                    await join(client, server)
                assert await sample(a) == set()
                assert await sample(b) == {a.peer_id}
                assert await sample(c) == {a.peer_id, b.peer_id}
                # Three members on three nodes: the fourth (on n3) is refused.
                await d.send(TopicRegister("t"))
                error = await d.expect_error("topic_limit")
                assert "3 registered peers" in error.message
                assert hits(n3, "peers_per_topic") == 1
                assert await sample(a) == {b.peer_id, c.peer_id}  # a renewal is no newcomer
                # Per peer: a (on n1) holds t and u; v is one too many.
                assert await sample(a, "u") == set()
                await a.send(TopicRegister("v"))
                await a.expect_error("topic_limit")
                assert hits(n1, "topics_per_peer") == 1
                # Topics in the whole cluster: t, u (n1), w (n3); x is refused on n2.
                assert await sample(c, "w") == set()
                await b.send(TopicRegister("x"))
                await b.expect_error("topic_limit")
                assert hits(n2, "topics") == 1
                # Leaving makes room at once (the Pong comes after the leave is done).
                await b.send(TopicRegister("t", leave=True))
                await b.send(Ping("after leave"))
                assert await b.expect(Pong) == Pong("after leave")
                assert await sample(d) == {a.peer_id, c.peer_id}
                # The gauges count each node's own registrations.
                assert gauge(n1, "darkswap_relay_topic_registrations") == 2  # a: t, u
                assert gauge(n2, "darkswap_relay_topic_registrations") == 0
                assert gauge(n3, "darkswap_relay_topic_registrations") == 3  # c: t, w; d: t
            # Sessions ended on every node: their registrations left Redis.
            async with connect(n2) as e:
                await join(e, n2)
                await sample_until(e, set())
                assert await sample(e, "w") == set()


async def test_registrations_expire_and_a_topic_frees_its_place() -> None:
    limits = {"topic_ttl": 0.5, "max_topics": 1}
    with trio.fail_after(20):
        async with running_redis() as redis, cluster(redis, 2, limits=limits) as (n1, n2):
            async with connect(n1) as a, connect(n2) as b:
                await join(a, n1)
                await join(b, n2)
                start = trio.current_time()
                assert await sample(a) == set()
                assert await sample(b) == {a.peer_id}
                await b.send(TopicRegister("other"))
                await b.expect_error("topic_limit")  # one topic in the cluster
                await trio.sleep(0.3)
                assert await sample(b) == {a.peer_id}  # b renews; a does not
                await sample_until(b, set())
                assert trio.current_time() - start >= 0.49  # not before a's TTL (ms clock)
                await trio.sleep(0.6)  # b's registration expires too: "t" is gone
                assert await sample(b, "other") == set()


async def test_with_redis_down_a_node_answers_from_its_own_peers() -> None:
    with trio.fail_after(40):
        async with (
            running_redis() as redis,
            cluster(redis, 2, liveness_ttl=1.5, redis_timeout=0.5) as (n1, n2),
        ):
            async with connect(n1) as a, connect(n2) as b, connect(n1) as c:
                for client, server in ((a, n1), (b, n2), (c, n1)):
                    await join(client, server)
                assert await sample(a) == set()
                assert await sample(b) == {a.peer_id}
                await redis.kill()
                with trio.fail_after(2):  # bounded by redis_timeout, never stuck
                    assert await sample(c) == {a.peer_id}  # this node's peers only
                await redis.start()  # empty: each node registers its peers' topics again
                # Until both nodes claimed their presences again a sample may miss (and
                # remove) a peer of the other node; its node's restore brings it back.
                await sample_until(b, {a.peer_id, c.peer_id})
                await sample_until(c, {a.peer_id, b.peer_id})


@pytest.mark.slow  # a relay process
async def test_a_killed_nodes_peers_are_not_named(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text('[cluster]\nkey_prefix = "t:"\nliveness_ttl = 1.0\nredis_timeout = 0.5\n')
    with trio.fail_after(60):
        async with (
            running_redis() as redis,
            cluster(redis, 1, liveness_ttl=1.0, redis_timeout=0.5) as (n1,),
            trio.open_nursery() as nursery,
        ):
            argv = [
                sys.executable, "-m", "relay", "--config", str(toml), "--host", "127.0.0.1",
                "--port", "0", "--stun-port", "none", "--metrics-port", "0", "--auth", "open",
                "--cluster-redis", redis.url, "--node-id", "n2",
                "--key-file", str(tmp_path / "n2.key"), "--shutdown-grace", "1",
            ]  # fmt: skip
            n2 = RelayNode(nursery, "n2", argv)
            await n2.start()

            class Far:
                signaling_port = n2.port
                peer_id = n2.multiaddr.rsplit("/p2p/", 1)[1]

            async with connect(n1) as a, connect(Far) as b:
                await join(a, n1)
                await join(b, Far)
                assert await sample(b) == set()
                assert await sample(a) == {b.peer_id}
                await n2.kill()  # SIGKILL: no goodbye, its liveness key just expires
                start = trio.current_time()
                await sample_until(a, set())
                assert trio.current_time() - start < 3.0
            nursery.cancel_scope.cancel()


_replies = st.recursive(
    st.one_of(
        st.none(), st.integers(), st.text(max_size=12), st.binary(max_size=12),
        st.sampled_from(["ok", "limit", "topics", "peers_per_topic", "topics_per_peer"]),
    ),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=12,
)  # fmt: skip


@given(_replies)
def test_register_replies_parse_or_raise_cluster_parse_error(reply):
    try:
        answer = decode_register_reply_untrusted(reply)
    except ClusterParseError:
        return
    assert isinstance(answer, (Registered, Refused))


def test_register_replies():
    assert decode_register_reply_untrusted(["ok", "p1", b"p2"]) == Registered(("p1", "p2"))
    assert decode_register_reply_untrusted(["limit", "topics"]) == Refused("topics")
    for bad in ([], ["limit", "other"], ["ok", ""], ["ok", 7], ["nope"], "ok", ["ok", b"\xff"]):
        try:
            decode_register_reply_untrusted(bad)
        except ClusterParseError:
            continue
        raise AssertionError(bad)


async def test_p2p_networks_on_three_nodes_meet_through_the_rendezvous() -> None:
    """SDK peers (direct disabled, no bootstrap peers) on three nodes subscribe to one
    topic: the cluster's rendezvous names them to each other, they link across the mesh,
    and each receives the others' messages exactly once."""
    from contextlib import AsyncExitStack

    from darkswap_trio import Config, P2PConfig, P2PNetwork, RelayManagerConfig

    fast = RelayManagerConfig(
        connection_timeout=5, ping_interval=1, reconnect_interval=0.05,
        max_reconnect_attempts=3, max_reconnect_interval=0.2,
    )  # fmt: skip
    topic = "orders/BTC-USDT"
    with trio.fail_after(60):
        async with running_redis() as redis, cluster(redis, 3) as servers:
            async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
                nets = []
                for server in servers:
                    config = Config(
                        p2p=P2PConfig(relay_servers=[server.multiaddr], enable_direct=False),
                        relay_manager=fast,
                    )
                    net = await stack.enter_async_context(P2PNetwork(config))
                    await net.wait_relay_connected()
                    nets.append(net)
                got: list[list[Any]] = [[] for _ in nets]

                async def collect(subscription: Any, into: list[Any]) -> None:
                    async for message in subscription:
                        into.append(message)

                for net, into in zip(nets, got, strict=True):
                    subscription = await stack.enter_async_context(net.subscribe(topic))
                    nursery.start_soon(collect, subscription, into)
                for net in nets:  # discovery only through the rendezvous
                    while len(net.topic_peers(topic)) < 2:
                        await trio.sleep(0.05)
                ids = [net.local_peer_id for net in nets]
                for i, net in enumerate(nets):
                    await net.publish(topic, f"from {i}".encode())
                while sum(map(len, got)) < 6:
                    await trio.sleep(0.05)
                await trio.sleep(0.3)  # a repeat would arrive by now
                for i, into in enumerate(got):
                    assert sorted((m.from_, m.data) for m in into) == sorted(
                        (ids[j], f"from {j}".encode()) for j in range(3) if j != i
                    )
                crossing = sum(s.mesh.statistics().cross_node_circuits for s in servers)
                assert crossing >= 3
                stack.callback(nursery.cancel_scope.cancel)  # the collectors, first


@pytest.mark.slow  # relay processes
async def test_peers_on_two_workers_of_one_port_share_topics(tmp_path: Path) -> None:
    """``--workers 2``: the workers are nodes of one cluster, so one rendezvous."""
    from test_cluster_workers import _register, workers_relay

    from darkswap_trio import Keypair

    with trio.fail_after(90):
        async with (
            running_redis() as redis,
            workers_relay(redis, tmp_path) as relay,
            trio.open_nursery() as nursery,
        ):
            ids: list[str] = []
            sessions: list[Any] = []
            nodes: list[str] = []
            while len(set(nodes)) < 2 and len(ids) < 40:  # the kernel spreads them by hash
                keypair = Keypair.generate()
                sessions.append(await _register(relay, keypair, nursery))
                ids.append(str(keypair.peer_id))
                nodes.append(await relay.node_of(ids[-1]))
            a, b = nodes.index("relay-w0"), nodes.index("relay-w1")
            assert await sessions[a].register_topic("orders/X") == []
            assert await sessions[b].register_topic("orders/X") == [ids[a]]
            assert await sessions[a].register_topic("orders/X") == [ids[b]]
            nursery.cancel_scope.cancel()
