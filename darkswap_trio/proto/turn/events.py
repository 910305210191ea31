"""What the TURN server core hands its driver: transmits, events and its settings."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AllocationClosed",
    "AllocationRequested",
    "ClientKey",
    "LimitHit",
    "ToClient",
    "ToPeer",
    "TurnServerSettings",
    "TurnStatistics",
]

# ("udp" | "tcp" | "tls", client address as the server socket sees it). A TCP or TLS
# client's address is unique per connection on its port, so it names the connection
# too; "tcp" and "tls" differ because one source port may reach both server ports.
ClientKey = tuple[str, tuple[str, int]]


@dataclass(frozen=True)
class TurnServerSettings:
    realm: str
    secret: bytes  # the TURN REST API shared secret
    relay_ip: str  # the address relayed sockets are bound on and announced with
    own_addresses: tuple[str, ...] = ()  # never reachable as peers (the relay's own)
    allow_loopback_peers: bool = False  # tests and labs only
    default_lifetime: int = 600
    max_lifetime: int = 3600
    permission_lifetime: int = 300
    channel_lifetime: int = 600
    nonce_lifetime: float = 600.0
    max_allocations: int = 1000
    max_allocations_per_user: int = 10
    max_allocations_per_ip: int = 20
    max_permissions_per_allocation: int = 64
    max_channels_per_allocation: int = 64
    bandwidth_per_allocation: float = 4 * 1024 * 1024  # bytes/s, both directions; 0 = unlimited
    bandwidth_burst: int = 1024 * 1024
    software: str | None = None
    # Accept channel numbers 0x5000-0x7FFF too, as RFC 5766 did (older clients).
    rfc5766_channels: bool = False


@dataclass(frozen=True)
class ToClient:
    """Send ``data`` to the client over the transport it used (UDP socket or its TCP connection)."""

    client: ClientKey
    data: bytes
    payload: int = 0  # relayed payload bytes it carries (0 for control messages)
    # An answer to a request that proved nothing (401, 438, 420, 400 before
    # authentication): its source may be spoofed, so the driver rate-limits these
    # per source IP to keep the server from being a reflector.
    unauthenticated: bool = False


@dataclass(frozen=True)
class ToPeer:
    """Send ``data`` from allocation ``allocation_id``'s relayed socket to ``peer``."""

    allocation_id: int
    peer: tuple[str, int]
    data: bytes


@dataclass(frozen=True)
class AllocationRequested:
    """Bind a relayed UDP socket, then call ``allocation_bound`` or ``allocation_failed``."""

    allocation_id: int
    client: ClientKey
    even_port: bool = False  # EVEN-PORT (RFC 8656 section 14.6): the port must be even


@dataclass(frozen=True)
class AllocationClosed:
    """Allocation gone (expired, deleted, its TCP connection closed): close its socket."""

    allocation_id: int
    client: ClientKey
    reason: str  # "expired", "deleted", "client_closed", "bind_failed"


@dataclass(frozen=True)
class LimitHit:
    """A quota refused something; ``limit`` is a fixed name (for a metric label)."""

    limit: str  # allocations_total, allocations_per_user, allocations_per_ip,
    # permissions_per_allocation, channels_per_allocation, bandwidth, lifetime


@dataclass(frozen=True)
class TurnStatistics:
    allocations: int
    permissions: int
    channels: int
