"""Break a link's direct path for real, for tests of links that survive."""

from __future__ import annotations

from .._p2p._peer_link import PeerLink
from ..webrtc._turn_streams import TurnStreamSocket
from ..webrtc._udp_offload import UdpBatchSocket

# The discard port on loopback: a connected UDP socket only accepts datagrams from its
# peer address, so connecting it here makes the kernel drop everything else.
_NOWHERE = ("127.0.0.1", 9)


def blackhole_direct_path(link: PeerLink) -> None:
    """Silently drop every datagram the link's direct PeerConnection would receive.

    The UDP socket of the direct path is ``connect()``-ed to an address nobody sends
    from, so the kernel discards the peer's datagrams before they reach it (and what
    we send is dropped the same way on a far side that was blackholed too). Nothing
    is closed or told: the path goes silent, as when a NAT mapping or a route dies,
    and only the link's own liveness checks (or ICE consent) can notice.
    Raises RuntimeError if the link has no direct path.
    """
    direct = link.direct
    if direct is None:
        raise RuntimeError(f"{link!r} has no direct path to blackhole")
    sock = direct.peer_connection._driver.sock
    udp = sock.datagram_socket if isinstance(sock, TurnStreamSocket) else sock
    if not isinstance(udp, UdpBatchSocket):
        raise RuntimeError(f"{link!r} runs on a simulated socket: nothing to blackhole")
    udp.sock.connect(_NOWHERE)
