"""Mesh link handshake (PROTOCOL.md 15.2): the state machines, and refusals on a real node."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from mesh_nodes import SECRET, running_cluster

from darkswap_trio import Keypair
from darkswap_trio.proto.signaling import CircuitLimits
from darkswap_trio.websocket import open_websocket
from relay.cluster._mesh_handshake import MeshAcceptor, MeshDialer
from relay.cluster._mesh_links import MeshUnreachable
from relay.cluster._mesh_wire import (
    MeshAuth,
    MeshChallenge,
    MeshClose,
    MeshError,
    MeshHello,
    MeshOpen,
    MeshParseError,
    MeshReady,
    decode_mesh_untrusted,
    encode_mesh,
)


def pair(dial_secret: bytes = b"s", accept_secret: bytes = b"s"):
    a, b = Keypair.generate(), Keypair.generate()
    return a, b, MeshDialer(a, dial_secret, str(b.peer_id)), MeshAcceptor(b, accept_secret)


def test_handshake_proves_both_ids():
    a, _, dialer, acceptor = pair()
    challenge = acceptor.hello(dialer.hello())
    assert isinstance(challenge, MeshChallenge)
    auth = dialer.challenge(challenge)
    assert isinstance(auth, MeshAuth)
    assert isinstance(acceptor.auth(auth), MeshReady)
    assert acceptor.node == str(a.peer_id)


def test_wrong_secret_is_refused_both_ways():
    _, _, dialer, acceptor = pair(b"one", b"two")
    challenge = acceptor.hello(dialer.hello())
    assert dialer.challenge(challenge) == MeshError("not_in_cluster", "cluster secret mismatch")
    # A dialer that ignores the mismatch is refused by the acceptor too.
    a, b, dialer, acceptor = pair(b"one", b"two")
    challenge = acceptor.hello(dialer.hello())
    forged = MeshAuth(signature=a.sign(b"x"), mac=b"")
    assert isinstance(acceptor.auth(forged), MeshError)


def test_impostor_node_is_refused():
    # The dialer expects node b; a node with another key answers.
    a, b = Keypair.generate(), Keypair.generate()
    impostor = MeshAcceptor(Keypair.generate(), b"s")
    dialer = MeshDialer(a, b"s", str(b.peer_id))
    hello = dialer.hello()
    assert impostor.hello(hello).code == "wrong_node"
    # An acceptor signing over someone else's id fails verification.
    acceptor = MeshAcceptor(b, b"s")
    challenge = acceptor.hello(hello)
    forged = MeshChallenge(challenge.node, challenge.nonce, b"\0" * 64, challenge.mac)
    assert dialer.challenge(forged).code == "auth_failed"


def test_frames_round_trip():
    limits = CircuitLimits(1.5, 10, 0, 4096, 1024)
    for msg in (
        MeshOpen(b"\1" * 16, "peer-a", "peer-b", limits),
        MeshClose(b"\2" * 16, "closed_by_peer"),
        MeshError("bad_frame", "why"),
        MeshHello("n", "m", b"\3" * 32),
    ):
        assert decode_mesh_untrusted(encode_mesh(msg)) == msg


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_parser_raises_only_parse_errors(text):
    try:
        decode_mesh_untrusted(text)
    except MeshParseError:
        pass


@given(
    st.dictionaries(
        st.sampled_from(["relay_id", "from", "to", "limits", "reason", "node", "nonce", "mac"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=40), st.lists(st.integers())),
    ),
    st.sampled_from(["MeshOpen", "MeshClose", "MeshHello", "MeshAuth", "MeshRefused", "Nope"]),
)
def test_parser_fields_raise_only_parse_errors(payload, kind):
    import json

    try:
        decode_mesh_untrusted(json.dumps({"type": kind, "payload": payload}))
    except MeshParseError:
        pass


async def test_node_refuses_link_without_the_secret(tmp_path):
    with trio.fail_after(15):
        async with running_cluster(tmp_path, 2) as (servers, locator):
            b = servers[1]
            url = f"ws://127.0.0.1:{b.signaling_port}/mesh"
            # A stranger key with the wrong secret.
            async with open_websocket(url) as ws:
                dialer = MeshDialer(Keypair.generate(), b"wrong " + SECRET, b.peer_id)
                await ws.send(encode_mesh(dialer.hello()))
                challenge = decode_mesh_untrusted(await ws.receive())
                assert isinstance(challenge, MeshChallenge)
                # The acceptor's MAC shows the secrets differ: the dialer refuses...
                assert dialer.challenge(challenge).code == "not_in_cluster"
                # ...and a dialer that sends a proof anyway is refused by the node.
                await ws.send(encode_mesh(MeshAuth(signature=b"\0" * 64, mac=b"")))
                refusal = decode_mesh_untrusted(await ws.receive())
                assert isinstance(refusal, MeshError) and refusal.code == "auth_failed"
                with pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):
                    await ws.receive()
            # Garbage instead of a hello.
            async with open_websocket(url) as ws:
                await ws.send("not json")
                with pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):
                    while True:
                        await ws.receive()
            assert b.mesh.statistics().refused_links == 2
            assert b.mesh.statistics().links == 0


async def test_node_with_other_secret_cannot_link(tmp_path):
    """A relay started with another cluster secret: its links are refused and its
    RelayRequests to the cluster's peers are refused node_unreachable."""
    with trio.fail_after(15):
        async with running_cluster(tmp_path, 1) as (servers, loc):
            other_dir = tmp_path / "other"
            other_dir.mkdir()
            async with running_cluster(other_dir, 1, secret=b"another secret") as (others, _):
                node = loc.nodes["node0"]
                with pytest.raises(MeshUnreachable):
                    await others[0].mesh.links.link_to(node)
                assert servers[0].mesh.statistics().refused_links == 1
