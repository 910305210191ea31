"""Relay nodes in one process sharing a real Redis (docs/PROTOCOL.md 16): presence,
cross-node signaling, the inbox's rules, Redis lost and back. The same with real
processes and SDK peers: test_cluster_processes.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from redis_helpers import RedisServer, running_redis
from relayclient import RelayClient, connect, make_config, new_peer

from darkswap_trio import Keypair
from darkswap_trio.proto.signaling import (
    PROTOCOL_VERSION,
    Answer,
    Authenticate,
    Challenge,
    CircuitData,
    Error,
    IceCandidate,
    Offer,
    Ping,
    Pong,
    Register,
    RelayRequest,
    RelayResponse,
    encode_message,
    peer_auth_message,
)
from relay import serve_relay
from relay.cluster import NodeAddress, NodeDirectory, _wire
from relay.cluster._redis import open_redis_link

PREFIX = "t:"


@asynccontextmanager
async def cluster(
    redis: RedisServer, count: int, auth: str = "signature", **settings: Any
) -> AsyncIterator[list[Any]]:
    """``count`` relays (nodes n1, n2, ...) in this process, sharing ``redis``."""
    async with trio.open_nursery() as nursery:
        servers = []
        for index in range(1, count + 1):
            config = make_config()
            config.auth.mode = auth
            config.cluster.redis_url = redis.url
            config.cluster.node_id = f"n{index}"
            config.cluster.key_prefix = PREFIX
            for key, value in settings.items():
                setattr(config.cluster, key, value)
            servers.append(await nursery.start(serve_relay, config))
        yield servers
        nursery.cancel_scope.cancel()


async def register(client: RelayClient, keypair: Keypair, server: Any) -> Error | None:
    """The darkswap-relay/1 handshake; None once registered, else the refusal."""
    client.keypair, client.peer_id, client.extended = keypair, str(keypair.peer_id), True
    await client.send(Register(peer_id=client.peer_id, protocol=PROTOCOL_VERSION, nonce=b"n" * 32))
    challenge = await client.expect(Challenge)
    proof = keypair.sign(peer_auth_message(challenge.nonce, server.peer_id, client.peer_id))
    await client.send(Authenticate(signature=proof))
    answer = await client.recv()
    return answer if isinstance(answer, Error) else None


async def test_signaling_across_nodes_keeps_each_senders_order() -> None:
    with trio.fail_after(20):
        async with running_redis() as redis, cluster(redis, 2) as (n1, n2):
            async with connect(n1) as a, connect(n2) as b:
                await a.register_extended(new_peer(), n1.peer_id)
                await b.register_extended(new_peer(), n2.peer_id)
                offer = Offer(from_=a.peer_id, to=b.peer_id, sdp="v=0 offer")
                candidates = [
                    IceCandidate(a.peer_id, b.peer_id, f"candidate:{i}", "0", 0) for i in range(50)
                ]
                for msg in [offer, *candidates]:
                    await a.send(msg)
                assert await b.expect(Offer) == offer
                for candidate in candidates:
                    assert await b.expect(IceCandidate) == candidate
                answer = Answer(from_=b.peer_id, to=a.peer_id, sdp="v=0 answer")
                await b.send(answer)
                assert await a.expect(Answer) == answer
                assert n1.health()[1]["cluster"]["state"] == "joined"

                def sent_count() -> float | None:
                    return n1.metrics.registry.get_sample_value(
                        "darkswap_relay_cluster_messages_sent_total", {"result": "delivered"}
                    )

                # Senders do not wait for Redis' replies: the last batch's may come after
                # the Answer (the delivery is what the order is about).
                while sent_count() != 51:
                    await trio.sleep(0.01)
                sent = sent_count()
                received = n2.metrics.registry.get_sample_value(
                    "darkswap_relay_cluster_messages_received_total", {"result": "delivered"}
                )
                assert (sent, received) == (51, 51)
                assert n1.metrics.registry.get_sample_value("darkswap_relay_cluster_redis_up") == 1
                assert n1.metrics.registry.get_sample_value("darkswap_relay_cluster_peers") == 1


async def test_a_burst_keeps_its_order_when_redis_forgot_the_routing_script() -> None:
    """The senders' messages go to Redis in pipelined batches; a batch that Redis
    refuses (NOSCRIPT after a restart or SCRIPT FLUSH) is written again before anything
    queued behind it."""
    with trio.fail_after(20):
        async with running_redis() as redis, cluster(redis, 2) as (n1, n2):
            async with (
                connect(n1) as a,
                connect(n1) as c,
                connect(n2) as b,
                open_redis_link(redis.url, 2.0) as admin,
            ):
                await a.register_extended(new_peer(), n1.peer_id)
                await c.register_extended(new_peer(), n1.peer_id)
                await b.register_extended(new_peer(), n2.peer_id)
                await a.send(Offer(from_=a.peer_id, to=b.peer_id, sdp="v=0 warm"))
                assert (await b.expect(Offer)).sdp == "v=0 warm"
                await admin.command("SCRIPT", "FLUSH")
                bursts = {
                    sender.peer_id: [Offer(from_=sender.peer_id, to=b.peer_id, sdp="v=0")]
                    + [
                        IceCandidate(sender.peer_id, b.peer_id, f"candidate:{i}", "0", 0)
                        for i in range(30)
                    ]
                    for sender in (a, c)
                }
                for pair in zip(bursts[a.peer_id], bursts[c.peer_id], strict=True):
                    await a.send(pair[0])
                    await c.send(pair[1])
                got: dict[str, list[object]] = {a.peer_id: [], c.peer_id: []}
                for _ in range(62):
                    msg = await b.recv()
                    assert isinstance(msg, (Offer, IceCandidate)), msg
                    got[msg.from_].append(msg)
                assert got == bursts


async def test_one_holder_per_peer_id_and_unknown_peers() -> None:
    with trio.fail_after(20):
        async with running_redis() as redis, cluster(redis, 2) as (n1, n2):
            alice, bob = new_peer(), new_peer()
            async with connect(n1) as a, connect(n2) as a_again, connect(n2) as b:
                assert await register(a, alice, n1) is None
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(answer_one_ping, a)  # a live holder keeps its id
                    refused = await register(a_again, alice, n2)
                assert refused is not None and refused.code == "peer_id_in_use", refused
                assert await register(b, bob, n2) is None

                nobody = str(new_peer().peer_id)
                await a.send(Offer(from_=a.peer_id, to=nobody, sdp="x"))
                assert (await a.expect_error("unknown_peer")).ref == nobody
                # RelayRequest: the peer lookup is cluster-wide too.
                await a.send(RelayRequest(from_=a.peer_id, to=nobody))
                response = await a.expect(RelayResponse)
                assert (response.accepted, response.code, response.to) == (
                    False,
                    "unknown_peer",
                    nobody,
                )
                # A peer of another node: the mesh opens the circuit, finding n2 through
                # this Redis directory.
                await a.send(RelayRequest(from_=a.peer_id, to=b.peer_id))
                response = await a.expect(RelayResponse)
                assert response.accepted, response
                assert await b.expect_circuit_announcement(a.peer_id) == response.relay_id
                await a.send_data(uuid.UUID(response.relay_id).bytes, b"across the mesh")
                assert (await b.expect(CircuitData)).payload == b"across the mesh"
                assert n1.router.cluster is not None
                found = await n1.router.cluster.directory.locate(b.peer_id)
                assert found is not None
                assert (found.node_id, found.node_peer_id) == ("n2", n2.peer_id)
                assert found.advertise == f"127.0.0.1:{n2.signaling_port}"
                assert await n1.router.cluster.directory.locate(nobody) is None
                # What the mesh half uses: the same, bound to the router.
                assert await NodeDirectory(n2.router).locate(a.peer_id) == NodeAddress(
                    "n1", f"127.0.0.1:{n1.signaling_port}", n1.peer_id
                )
                assert await NodeDirectory(n2.router).is_cluster_node(n1.peer_id)


async def test_presence_released_on_unregister_and_on_graceful_leave() -> None:
    with trio.fail_after(20):
        async with running_redis() as redis, cluster(redis, 3) as (n1, n2, n3):
            alice = new_peer()
            async with connect(n1) as a:
                assert await register(a, alice, n1) is None
            # Released when its session ends (in the background): n2 may take it.
            assert await _registers_soon(n2, alice)
            async with connect(n2) as a2:
                assert await register(a2, alice, n2) is None
                # A node that shuts down leaves the cluster: its peers are free at once,
                # not after its liveness TTL.
                await n2.shutdown(grace=0.5)
                async with connect(n3) as a3:
                    assert await register(a3, alice, n3) is None


async def answer_one_ping(client: RelayClient) -> None:
    frame = await client.recv()
    assert isinstance(frame, Ping), frame
    await client.send(Pong(nonce=frame.nonce))


async def _registers_soon(server: Any, keypair: Keypair) -> bool:
    for _ in range(40):
        async with connect(server) as client:
            if await register(client, keypair, server) is None:
                return True
        await trio.sleep(0.05)
    return False


async def test_inbox_drops_repeats_and_answers_for_absent_peers() -> None:
    with trio.fail_after(20):
        async with running_redis() as redis, cluster(redis, 2) as (n1, n2):
            async with connect(n1) as a, connect(n2) as b:
                await a.register_extended(new_peer(), n1.peer_id)
                await b.register_extended(new_peer(), n2.peer_id)
                offer = Offer(from_=a.peer_id, to=b.peer_id, sdp="once")
                envelope = _wire.SignalEnvelope(
                    id="n1:test:1",
                    reply_to="n1",
                    expires=time.time() + 5,
                    sender=a.peer_id,
                    extended=True,
                    libp2p=True,
                    to=b.peer_id,
                    frame=encode_message(offer),
                )
                nobody = str(new_peer().peer_id)
                stray_offer = Offer(from_=a.peer_id, to=nobody, sdp="x")
                stray = _fields(
                    envelope, id="n1:test:2", to=nobody, frame=encode_message(stray_offer)
                )
                late = _fields(envelope, id="n1:test:3", expires=time.time() - 1)
                async with open_redis_link(redis.url, 2.0) as link:
                    inbox = _wire.inbox_channel(PREFIX, "n2")
                    for message in (envelope, envelope, late, stray):
                        assert await link.publish(inbox, _wire.encode_inbox(message)) == 1
                    assert await link.publish(inbox, "not json") == 1
                assert await b.expect(Offer) == offer  # once: the repeat and the late one dropped
                # The stray's sender hears back through its node's inbox.
                assert (await a.expect_error("unknown_peer")).ref == nobody
                await a.send(Answer(from_=a.peer_id, to=b.peer_id, sdp="next"))
                assert (await b.expect(Answer)).sdp == "next"  # nothing else came first


def _fields(envelope: _wire.SignalEnvelope, **changes: Any) -> _wire.SignalEnvelope:
    import dataclasses

    return dataclasses.replace(envelope, **changes)


async def test_redis_lost_and_back_and_a_peer_registered_twice_meanwhile() -> None:
    """Without Redis, local signaling goes on and cross-node fails clearly; a peer may
    then register on two nodes (each alone); when Redis returns (empty), the nodes claim
    their peers again and the second claimant's session is closed (session_replaced)."""
    with trio.fail_after(30):
        async with (
            running_redis() as redis,
            cluster(redis, 2, liveness_ttl=0.6, redis_timeout=0.5) as (n1, n2),
        ):
            alice, bob, carol, twin = new_peer(), new_peer(), new_peer(), new_peer()
            async with (
                connect(n1) as a,
                connect(n2) as b,
                connect(n1) as c,
                connect(n1) as t1,
                connect(n2) as t2,
            ):
                await a.register_extended(alice, n1.peer_id)
                await b.register_extended(bob, n2.peer_id)
                await c.register_extended(carol, n1.peer_id)
                assert await register(t1, twin, n1) is None
                await redis.kill()
                await a.send(Offer(from_=a.peer_id, to=c.peer_id, sdp="local"))
                assert (await c.expect(Offer)).sdp == "local"
                await a.send(Offer(from_=a.peer_id, to=b.peer_id, sdp="lost"))
                assert (await a.expect_error("cluster_unavailable")).ref == b.peer_id
                await a.send(RelayRequest(from_=a.peer_id, to=b.peer_id))
                refused = await a.expect(RelayResponse)
                assert (refused.accepted, refused.code) == (False, "cluster_unavailable")
                assert await register(t2, twin, n2) is None  # n2 cannot ask Redis
                assert n1.health()[1]["cluster"]["state"] == "redis_unreachable"

                await redis.start()
                with trio.fail_after(10):
                    while True:
                        await a.send(Offer(from_=a.peer_id, to=b.peer_id, sdp="back"))
                        with trio.move_on_after(0.3):
                            assert (await b.expect(Offer)).sdp == "back"
                            break
                        error = await a.expect(Error)
                        assert error.code in ("cluster_unavailable", "unknown_peer"), error
                # Exactly one of the twins is closed as replaced.
                with trio.fail_after(5):
                    closed = await _first_replaced(t1, t2)
                assert closed in (t1, t2)
                assert n1.health()[1]["cluster"]["state"] == "joined"


