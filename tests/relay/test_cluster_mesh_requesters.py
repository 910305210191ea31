"""A node of the cluster (right secret, proven key) that lies about a requester on a
mesh link: the far node checks the requester's presence in Redis and refuses the lie
(docs/PROTOCOL.md 15.4). Three in-process nodes on a real redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from mesh_nodes import SECRET
from redis_helpers import RedisServer, running_redis
from relayclient import RelayClient, connect, make_config, new_peer

from darkswap_trio.proto.signaling import (
    CircuitLimits,
    CloseRelay,
    DataChannel,
    RelayRequest,
    RelayResponse,
)
from relay import serve_relay
from relay.cluster._mesh_wire import MeshOpen, MeshRefused, decode_mesh_untrusted

PREFIX = "req:"
REFUSED = "darkswap_relay_mesh_requesters_refused_total"


@asynccontextmanager
async def nodes(redis: RedisServer, tmp_path: Path, count: int) -> AsyncIterator[list[Any]]:
    secret = tmp_path / "mesh.secret"
    secret.write_bytes(SECRET)
    async with trio.open_nursery() as nursery:
        servers = []
        for index in range(1, count + 1):
            config = make_config()
            config.cluster.redis_url = redis.url
            config.cluster.node_id = f"n{index}"
            config.cluster.key_prefix = PREFIX
            config.mesh.secret_file = str(secret)
            servers.append(await nursery.start(serve_relay, config))
        yield servers
        nursery.cancel_scope.cancel()


async def peer_on(stack: AsyncExitStack, server: Any) -> RelayClient:
    client = await stack.enter_async_context(connect(server))
    await client.register_extended(new_peer(), server.peer_id, open_mode=True)
    return client


async def test_a_node_lying_about_its_requester_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            running_redis() as redis,
            nodes(redis, tmp_path, 3) as (a, b, liar),
            AsyncExitStack() as st,
        ):
            x = await peer_on(st, a)  # the peer the liar pretends to speak for
            q = await peer_on(st, b)  # the target
            own = await peer_on(st, liar)

            # The liar's own peer opens a circuit to q: the check passes (its presence
            # names the liar's node and epoch), so the honest path is unchanged.
            await own.send(RelayRequest(from_=own.peer_id, to=q.peer_id))
            resp = await own.expect(RelayResponse)
            assert resp.accepted, resp
            assert (await q.expect(DataChannel)).peer_id == own.peer_id
            await own.send(CloseRelay(relay_id=resp.relay_id))
            assert (await q.expect(CloseRelay)).reason == "closed_by_peer"

            # Now the liar sends MeshOpen on its (authenticated) link to b, naming x (on
            # node a) and then a peer registered nowhere as the requester.
            link = liar.mesh.links.link(b.router.node_peer_id)
            assert link is not None
            answers: list[Any] = []
            read = link._on_text

            def record(frame: str) -> None:
                answers.append(decode_mesh_untrusted(frame))
                read(frame)

            link._on_text = record
            limits = CircuitLimits(0.0, 0, 0, 65536, 16384)
            lies = [(uuid.uuid4().bytes, x.peer_id), (uuid.uuid4().bytes, str(new_peer().peer_id))]
            for relay_id, requester in lies:
                link.send_control(MeshOpen(relay_id, requester, q.peer_id, limits))
            with trio.fail_after(5):
                while len([m for m in answers if isinstance(m, MeshRefused)]) < 2:
                    await trio.sleep(0.01)
            refusals = {m.relay_id: m for m in answers if isinstance(m, MeshRefused)}
            for relay_id, requester in lies:
                assert refusals[relay_id].code == "requester_not_on_node"
                assert requester in refusals[relay_id].message
            assert b.metrics.value(REFUSED, {"code": "requester_not_on_node"}) == 2
            assert b.mesh.statistics().requesters_refused["requester_not_on_node"] == 2
            assert b.statistics().circuits == 0
            # q was never told of a circuit from x; the link itself stays up.
            with trio.move_on_after(0.3):
                unexpected = await q.recv()
                raise AssertionError(f"the target was told {unexpected}")
            assert not link.broken
            # x (honest, on a) still reaches q through a's own link.
            await x.send(RelayRequest(from_=x.peer_id, to=q.peer_id))
            assert (await x.expect(RelayResponse)).accepted
            assert (await q.expect(DataChannel)).peer_id == x.peer_id


async def test_a_requester_is_refused_while_redis_cannot_confirm_it(tmp_path: Path) -> None:
    """Redis gone after the link is up: the far node cannot check, so it refuses
    ``cluster_unavailable`` (forwarded to the requester) rather than trusting the link."""
    with trio.fail_after(30):
        async with (
            running_redis() as redis,
            nodes(redis, tmp_path, 2) as (a, b),
            AsyncExitStack() as st,
        ):
            p = await peer_on(st, a)
            q = await peer_on(st, b)
            await p.send(RelayRequest(from_=p.peer_id, to=q.peer_id))
            assert (await p.expect(RelayResponse)).accepted
            await q.expect(DataChannel)
            link = a.mesh.links.link(b.router.node_peer_id)
            assert link is not None
            await redis.kill()
            relay_id = uuid.uuid4().bytes
            answers: list[Any] = []
            read = link._on_text
            link._on_text = lambda frame: (
                answers.append(decode_mesh_untrusted(frame)),
                read(frame),
            )
            link.send_control(
                MeshOpen(relay_id, p.peer_id, q.peer_id, CircuitLimits(0, 0, 0, 65536, 16384))
            )
            with trio.fail_after(10):
                while not any(isinstance(m, MeshRefused) for m in answers):
                    await trio.sleep(0.01)
            (refused,) = [m for m in answers if isinstance(m, MeshRefused)]
            assert refused.code == "cluster_unavailable"
            assert b.metrics.value(REFUSED, {"code": "cluster_unavailable"}) == 1
