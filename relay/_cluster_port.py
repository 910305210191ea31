"""What the relay's router, sessions and server may ask of its cluster node.

:class:`~relay.cluster._node.ClusterNode` implements it; ``router.cluster`` holds it (None
for a single relay). Like :mod:`relay._session_handle` it keeps dependencies one way:
the cluster package knows the router, the router knows only this protocol.
"""

from __future__ import annotations

from typing import Any, Protocol

from darkswap_trio.proto.signaling import Answer, IceCandidate, Offer

from .cluster._types import ClusterSession, NodeAddress


class PeerDirectory(Protocol):
    """Where peers and nodes of the cluster are (raises ClusterUnavailable)."""

    async def locate(self, peer_id: str) -> NodeAddress | None: ...

    async def is_cluster_node(self, node_peer_id: str) -> bool: ...

    async def node(self, node_id: str) -> NodeAddress | None: ...


class SharedRendezvous(Protocol):
    """The topic rendezvous of the cluster (docs/PROTOCOL.md 14.6, 16.5)."""

    async def register(self, peer_id: str, topic: str) -> list[str] | None:
        """A sample of the other live members, or None when the store cannot answer
        (within its timeout). Raises TopicLimit (a bound, cluster-wide)."""

    async def unregister(self, peer_id: str, topic: str) -> None:
        """Leave ``topic`` (if the store cannot answer, the entry expires there)."""


class ClusterPort(Protocol):
    @property
    def directory(self) -> PeerDirectory: ...

    @property
    def topics(self) -> SharedRendezvous: ...

    async def claim(self, peer_id: str) -> str | None:
        """Claim ``peer_id`` cluster-wide before it registers here: None, or the error
        code refusing the registration."""

    def peer_released(self, peer_id: str) -> None:
        """``peer_id`` left this node (never blocks)."""

    def forward(self, session: ClusterSession, msg: Offer | Answer | IceCandidate) -> None:
        """Send a signaling message to a peer not registered here (never blocks; each
        sender's order is kept)."""
        ...

    def health(self) -> dict[str, Any]:
        """The ``cluster`` part of /healthz."""
        ...
