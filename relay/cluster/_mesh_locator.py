"""Where the mesh learns which node holds a peer, and which PeerIds are cluster nodes.

:class:`PeerLocator` is all the mesh needs of the cluster directory (the Redis one,
``relay.cluster._directory.ClusterDirectory``, has this shape). :class:`StaticPeerLocator`
is a fixed in-process table: for tests, and for a small cluster without Redis whose
peers' homes are known in advance (``[mesh] static_directory``, a JSON file).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ._types import NodeAddress


class PeerLocator(Protocol):
    async def locate(self, peer_id: str) -> NodeAddress | None:
        """The node holding ``peer_id``, or None if no node does."""


class NodeAuthority(Protocol):
    async def is_cluster_node(self, node_peer_id: str) -> bool:
        """Whether ``node_peer_id`` is a node of this cluster (may refuse mesh links)."""
        ...


class StaticPeerLocator:
    """A fixed table: nodes, and the node each peer is on (mutable, for tests)."""

    def __init__(
        self, nodes: Iterable[NodeAddress] = (), peers: Mapping[str, str] | None = None
    ) -> None:
        self.nodes: dict[str, NodeAddress] = {n.node_id: n for n in nodes}
        self.peers: dict[str, str] = dict(peers or {})  # peer id -> node_id

    def add_node(self, node: NodeAddress) -> None:
        self.nodes[node.node_id] = node

    def place(self, peer_id: str, node_id: str) -> None:
        self.peers[peer_id] = node_id

    async def locate(self, peer_id: str) -> NodeAddress | None:
        node_id = self.peers.get(peer_id)
        return None if node_id is None else self.nodes.get(node_id)

    async def is_cluster_node(self, node_peer_id: str) -> bool:
        return any(n.node_peer_id == node_peer_id for n in self.nodes.values())

    def to_json(self) -> str:
        return json.dumps(
            {
                "nodes": [
                    {"node_id": n.node_id, "advertise": n.advertise, "node_peer_id": n.node_peer_id}
                    for n in self.nodes.values()
                ],
                "peers": self.peers,
            }
        )

    @classmethod
    def from_file(cls, path: str | Path) -> StaticPeerLocator:
        """Read ``{"nodes": [{node_id, advertise, node_peer_id}, ...], "peers": {id: node_id}}``.
        Raises ValueError (with the reason) for a malformed file, OSError if unreadable."""
        data: Any = json.loads(Path(path).read_text())
        try:
            nodes = [
                NodeAddress(str(n["node_id"]), str(n["advertise"]), str(n["node_peer_id"]))
                for n in data["nodes"]
            ]
            peers = {str(k): str(v) for k, v in dict(data.get("peers", {})).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"static directory {path}: {exc!r}") from None
        return cls(nodes, peers)
