"""A relay cluster of real ``python -m relay`` processes sharing one real Redis (issue #15):
SDK peers on different nodes signal each other; one peer id per cluster; Redis lost and
back; a node killed with SIGKILL; legacy (--auth open) clients across nodes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
from redis_helpers import RedisServer, running_redis
from relayclient import RelayClient

from darkswap_trio import Keypair, RelayAuthenticationError, RelaySession, open_relay_session
from darkswap_trio.proto.signaling import Answer, IceCandidate, Offer
from darkswap_trio.websocket import open_websocket

pytestmark = pytest.mark.slow


class RelayNode:
    """One ``python -m relay`` process, a node of the cluster."""

    def __init__(self, nursery: trio.Nursery, node_id: str, argv: list[str]) -> None:
        self._nursery = nursery
        self.node_id = node_id
        self.argv = argv
        self.stderr = bytearray()
        self.process: trio.Process | None = None
        self.fields: dict[str, str] = {}

    async def start(self) -> None:
        self.process = await self._nursery.start(
            partial(
                trio.run_process,
                self.argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
            )
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self._nursery.start_soon(_drain, self.process.stderr, self.stderr)
        buffer = b""
        with trio.fail_after(30):  # interpreter start-up on a loaded 2-core machine
            while b"\n" not in buffer:
                chunk = await self.process.stdout.receive_some(4096)
                assert chunk, f"{self.node_id} exited: {self.stderr.decode(errors='replace')}"
                buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode()
        assert line.startswith("READY "), (line, self.stderr)
        self.fields = dict(item.split("=", 1) for item in line.split()[1:])
        self._nursery.start_soon(_drain, self.process.stdout, bytearray())

    @property
    def multiaddr(self) -> str:
        return self.fields["multiaddr"]

    @property
    def port(self) -> int:
        return int(self.fields["signaling"])

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def health(self) -> dict:
        stream = await trio.open_tcp_stream("127.0.0.1", int(self.fields["metrics"]))
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = bytearray()
            await _drain(stream, data)
        return json.loads(bytes(data).partition(b"\r\n\r\n")[2])


async def _drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    try:
        while chunk := await stream.receive_some(65536):
            into += chunk
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


@asynccontextmanager
async def relay_cluster(
    redis: RedisServer, tmp_path: Path, count: int, *, auth: str = "signature", toml: str = ""
) -> AsyncIterator[list[RelayNode]]:
    config = tmp_path / "cluster.toml"
    config.write_text(f'[cluster]\nkey_prefix = "test:"\n{toml}')
    async with trio.open_nursery() as nursery:
        nodes = []
        for index in range(1, count + 1):
            argv = [
                sys.executable, "-m", "relay", "--config", str(config), "--host", "127.0.0.1",
                "--port", "0", "--stun-port", "none", "--metrics-port", "0", "--auth", auth,
                "--cluster-redis", redis.url, "--node-id", f"n{index}",
                "--key-file", str(tmp_path / f"n{index}.key"), "--shutdown-grace", "1",
            ]  # fmt: skip
            nodes.append(RelayNode(nursery, f"n{index}", argv))
        async with trio.open_nursery() as starting:  # start them side by side
            for node in nodes:
                starting.start_soon(node.start)
        try:
            yield nodes
        finally:
            for node in nodes:
                if node.process is not None and node.process.returncode is None:
                    node.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                for node in nodes:
                    if node.process is not None:
                        await node.process.wait()
            nursery.cancel_scope.cancel()


async def _register_when_free(
    node: RelayNode, keypair: Keypair, nursery: trio.Nursery
) -> tuple[float, RelaySession]:
    """Register ``keypair`` on ``node``, retrying while the cluster says its id is in use;
    returns when it succeeded (trio time) and the session, open until ``nursery`` ends."""
    registered = trio.Event()

    async def hold() -> None:
        while True:
            try:
                async with open_relay_session(node.multiaddr, keypair) as session:
                    holder.append(session)
                    registered.set()
                    await trio.sleep_forever()
            except RelayAuthenticationError as exc:
                assert exc.code == "peer_id_in_use", exc
                await trio.sleep(0.2)

    holder: list[RelaySession] = []
    nursery.start_soon(hold)
    await registered.wait()
    return trio.current_time(), holder[0]


async def test_sdk_peers_on_three_nodes_signal_each_other(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with running_redis() as redis, relay_cluster(redis, tmp_path, 3) as (n1, n2, n3):
            alice, bob, carol = Keypair.generate(), Keypair.generate(), Keypair.generate()
            a_id, b_id, c_id = (str(k.peer_id) for k in (alice, bob, carol))
            async with (
                open_relay_session(n1.multiaddr, alice) as a,
                open_relay_session(n2.multiaddr, bob) as b,
                open_relay_session(n3.multiaddr, carol) as c,
            ):
                # Offer, then its candidates: in order, none overtakes the Offer.
                await a.send_signal(Offer(from_=a_id, to=b_id, sdp="v=0 offer-a"))
                sent = [IceCandidate(a_id, b_id, f"candidate:{i} 1 udp", "0", 0) for i in range(30)]
                for candidate in sent:
                    await a.send_signal(candidate)
                assert await b.signals.receive() == Offer(from_=a_id, to=b_id, sdp="v=0 offer-a")
                assert [await b.signals.receive() for _ in sent] == sent
                await b.send_signal(Answer(from_=b_id, to=a_id, sdp="v=0 answer-b"))
                await b.send_signal(IceCandidate(b_id, a_id, "candidate:b 1 udp", "0", 0))
                assert await a.signals.receive() == Answer(from_=b_id, to=a_id, sdp="v=0 answer-b")
                assert (await a.signals.receive()).candidate == "candidate:b 1 udp"
                # The third node too, both ways.
                await c.send_signal(Offer(from_=c_id, to=a_id, sdp="v=0 offer-c"))
                assert (await a.signals.receive()).sdp == "v=0 offer-c"
                await a.send_signal(Answer(from_=a_id, to=c_id, sdp="v=0 answer-a"))
                assert (await c.signals.receive()).sdp == "v=0 answer-a"

                # One holder per peer id in the whole cluster.
                with pytest.raises(RelayAuthenticationError) as refused:
                    async with open_relay_session(n3.multiaddr, bob):
                        pass
                assert refused.value.code == "peer_id_in_use"

                # A peer nobody holds: the usual unknown_peer, fast.
                nobody = str(Keypair.generate().peer_id)
                start = trio.current_time()
                await a.send_signal(Offer(from_=a_id, to=nobody, sdp="x"))
                error = await a.errors.receive()
                assert (error.code, error.ref) == ("unknown_peer", nobody)
                assert trio.current_time() - start < 1.0

                # A circuit between them: the mesh finds bob's node in the Redis directory.
                circuit = await a.request_circuit(b_id)
                incoming = await b.accept_circuit()
                await circuit.send(b"a to b")
                assert await incoming.receive() == b"a to b"
                await incoming.send(b"b to a")
                assert await circuit.receive() == b"b to a"

                health = await n1.health()
                assert health["cluster"]["state"] == "joined", health
                assert health["cluster"]["node_id"] == "n1"


async def test_redis_lost_and_back_then_a_killed_node(tmp_path: Path) -> None:
    """Redis restarts empty: local traffic never stops, cross-node fails with a clear
    error and recovers. Then SIGKILL a node: its peer registers on another node within
    10 s (default liveness_ttl, 5 s) and is reachable there."""
    with trio.fail_after(120):
        async with running_redis() as redis, relay_cluster(redis, tmp_path, 3) as (n1, n2, n3):
            alice, dave, bob = Keypair.generate(), Keypair.generate(), Keypair.generate()
            a_id, d_id, b_id = (str(k.peer_id) for k in (alice, dave, bob))
            async with trio.open_nursery() as nursery:
                async with (
                    open_relay_session(n1.multiaddr, alice) as a,
                    open_relay_session(n1.multiaddr, dave) as d,
                ):
                    async with open_relay_session(n2.multiaddr, bob) as b:
                        await redis.kill()
                        # Local signaling goes on without Redis.
                        await a.send_signal(Offer(from_=a_id, to=d_id, sdp="local"))
                        assert (await d.signals.receive()).sdp == "local"
                        # Cross-node: a clear error, not silence.
                        await a.send_signal(Offer(from_=a_id, to=b_id, sdp="lost"))
                        error = await a.errors.receive()
                        assert (error.code, error.ref) == ("cluster_unavailable", b_id), error
                        await redis.start()  # empty: the nodes claim their peers again
                        await _until_delivered(a, b, a_id, b_id)
                        await a.send_signal(Offer(from_=a_id, to=d_id, sdp="local again"))
                        assert (await d.signals.receive()).sdp == "local again"

                        await n2.kill()
                        killed = trio.current_time()
                    # bob's session ends with its node; it fails over to n3.
                    moved, b3 = await _register_when_free(n3, bob, nursery)
                    print(f"failover: registered on n3 {moved - killed:.2f} s after SIGKILL of n2")
                    assert moved - killed < 10.0, moved - killed
                    await a.send_signal(Offer(from_=a_id, to=b_id, sdp="after failover"))
                    assert (await b3.signals.receive()).sdp == "after failover"
                nursery.cancel_scope.cancel()


async def _until_delivered(a: RelaySession, b: RelaySession, a_id: str, b_id: str) -> None:
    """Send Offers from ``a`` to ``b`` until one arrives (the cluster rejoined)."""
    with trio.fail_after(20):
        while True:
            await a.send_signal(Offer(from_=a_id, to=b_id, sdp="back"))
            with trio.move_on_after(0.5):
                while True:
                    got = await b.signals.receive()
                    if got.sdp == "back":
                        return
            while True:  # errors met while the cluster came back
                try:
                    error = a.errors.receive_nowait()
                except trio.WouldBlock:
                    break
                assert error.code in ("cluster_unavailable", "unknown_peer"), error


async def test_legacy_open_clients_across_nodes(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with (
            running_redis() as redis,
            relay_cluster(redis, tmp_path, 2, auth="open") as (
                n1,
                n2,
            ),
        ):
            async with (
                open_websocket(f"ws://127.0.0.1:{n1.port}/signaling") as ws1,
                open_websocket(f"ws://127.0.0.1:{n2.port}/signaling") as ws2,
                open_websocket(f"ws://127.0.0.1:{n2.port}/signaling") as ws3,
            ):
                p1, p2, dup = RelayClient(ws1), RelayClient(ws2), RelayClient(ws3)
                await p1.register_legacy("peer1")
                await p2.register_legacy("peer2")
                await p1.send(Offer(from_="peer1", to="peer2", sdp="legacy offer"))
                assert await p2.expect(Offer) == Offer(
                    from_="peer1", to="peer2", sdp="legacy offer"
                )
                await p2.send(IceCandidate("peer2", "peer1", "candidate:1", "0", 0))
                assert (await p1.expect(IceCandidate)).candidate == "candidate:1"
                await p2.send(Answer(from_="peer2", to="peer1", sdp="legacy answer"))
                assert (await p1.expect(Answer)).sdp == "legacy answer"
                await dup.send_raw(
                    json.dumps({"type": "Register", "payload": {"peer_id": "peer1"}})
                )
                await dup.expect_error("peer_id_in_use")
