"""ConnectionMetrics: a snapshot of one peer link, read from real traffic counters.

RTT comes from the path in use: the SCTP association's smoothed RTT (or its last
heartbeat RTT before any data was acknowledged) for a direct link, the relay session's
Ping/Pong latency for a relayed one. Loss is the SCTP retransmission count; a relay
path runs over TCP, whose retransmissions we cannot see, so it reports None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..webrtc._peer_connection import PeerConnection
    from ._direct import DirectConnection


@dataclass(frozen=True)
class ConnectionMetrics:
    peer_id: str
    connection_type: str  # "direct" or "relay"
    rtt_ms: float | None
    rtt_source: str | None  # "sctp-srtt", "sctp-heartbeat", "relay-ping" or None
    retransmissions: int | None  # SCTP retransmissions (incl. fast); None on relay
    loss_rate: float | None  # retransmissions / SCTP packets sent; None on relay
    bytes_sent: int  # application payload bytes, both paths
    bytes_received: int
    messages_sent: int
    messages_received: int
    relay_bytes_sent: int  # of which carried by the relay circuit
    direct_bytes_sent: int  # of which carried by the data channel
    established_at: float  # trio time
    last_activity: float  # trio time of the last send or receive
    upgraded: bool  # switched from relay to direct
    # The ICE candidates the direct path's data goes on ("host", "srflx", "prflx",
    # "relay"; the selected pair, or before nomination ends the best valid one):
    # "relay" means the data channel runs through a TURN server. None on a relay circuit.
    local_candidate_type: str | None = None
    remote_candidate_type: str | None = None


def direct_path_quality(
    pc: PeerConnection,
) -> tuple[float | None, str | None, int | None, float | None]:
    """(rtt_ms, rtt_source, retransmissions, loss_rate) of a direct path's SCTP association."""
    sctp = pc.statistics().sctp
    if sctp is None:
        return None, None, None, None
    rtt = source = None
    if sctp.srtt is not None:
        rtt, source = sctp.srtt * 1000.0, "sctp-srtt"
    elif sctp.heartbeat_rtt is not None:
        rtt, source = sctp.heartbeat_rtt * 1000.0, "sctp-heartbeat"
    retrans = sctp.retransmissions + sctp.fast_retransmits
    return rtt, source, retrans, (retrans / sctp.packets_sent if sctp.packets_sent else 0.0)


class MeteredLink(Protocol):
    """What :func:`link_metrics` reads of a link (a PeerLink)."""

    peer_id: str
    bytes_sent: int
    bytes_received: int
    messages_sent: int
    messages_received: int
    relay_bytes_sent: int
    direct_bytes_sent: int
    established_at: float
    last_activity: float
    upgraded: bool
    relay_rtt_ms: Callable[[], float | None]

    @property
    def connection_type(self) -> str: ...

    @property
    def direct(self) -> DirectConnection | None: ...


def link_metrics(link: MeteredLink) -> ConnectionMetrics:
    """The metrics of ``link``: RTT and loss of the path it sends on, its counters."""
    direct = link.direct
    local_type = remote_type = None
    if link.connection_type == "direct" and direct is not None:
        rtt, source, retrans, loss = direct_path_quality(direct.peer_connection)
        ice = direct.peer_connection.statistics().ice
        if ice is not None:
            local_type, remote_type = ice.active_local_type, ice.active_remote_type
    else:
        rtt, retrans, loss = link.relay_rtt_ms(), None, None
        source = "relay-ping" if rtt is not None else None
    return ConnectionMetrics(
        peer_id=link.peer_id,
        connection_type=link.connection_type,
        rtt_ms=rtt,
        rtt_source=source,
        retransmissions=retrans,
        loss_rate=loss,
        bytes_sent=link.bytes_sent,
        bytes_received=link.bytes_received,
        messages_sent=link.messages_sent,
        messages_received=link.messages_received,
        relay_bytes_sent=link.relay_bytes_sent,
        direct_bytes_sent=link.direct_bytes_sent,
        established_at=link.established_at,
        last_activity=link.last_activity,
        upgraded=link.upgraded,
        local_candidate_type=local_type,
        remote_candidate_type=remote_type,
    )
