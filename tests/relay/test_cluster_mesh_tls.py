"""Mesh links over TLS (``[mesh] tls``, docs/PROTOCOL.md 15.1): circuit data between
nodes is encrypted on the wire, and a node whose certificate is not its PeerId's key is
refused before the dialer says a word. Real relays, real TLS, a real TCP relay between
the nodes that records every byte."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings, strategies
from mesh_nodes import running_cluster_handle
from redis_helpers import running_redis
from relayclient import connect, make_config, new_peer
from test_cluster_mesh import open_cross, registered

from darkswap_trio.proto.signaling import CircuitData, RelayRequest, RelayResponse
from darkswap_trio.websocket import WebSocketHandshakeError, WebSocketRejected, open_websocket
from relay import serve_relay
from relay.cluster._types import NodeAddress

MARKER = b"confidential order book entry 7f3a"
PEER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


@asynccontextmanager
async def recording_proxy(port: int) -> AsyncIterator[tuple[int, bytearray]]:
    """A TCP relay to 127.0.0.1:``port``; yields its port and every byte it carried."""
    seen = bytearray()

    async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        try:
            async for chunk in src:
                seen.extend(chunk)
                await dst.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await dst.aclose()

    async def handle(client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", port)
        async with trio.open_nursery() as pair:
            pair.start_soon(pump, client, server)
            pair.start_soon(pump, server, client)

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        yield listener.socket.getsockname()[1], seen
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_circuit_data_between_nodes_is_encrypted_with_mesh_tls(tmp_path, tls):
    with trio.fail_after(20):
        async with (
            running_cluster_handle(tmp_path, 2, mesh_tls=tls) as cluster,
            AsyncExitStack() as st,
        ):
            servers, locator = cluster.servers, cluster.locator
            node1 = locator.nodes["node1"]
            assert (servers[1].mesh_port is not None) == tls  # TLS: a listener of its own
            port = int(node1.advertise.rsplit(":", 1)[1])
            proxy_port, seen = await st.enter_async_context(recording_proxy(port))
            locator.add_node(NodeAddress("node1", f"127.0.0.1:{proxy_port}", node1.node_peer_id))
            a = await registered(st, servers[0], locator, "node0")
            b = await registered(st, servers[1], locator, "node1")
            rid, _ = await open_cross(a, b)
            await a.send_data(rid, MARKER)
            assert await b.expect(CircuitData) == CircuitData(rid, MARKER)
            await b.send_data(rid, MARKER[::-1])
            assert await a.expect(CircuitData) == CircuitData(rid, MARKER[::-1])
            link = servers[0].mesh.links.link(node1.node_peer_id)
            assert (link.ws.peer_certificate() is not None) == tls
            assert len(seen) > 1000
            # What the accepting node sends is not masked (WebSocket masks only the
            # dialer's frames): in plain, the recorder reads it; with TLS, nothing.
            clear = [MARKER[::-1], b"MeshChallenge", b"MeshOpened", b"GET /mesh"]
            if tls:
                assert seen[0] == 0x16  # a TLS handshake record, then only ciphertext
                assert [text for text in clear if text in seen] == []
            else:  # the control: the recorder does see what a plain link carries
                assert [text for text in clear if text in seen] == clear


async def test_a_node_whose_certificate_is_not_its_key_is_refused(tmp_path, caplog):
    """The directory names node1, but its address answers with node2's certificate (an
    impostor holding another key): node0 hangs up before MeshHello, so node2 sees no
    handshake at all, and the requester is refused node_unreachable. Plain dials to a TLS
    node, and /mesh on its signaling port, are refused too."""
    caplog.set_level(logging.INFO, "relay.cluster.mesh")
    with trio.fail_after(20):
        async with (
            running_cluster_handle(tmp_path, 3, mesh_tls=True) as cluster,
            AsyncExitStack() as st,
        ):
            servers, locator = cluster.servers, cluster.locator
            node1, node2 = locator.nodes["node1"], locator.nodes["node2"]
            locator.add_node(NodeAddress("node1", node2.advertise, node1.node_peer_id))
            a = await registered(st, servers[0], locator, "node0")
            b = await registered(st, servers[1], locator, "node1")
            await a.send(RelayRequest(from_=a.peer_id, to=b.peer_id))
            resp = await a.expect(RelayResponse)
            assert (resp.accepted, resp.code) == (False, "node_unreachable")
            assert "wrong_certificate" in (resp.error or "")
            stats = servers[0].mesh.statistics()
            assert (stats.wrong_certificates, stats.links) == (1, 0)
            # node2 saw a connection end before any MeshHello (not a hello for another node).
            assert servers[2].mesh.statistics().refused_links == 1
            (ended,) = [
                r.getMessage() for r in caplog.records if "handshake from" in r.getMessage()
            ]
            assert ended.endswith("failed: EndOfChannel()"), ended
            metric = "darkswap_relay_mesh_wrong_certificates_total"
            assert servers[0].metrics.value(metric) == 1

            # No plain links to a TLS node: not on its mesh port, not on its signaling port.
            with pytest.raises(WebSocketHandshakeError):
                async with open_websocket(f"ws://{node1.advertise}/mesh", connect_timeout=3):
                    pass
            with pytest.raises(WebSocketRejected) as refused:
                url = f"ws://127.0.0.1:{servers[1].signaling_port}/mesh"
                async with open_websocket(url, connect_timeout=3):
                    pass
            assert refused.value.status == 404


async def test_nodes_on_redis_link_over_tls(tmp_path: Path) -> None:
    """With the Redis directory, each node advertises its TLS mesh listener itself."""
    secret = tmp_path / "mesh.secret"
    secret.write_bytes(b"cluster secret")
    with trio.fail_after(30):
        async with running_redis() as redis, trio.open_nursery() as nursery:
            servers: list[Any] = []
            for index in (1, 2):
                config = make_config()
                config.cluster.redis_url = redis.url
                config.cluster.node_id = f"n{index}"
                config.cluster.key_prefix = "tls:"
                config.mesh.secret_file = str(secret)
                config.mesh.tls = True
                servers.append(await nursery.start(serve_relay, config))
            a, b = servers
            assert a.advertise == f"127.0.0.1:{a.mesh_port}" != f"127.0.0.1:{a.signaling_port}"
            async with connect(a) as p, connect(b) as q:
                await p.register_extended(new_peer(), a.peer_id, open_mode=True)
                await q.register_extended(new_peer(), b.peer_id, open_mode=True)
                rid, _ = await open_cross(p, q)
                await p.send_data(rid, MARKER)
                assert await q.expect(CircuitData) == CircuitData(rid, MARKER)
                link = a.mesh.links.link(b.router.node_peer_id)
                assert link is not None and link.ws.peer_certificate() is not None
            nursery.cancel_scope.cancel()


def test_node_certificate_check() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from darkswap_trio import Keypair
    from darkswap_trio.testing._tls import SelfSignedCertificate
    from relay.cluster._mesh_tls import certificate_is_node, node_certificate

    key = Keypair.generate()
    der = x509.load_pem_x509_certificate(node_certificate(key)[0]).public_bytes(Encoding.DER)
    assert certificate_is_node(der, str(key.peer_id))
    assert not certificate_is_node(der, str(Keypair.generate().peer_id))
    assert not certificate_is_node(der, "not a peer id")
    assert not certificate_is_node(None, str(key.peer_id))
    ecdsa = x509.load_pem_x509_certificate(SelfSignedCertificate.generate().cert_pem)
    assert not certificate_is_node(ecdsa.public_bytes(Encoding.DER), str(key.peer_id))


@settings(max_examples=200, deadline=None)
@given(strategies.binary(max_size=600))
def test_any_bytes_as_a_certificate_are_just_not_the_node(der: bytes) -> None:
    from relay.cluster._mesh_tls import certificate_is_node

    assert certificate_is_node(der, PEER) is False