async def _first_replaced(*clients: RelayClient) -> RelayClient:
    winner: list[RelayClient] = []
    async with trio.open_nursery() as nursery:

        async def watch(client: RelayClient) -> None:
            frame = await client.recv()
            assert isinstance(frame, Error) and frame.code == "session_replaced", frame
            winner.append(client)
            nursery.cancel_scope.cancel()

        for client in clients:
            nursery.start_soon(watch, client)
    return winner[0]


async def test_a_release_that_failed_is_retried() -> None:
    """A peer that leaves while Redis takes no writes is released once it does, not left
    to refuse the peer on other nodes until presence_ttl (60 s)."""
    with trio.fail_after(20):
        async with (
            running_redis() as redis,
            cluster(redis, 1, liveness_ttl=3.0, redis_timeout=0.3) as (n1,),
            open_redis_link(redis.url, 2.0) as admin,
        ):
            alice = new_peer()
            key = _wire.peer_key(PREFIX, str(alice.peer_id))
            async with connect(n1) as a:
                assert await register(a, alice, n1) is None
                assert await admin.command("GET", key) == "n1|" + n1.router.cluster.epoch
                await admin.command("CLIENT", "PAUSE", "20000", "WRITE")
            errors = n1.metrics.registry.get_sample_value
            while not errors("darkswap_relay_cluster_redis_errors_total"):
                await trio.sleep(0.05)  # the release timed out
            assert await admin.command("GET", key) is not None
            await admin.command("CLIENT", "UNPAUSE")
            with trio.fail_after(3):
                while await admin.command("GET", key) is not None:
                    await trio.sleep(0.05)


