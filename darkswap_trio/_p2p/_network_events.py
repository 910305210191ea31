"""What ``P2PNetwork.events`` yields besides the relay manager's events: peers coming
and going, and each link's path changes."""

from __future__ import annotations

from dataclasses import dataclass

from .._relay_client._manager import DataReceived, RelayEvent

__all__ = [
    "ConnectionDowngraded",
    "ConnectionUpgraded",
    "LinkInterrupted",
    "LinkRestored",
    "NetworkEvent",
    "PeerConnected",
    "PeerDisconnected",
]


@dataclass(frozen=True)
class PeerConnected:
    peer_id: str
    connection_type: str  # "relay" (or "direct")
    relay_id: str | None = None


@dataclass(frozen=True)
class PeerDisconnected:
    peer_id: str
    reason: str


@dataclass(frozen=True)
class ConnectionUpgraded:
    """The link to ``peer_id`` now sends on the direct path (it started relayed)."""

    peer_id: str


@dataclass(frozen=True)
class ConnectionDowngraded:
    """The link to ``peer_id`` lost its direct path and continues over a relay circuit."""

    peer_id: str
    reason: str


@dataclass(frozen=True)
class LinkInterrupted:
    """The link to ``peer_id`` has no path at the moment (sends wait, up to the recovery timeout)."""

    peer_id: str
    reason: str


@dataclass(frozen=True)
class LinkRestored:
    """The link to ``peer_id`` has a path again after a :class:`LinkInterrupted`."""

    peer_id: str
    connection_type: str


NetworkEvent = (
    PeerConnected
    | PeerDisconnected
    | ConnectionUpgraded
    | ConnectionDowngraded
    | LinkInterrupted
    | LinkRestored
    | DataReceived
    | RelayEvent
)
