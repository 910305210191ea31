"""Relay cluster: several relay nodes share one Redis for presence and signaling.

Redis half (presence, per-node inbox, directory): ``_redis``, ``_presence``, ``_inbox``,
``_directory``. Node-to-node mesh links and cross-node circuits: ``_mesh*``.
"""

from ._types import NodeAddress as NodeAddress

__all__ = ["NodeAddress"]
