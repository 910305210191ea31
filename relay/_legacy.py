"""Legacy sessions: clients of the original DarkSwap relay (docs/PROTOCOL.md section 10).

A session is *legacy* when its ``Register`` carries no ``protocol`` (accepted with
``--auth open`` only). The relay sends it what the original relay sent and accepts what
the original accepted, so that unmodified original clients keep working:

- its peer id is any id the codec accepts ("peer1"), not necessarily a libp2p PeerId;
- as the target of a circuit it is told with ``RelayRequest{from, to}`` then
  ``RelayResponse{relay_id, accepted: true, error: null}`` (a darkswap-relay/1 target
  gets one ``DataChannel`` carrying the circuit's limits instead);
- a ``DataChannel{peer_id, relay_id, channel}`` it sends is checked, then ignored;
- a ``RelayData`` it sends above ``max_data_frame`` is answered with an Error and
  dropped; the circuit stays (a darkswap-relay/1 sender, which was told the limit,
  has the circuit closed with ``protocol_error``).

A darkswap-relay/1 session is promised libp2p PeerIds only, so it and a legacy session
whose id is not one are kept apart (``incompatible_peer``), whoever addresses whom.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from darkswap_trio import PeerId
from darkswap_trio.proto.errors import PeerIdError
from darkswap_trio.proto.signaling import (
    CircuitLimits,
    DataChannel,
    Message,
    RelayData,
    RelayRequest,
    RelayResponse,
)

if TYPE_CHECKING:
    from ._session_handle import SessionHandle

INCOMPATIBLE_PEER = "incompatible_peer"


def is_libp2p_peer_id(peer_id: str) -> bool:
    """Whether ``peer_id`` is a libp2p PeerId (every darkswap-relay/1 id is one)."""
    try:
        PeerId.from_string(peer_id)
    except PeerIdError:
        return False
    return True


def incompatible(a: SessionHandle, b: SessionHandle) -> bool:
    """Whether ``a`` and ``b`` must be kept apart: one speaks darkswap-relay/1 and the
    other's id is not a PeerId (the /1 peer could not name it, nor check it)."""
    return (a.extended and not b.has_libp2p_id) or (b.extended and not a.has_libp2p_id)


def incompatible_reason(peer_id: str) -> str:
    return (
        f"peer {peer_id} cannot be reached: darkswap-relay/1 peers and legacy peers whose "
        "id is not a libp2p PeerId are kept apart"
    )


def circuit_announcement(
    target: SessionHandle, requester: str, relay_id: str, limits: CircuitLimits
) -> tuple[Message, ...]:
    """What tells ``target`` that ``requester`` opened circuit ``relay_id`` to it."""
    if target.extended:
        return (DataChannel(peer_id=requester, relay_id=relay_id, channel="relay", limits=limits),)
    # The original relay's sequence, field for field (no `to`, no limits).
    assert target.peer_id is not None
    return (
        RelayRequest(from_=requester, to=target.peer_id),
        RelayResponse(relay_id=relay_id, accepted=True, error=None),
    )


def data_channel_error(peer_id: str, ends: tuple[str, str] | None, msg: DataChannel) -> str | None:
    """What is wrong with a legacy client's ``DataChannel`` (None: nothing, and nothing to
    do): it must name a circuit of ``peer_id`` (whose ``ends`` are given, None if it is
    unknown) and one of that circuit's ends (the original accepted either end)."""
    if ends is None or peer_id not in ends or msg.peer_id not in ends:
        return f"no circuit {msg.relay_id} of yours with {msg.peer_id}"
    return None


def oversized_error(msg: RelayData, max_data_frame: int) -> str | None:
    """What is wrong with a legacy ``RelayData`` above ``max_data_frame`` (None: nothing):
    it is dropped with this Error and the circuit goes on (the original relay had no
    such limit, so its clients cannot know it; closing the circuit would punish them for
    that)."""
    if len(msg.data) <= max_data_frame:
        return None
    return f"RelayData of {len(msg.data)} bytes exceeds max_data_frame {max_data_frame}"
