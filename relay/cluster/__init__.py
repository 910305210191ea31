"""Relay cluster: several relay nodes share one Redis for presence and signaling.

Redis half (presence, per-node inbox, directory): ``_redis``, ``_presence``, ``_inbox``,
``_directory``, ``_node``. Node-to-node mesh links and cross-node circuits: ``_mesh*``.
Importing this package needs no Redis client; :func:`run_cluster_node` (imported only
when ``cluster.redis_url`` is set) needs the ``cluster`` extra (hiredis).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import ClusterConfig as ClusterConfig
from ._types import ClusterSession as ClusterSession
from ._types import NodeAddress as NodeAddress

if TYPE_CHECKING:
    from ._directory import ClusterDirectory as ClusterDirectory
    from ._directory import NodeDirectory as NodeDirectory
    from ._node import ClusterNode as ClusterNode
    from ._node import run_cluster_node as run_cluster_node
    from ._redis import ClusterUnavailable as ClusterUnavailable

__all__ = [
    "ClusterConfig",
    "ClusterDirectory",
    "ClusterNode",
    "ClusterSession",
    "ClusterUnavailable",
    "NodeAddress",
    "NodeDirectory",
    "run_cluster_node",
]

_LAZY = {
    "ClusterDirectory": "._directory",
    "NodeDirectory": "._directory",
    "ClusterNode": "._node",
    "run_cluster_node": "._node",
    "ClusterUnavailable": "._redis",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
