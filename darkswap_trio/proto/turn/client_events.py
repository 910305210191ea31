"""What the TURN client core (:mod:`.client`) reports to its user."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Allocated",
    "AllocationEnded",
    "AllocationFailed",
    "PeerData",
    "PermissionFailed",
    "TurnClientEvent",
]


@dataclass(frozen=True)
class Allocated:
    """The allocation exists: peers reach us at ``relayed``; the server saw us at
    ``mapped`` (a relay candidate's raddr/rport)."""

    relayed: tuple[str, int]
    mapped: tuple[str, int] | None
    lifetime: float


@dataclass(frozen=True)
class AllocationFailed:
    """Allocate did not succeed (``code`` is the server's error, None for no answer)."""

    reason: str
    code: int | None


@dataclass(frozen=True)
class AllocationEnded:
    """A live allocation is gone (expired, or a Refresh was refused)."""

    reason: str


@dataclass(frozen=True)
class PermissionFailed:
    """CreatePermission for ``ip`` was refused (403: the server denies that peer) or
    not answered; what waited for it is dropped."""

    ip: str
    code: int | None


@dataclass(frozen=True)
class PeerData:
    """A datagram ``peer`` sent to our relayed address."""

    peer: tuple[str, int]
    data: bytes


TurnClientEvent = Allocated | AllocationFailed | AllocationEnded | PermissionFailed | PeerData
