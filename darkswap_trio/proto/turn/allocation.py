"""One TURN allocation's state (RFC 8656 sections 6, 9, 12): lifetimes, permissions,
channel bindings and its bandwidth budget. Pure data plus ``now``-driven rules."""

from __future__ import annotations

from dataclasses import dataclass, field

from .events import ClientKey

__all__ = ["Allocation", "BandwidthBucket", "ChannelRefusal"]

# RFC 8656 section 12: after a binding expires, neither its number nor its peer may be
# bound to something else for 5 minutes (stray ChannelData must not reach a new peer).
CHANNEL_REBIND_COOLDOWN = 300.0


class BandwidthBucket:
    """Token bucket in bytes; ``rate`` 0 means unlimited."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self._tokens = float(self.burst)
        self._stamp = now

    def try_take(self, amount: int, now: float) -> bool:
        if self.rate <= 0:
            return True
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        if self._tokens < amount:
            return False
        self._tokens -= amount
        return True


class ChannelRefusal(Exception):
    """A ChannelBind breaks a binding rule; ``str()`` is the 400 reason phrase."""


@dataclass
class Allocation:
    allocation_id: int
    client: ClientKey
    username: str
    key: bytes  # long-term credential key of ``username``: the requests' MESSAGE-INTEGRITY key
    expires_at: float
    bucket: BandwidthBucket
    relayed: tuple[str, int] | None = None  # None until the driver bound the socket
    allocate_transaction: bytes = b""
    allocate_response: bytes | None = None  # replayed to a retransmitted Allocate
    permissions: dict[str, float] = field(default_factory=dict)  # canonical peer IP -> expiry
    channels: dict[int, tuple[tuple[str, int], float]] = field(default_factory=dict)
    peer_channels: dict[tuple[str, int], int] = field(default_factory=dict)

    def permitted(self, ip: str, now: float) -> bool:
        expiry = self.permissions.get(ip)
        return expiry is not None and expiry > now

    def channel_peer(self, number: int, now: float) -> tuple[str, int] | None:
        entry = self.channels.get(number)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def peer_channel(self, peer: tuple[str, int], now: float) -> int | None:
        number = self.peer_channels.get(peer)
        if number is None or self.channels[number][1] <= now:
            return None
        return number

    def check_channel(self, number: int, peer: tuple[str, int], now: float) -> bool:
        """Whether binding ``number`` to ``peer`` is allowed; True if it refreshes a live one.

        A binding, live or within its post-expiry cooldown, reserves its number and its
        peer for each other.

        Raises:
            ChannelRefusal: the number or the peer is bound (or cooling down) elsewhere.
        """
        entry = self.channels.get(number)
        if entry is not None and entry[0] != peer and entry[1] + CHANNEL_REBIND_COOLDOWN > now:
            raise ChannelRefusal("channel number bound to another peer")
        other = self.peer_channels.get(peer)
        if (
            other is not None
            and other != number
            and self.channels[other][1] + CHANNEL_REBIND_COOLDOWN > now
        ):
            raise ChannelRefusal("peer bound to another channel number")
        return entry is not None and entry[0] == peer and entry[1] > now

    def bind_channel(self, number: int, peer: tuple[str, int], expiry: float) -> None:
        old = self.channels.get(number)
        if old is not None and old[0] != peer and self.peer_channels.get(old[0]) == number:
            del self.peer_channels[old[0]]
        old_number = self.peer_channels.get(peer)
        if old_number is not None and old_number != number:
            self.channels.pop(old_number, None)
        self.channels[number] = (peer, expiry)
        self.peer_channels[peer] = number

    def expire(self, now: float) -> None:
        """Forget expired permissions and bindings past their cooldown (both already
        stopped working when they expired: every use checks the time)."""
        for ip in [ip for ip, expiry in self.permissions.items() if expiry <= now]:
            del self.permissions[ip]
        for number, (peer, expiry) in list(self.channels.items()):
            if expiry + CHANNEL_REBIND_COOLDOWN <= now:
                del self.channels[number]
                if self.peer_channels.get(peer) == number:
                    del self.peer_channels[peer]

    def next_deadline(self) -> float:
        """The earliest time something of this allocation is due to be forgotten."""
        deadline = self.expires_at
        for expiry in self.permissions.values():
            deadline = min(deadline, expiry)
        for _, expiry in self.channels.values():
            deadline = min(deadline, expiry + CHANNEL_REBIND_COOLDOWN)
        return deadline