async def test_legacy_and_extended_peers_are_kept_apart_across_nodes() -> None:
    """PROTOCOL 10.3 holds across nodes: the holder's node answers incompatible_peer."""
    with trio.fail_after(20):
        async with running_redis() as redis, cluster(redis, 2, auth="open") as (n1, n2):
            async with connect(n1) as legacy, connect(n2) as modern, connect(n1) as legacy2:
                await legacy.register_legacy("peer1")
                await legacy2.register_legacy("peer2")
                await modern.register_extended(new_peer(), n2.peer_id, open_mode=True)
                await modern.send(Offer(from_=modern.peer_id, to="peer1", sdp="x"))
                assert (await modern.expect_error("incompatible_peer")).ref == "peer1"
                await legacy.send(Offer(from_="peer1", to=modern.peer_id, sdp="x"))
                assert (await legacy.expect_error("incompatible_peer")).ref == modern.peer_id
                await legacy2.send(Offer(from_="peer2", to="peer1", sdp="same node"))
                assert (await legacy.expect(Offer)).sdp == "same node"


async def test_a_proven_owner_replaces_a_silent_holder_on_another_node() -> None:
    """The single-node rule (duplicate_probe_timeout) across nodes: the holder's node pings
    its session; a silent one is closed session_replaced and the newcomer registers, a
    live one keeps the peer id and the newcomer is refused."""
    with trio.fail_after(20):
        async with running_redis() as redis, cluster(redis, 2) as (n1, n2):
            for server in (n1, n2):
                server.config.limits.duplicate_probe_timeout = 0.3
            alice, bob = new_peer(), new_peer()
            async with connect(n1) as silent, connect(n2) as newcomer:
                assert await register(silent, alice, n1) is None
                assert await register(newcomer, alice, n2) is None  # after the probe
                assert isinstance(await silent.recv(), Ping)  # the probe it did not answer
                await silent.expect_error("session_replaced")
                located = await n1.router.cluster.directory.locate(newcomer.peer_id)
                assert located is not None and located.node_id == "n2"
            async with connect(n1) as live, connect(n2) as second, trio.open_nursery() as nursery:
                assert await register(live, bob, n1) is None
                nursery.start_soon(answer_one_ping, live)
                refused = await register(second, bob, n2)
                assert refused is not None and refused.code == "peer_id_in_use"
