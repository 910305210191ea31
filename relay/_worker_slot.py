"""What a process of ``darkswap-relay --workers N`` needs to know about its slot."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerSlot:
    """This process is worker ``index`` (0-based) of a relay running N workers.

    Workers bind the signaling port together (SO_REUSEPORT): a mesh link dialed to it
    would reach any of them, so each serves mesh links on a private ``mesh_port``
    (0: any free port), which its liveness record advertises to the cluster.
    """

    index: int
    mesh_port: int
