"""What the peer core hands back to its driver: events, states and statistics."""

from __future__ import annotations

from dataclasses import dataclass

from ..datachannel import ChannelInfo

__all__ = [
    "BufferedAmountLow",
    "ChannelClosed",
    "ChannelMessage",
    "ChannelOpened",
    "PeerCounts",
    "PeerEvent",
    "StateChanged",
]


@dataclass(frozen=True)
class StateChanged:
    """The connection state moved: "connecting", "connected", and then one of the ends
    ("failed", "disconnected" when the peer ended it, "closed" by us) with the reason."""

    state: str
    reason: str = ""


@dataclass(frozen=True)
class ChannelOpened:
    """The peer opened a channel (DCEP OPEN): hand it to whoever accepts channels."""

    info: ChannelInfo


@dataclass(frozen=True)
class ChannelMessage:
    """One whole message for a channel. ``size`` is what it counts against the receive
    buffer until :meth:`~._core.PeerCore.channel_drained` gives it back."""

    stream_id: int
    message: bytes | str
    size: int


@dataclass(frozen=True)
class BufferedAmountLow:
    """The channel's buffered amount fell to half the high-water mark."""

    stream_id: int


@dataclass(frozen=True)
class ChannelClosed:
    """Both directions of the channel are reset: it is gone."""

    stream_id: int


@dataclass
class PeerCounts:
    """Datagram counters the core keeps (the driver adds what it sent)."""

    datagrams_received: int = 0
    datagrams_dropped: int = 0
    datagrams_dropped_no_pair: int = 0  # ours, with no ICE path for them (see _early_dtls)
    protocol_violations: int = 0
    send_errors: int = 0  # SCTP refused a message (closing association)


PeerEvent = StateChanged | ChannelOpened | ChannelMessage | BufferedAmountLow | ChannelClosed
