"""Where a peer of the cluster is registered: :class:`ClusterDirectory`, and
:class:`NodeDirectory`, the same for a relay whose cluster node may not be up yet."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _wire
from ._redis import ClusterUnavailable, RedisLink
from ._types import NodeAddress

if TYPE_CHECKING:
    from .._cluster_port import PeerDirectory
    from .._router import RelayRouter


class ClusterDirectory:
    """Looks peers up in Redis (for cross-node circuits: the mesh half).

    A peer is located only while its node is alive (the presence's epoch matches the
    node's liveness key), so a dead node's peers are unknown at once.
    """

    def __init__(self, link: RedisLink, prefix: str) -> None:
        self._link = link
        self._prefix = prefix

    async def locate(self, peer_id: str) -> NodeAddress | None:
        """The node ``peer_id`` is registered on, or None if no live node holds it.

        Raises :class:`~relay.cluster.ClusterUnavailable` when Redis cannot answer.
        """
        found = await self._link.script(
            _wire.LOCATE, [_wire.peer_key(self._prefix, peer_id)], [self._prefix]
        )
        if not found or len(found) != 3:
            return None
        node_id, advertise, node_peer_id = (str(part) for part in found)
        return NodeAddress(node_id=node_id, advertise=advertise, node_peer_id=node_peer_id)

    async def is_cluster_node(self, node_peer_id: str) -> bool:
        """Whether a live node of the cluster has the relay PeerId ``node_peer_id`` (the
        mesh's check of a node dialing in). Raises ClusterUnavailable."""
        found = await self._link.script(
            _wire.NODE_OF_PEER,
            [_wire.node_peer_key(self._prefix, node_peer_id)],
            [self._prefix, node_peer_id],
        )
        return bool(found)

    async def node(self, node_id: str) -> NodeAddress | None:
        """A live node by id (None if its liveness key expired). Raises ClusterUnavailable."""
        found = await self._link.script(_NODE, [_wire.node_key(self._prefix, node_id)], [])
        if not found or len(found) != 2 or not found[0]:
            return None
        return NodeAddress(node_id=node_id, advertise=str(found[0]), node_peer_id=str(found[1]))


class NodeDirectory:
    """The directory of ``router.cluster``, for services started before the cluster
    node (the mesh): raises ClusterUnavailable while the relay is not a joined node."""

    def __init__(self, router: RelayRouter) -> None:
        self._router = router

    def _directory(self) -> PeerDirectory:
        cluster = self._router.cluster
        if cluster is None:
            raise ClusterUnavailable("this relay is not (yet) a node of the cluster")
        return cluster.directory

    async def locate(self, peer_id: str) -> NodeAddress | None:
        return await self._directory().locate(peer_id)

    async def is_cluster_node(self, node_peer_id: str) -> bool:
        return await self._directory().is_cluster_node(node_peer_id)

    async def node(self, node_id: str) -> NodeAddress | None:
        return await self._directory().node(node_id)


_NODE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
return redis.call('HMGET', KEYS[1], 'advertise', 'peer_id')
"""
