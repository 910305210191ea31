"""ConnectionMetrics: a snapshot of one peer link, read from real traffic counters.

RTT comes from the path in use: the SCTP association's smoothed RTT (or its last
heartbeat RTT before any data was acknowledged) for a direct link, the relay session's
Ping/Pong latency for a relayed one. Loss is the SCTP retransmission count; a relay
path runs over TCP, whose retransmissions we cannot see, so it reports None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._peer_connection import PeerConnection


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


def direct_path_quality(pc: PeerConnection) -> tuple[float | None, str | None, int | None, float | None]:
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
