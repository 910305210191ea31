"""Values shared by the cluster's Redis half (presence, inbox) and its mesh half."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeAddress:
    """Where a relay node of the cluster is reached by the other nodes."""

    node_id: str
    advertise: str  # "host:port" of the node's signaling listener
    node_peer_id: str  # the node's relay PeerId (what a mesh link authenticates)
