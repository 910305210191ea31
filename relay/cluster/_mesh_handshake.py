"""The mesh link handshake (docs/PROTOCOL.md 15.2) as two small synchronous state machines.

Each node proves it owns its relay key (an Ed25519 signature over the other's fresh
nonce, bound to both PeerIds, as peers prove theirs in section 2.3) and, when the
cluster has a shared secret, that it knows the secret (an HMAC over the same bytes; the
secret never crosses the wire). Whether the proven PeerId belongs to the cluster (the
directory's node table) is asked by the driver, which may have to wait for it.

No I/O, no clock: :class:`MeshDialer` and :class:`MeshAcceptor` take decoded messages
and say what to send, or refuse with a :class:`~relay.cluster._mesh_wire.MeshError`.
"""

from __future__ import annotations

import hmac
import secrets

from darkswap_trio import Keypair, PeerId
from darkswap_trio.proto.errors import PeerIdError

from ._mesh_wire import (
    MESH_PROTOCOL,
    MeshAuth,
    MeshChallenge,
    MeshError,
    MeshHello,
    MeshReady,
    cluster_mac,
    node_auth_message,
)


def _peer_id(text: str) -> PeerId | None:
    try:
        peer = PeerId.from_string(text)
    except PeerIdError:
        return None
    return peer if str(peer) == text and peer.is_ed25519 else None


class MeshDialer:
    """The dialing node's side: hello, then answer the challenge."""

    def __init__(self, keypair: Keypair, secret: bytes, expected: str) -> None:
        self._keypair = keypair
        self._me = str(keypair.peer_id)
        self._secret = secret
        self._expected = expected  # the PeerId the directory gave for the node we dial
        self._nonce = secrets.token_bytes(32)

    def hello(self) -> MeshHello:
        return MeshHello(node=self._me, to=self._expected, nonce=self._nonce)

    def challenge(self, msg: MeshChallenge) -> MeshAuth | MeshError:
        """The acceptor's proof; our own proof if it holds."""
        peer = _peer_id(msg.node)
        if msg.node != self._expected or peer is None:
            return MeshError("wrong_node", f"expected node {self._expected}, got {msg.node[:64]}")
        if not peer.verify(node_auth_message(self._nonce, msg.node, self._me), msg.signature):
            return MeshError("auth_failed", "node signature does not match its PeerId")
        want = cluster_mac(self._secret, self._nonce, msg.node, self._me)
        if not hmac.compare_digest(want, msg.mac):
            return MeshError("not_in_cluster", "cluster secret mismatch")
        return MeshAuth(
            signature=self._keypair.sign(node_auth_message(msg.nonce, self._me, msg.node)),
            mac=cluster_mac(self._secret, msg.nonce, self._me, msg.node),
        )


class MeshAcceptor:
    """The accepting node's side: challenge the hello, check the proof."""

    def __init__(self, keypair: Keypair, secret: bytes) -> None:
        self._keypair = keypair
        self._me = str(keypair.peer_id)
        self._secret = secret
        self._nonce = secrets.token_bytes(32)
        self.node: str | None = None  # the dialer's claimed PeerId, once it said hello

    def hello(self, msg: MeshHello) -> MeshChallenge | MeshError:
        if msg.protocol != MESH_PROTOCOL:
            return MeshError("bad_frame", f"unsupported protocol {msg.protocol[:64]!r}")
        if msg.to != self._me:
            return MeshError("wrong_node", f"this node is {self._me}")
        if _peer_id(msg.node) is None or msg.node == self._me:
            return MeshError("invalid_peer_id", "node must be another Ed25519 PeerId")
        self.node = msg.node
        return MeshChallenge(
            node=self._me,
            nonce=self._nonce,
            signature=self._keypair.sign(node_auth_message(msg.nonce, self._me, msg.node)),
            mac=cluster_mac(self._secret, msg.nonce, self._me, msg.node),
        )

    def auth(self, msg: MeshAuth) -> MeshReady | MeshError:
        node = self.node
        peer = None if node is None else _peer_id(node)
        if node is None or peer is None:
            return MeshError("not_registered", "MeshAuth before MeshHello")
        self.node = None  # one attempt per hello
        if not peer.verify(node_auth_message(self._nonce, node, self._me), msg.signature):
            return MeshError("auth_failed", "node signature does not match its PeerId")
        want = cluster_mac(self._secret, self._nonce, node, self._me)
        if not hmac.compare_digest(want, msg.mac):
            return MeshError("not_in_cluster", "cluster secret mismatch")
        self.node = node
        return MeshReady()
