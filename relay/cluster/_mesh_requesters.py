"""Whether a node may speak for a peer: the check of a requester named on a mesh link.

A mesh link proves which node is at the other end (section 15.2), not which peers are
registered there. A node of the cluster (holding its secret) could otherwise name any
peer as the requester of a circuit, and the target would be told ``DataChannel`` from a
peer that never asked. So the receiving node asks the cluster directory where the named
peer is: only a peer whose valid presence (same node, same epoch: LOCATE, section 16.1)
names the node at the other end of the link is accepted (docs/PROTOCOL.md 15.4).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._mesh_locator import PeerLocator
    from ._types import NodeAddress

logger = logging.getLogger("relay.cluster.mesh")

NOT_ON_NODE = "requester_not_on_node"
UNAVAILABLE = "cluster_unavailable"


class RequesterCheck:
    """Checks peer ids a far node names as its own, counting what it refuses."""

    def __init__(self, locator: PeerLocator, *, timeout: float) -> None:
        self._locator = locator
        self.timeout = timeout
        self.refused: dict[str, int] = {NOT_ON_NODE: 0, UNAVAILABLE: 0}

    async def refusal(self, node_peer_id: str, peer_id: str) -> tuple[str, str] | None:
        """None when ``peer_id`` is registered on node ``node_peer_id`` (the PeerId the
        link proved); else (code, message) for the MeshRefused."""
        answered = False
        address: NodeAddress | None = None
        with trio.move_on_after(self.timeout):
            try:
                address = await self._locator.locate(peer_id)
                answered = True
            except Exception as exc:  # the directory is down: no cross-node opens meanwhile
                logger.warning("cannot check mesh requester %s: %r", peer_id, exc)
        if not answered:
            self.refused[UNAVAILABLE] += 1
            return (UNAVAILABLE, "the cluster directory cannot confirm the requester")
        if address is not None and address.node_peer_id == node_peer_id:
            return None
        self.refused[NOT_ON_NODE] += 1
        logger.warning(
            "mesh node %s named requester %s, which is not registered on it: refused",
            node_peer_id,
            peer_id,
        )
        return (NOT_ON_NODE, f"peer {peer_id} is not registered on the requesting node")
