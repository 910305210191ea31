"""Values shared by the cluster's Redis half (presence, inbox) and its mesh half."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from darkswap_trio.proto.signaling import Error, Message


@dataclass(frozen=True)
class NodeAddress:
    """Where a relay node of the cluster is reached by the other nodes."""

    node_id: str
    advertise: str  # "host:port" of the node's signaling listener
    node_peer_id: str  # the node's relay PeerId (what a mesh link authenticates)


class ClusterSession(Protocol):
    """A local signaling session as the cluster sees it (relay's SessionHandle)."""

    @property
    def peer_id(self) -> str | None: ...

    @property
    def extended(self) -> bool: ...

    @property
    def has_libp2p_id(self) -> bool: ...

    def send_control(self, msg: Message) -> None: ...

    def close(self, code: int, error: Error | None = None, reason: str = "") -> None: ...
