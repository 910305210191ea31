"""What a registered session's frames do (docs/PROTOCOL.md sections 3-5).

:func:`route_message` handles a JSON message, :func:`route_binary` a binary DATA/CREDIT
frame, both from a registered session (a :class:`RoutedSession`, implemented by
:class:`~relay._session.SignalingSession`): signaling is forwarded to its addressee,
circuit requests, data, credit and closes go to the :class:`~relay._router.RelayRouter`
through its methods. Legacy sessions' differences are in :mod:`relay._legacy`. Like the
session's other handlers these are synchronous and return a coroutine for what may block
(a legacy sender waiting for credit, bandwidth pacing), which the session awaits outside
its read deadline.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import trio

from darkswap_trio.proto.errors import SignalingParseError
from darkswap_trio.proto.signaling import (
    DATA_HEADER_LENGTH,
    FRAME_DATA,
    Answer,
    Authenticate,
    CircuitCredit,
    CloseRelay,
    DataChannel,
    IceCandidate,
    Message,
    Offer,
    RefreshToken,
    Register,
    RelayData,
    RelayRequest,
    TopicPeers,
    TopicRegister,
    TurnCredentialsRequest,
    decode_binary_untrusted,
    message_type,
)

from . import _legacy
from ._rendezvous import TopicLimit
from ._router import RelayRouter, parse_relay_id, relay_id_text
from ._session_handle import SessionHandle

if TYPE_CHECKING:
    from ._cluster_port import SharedRendezvous

Blocking = Coroutine[Any, Any, None] | None
_FORWARDED = (Offer, Answer, IceCandidate)


class RoutedSession(SessionHandle, Protocol):
    """What routing needs of the session whose frame it handles."""

    @property
    def registered(self) -> bool: ...

    def send_error(self, code: str, message: str, ref: str | None = None) -> None: ...

    def refresh_token(self, token: str) -> None: ...

    async def wait_for_credit(self) -> None:
        """Until credit arrives for this peer or one of its circuits closes."""


def route_message(
    router: RelayRouter, session: RoutedSession, msg: Message, now: float
) -> Blocking:
    """A JSON message from a registered session (Ping/Pong are answered before)."""
    me = session.peer_id
    assert me is not None
    sender = getattr(msg, "from_", me)
    if sender != me:
        session.send_error("spoofed_from", f"'from' must be your peer id {me}", sender[:128])
        return None
    if isinstance(msg, _FORWARDED):
        target = router.lookup(msg.to)
        if target is None and router.cluster is not None:
            router.cluster.forward(session, msg)  # a peer of another node, or nobody's
            return None
        if target is None:
            session.send_error("unknown_peer", f"peer {msg.to} is not connected", msg.to)
        elif _legacy.incompatible(session, target):
            session.send_error(
                _legacy.INCOMPATIBLE_PEER, _legacy.incompatible_reason(msg.to), msg.to
            )
        else:
            target.send_control(msg)
    elif isinstance(msg, RelayRequest):
        router.request_circuit(me, msg.to)
    elif isinstance(msg, RelayData):
        relay_id = parse_relay_id(msg.relay_id)
        if relay_id is None or not router.has_circuit(relay_id, me):
            session.send_error("unknown_circuit", "no such circuit", msg.relay_id)
            return None
        if not session.extended:
            error = _legacy.oversized_error(msg, router.circuit_limits().max_data_frame)
            if error is not None:
                session.send_error("frame_too_large", error, msg.relay_id)
                return None
        return circuit_data(
            router, session, relay_id, msg.data, now, wait_for_credit=not session.extended
        )
    elif isinstance(msg, CloseRelay):
        relay_id = parse_relay_id(msg.relay_id)
        if relay_id is None or not router.close_circuit(relay_id, me):
            session.send_error("unknown_circuit", "no such circuit", msg.relay_id)
            return None
    elif isinstance(msg, RefreshToken):
        session.refresh_token(msg.token)
    elif isinstance(msg, TopicRegister):
        if router.cluster is not None:  # the rendezvous is the cluster's (Redis)
            return _topic_register_shared(router, router.cluster.topics, session, msg)
        _topic_register(router, session, msg, now)
    elif isinstance(msg, TurnCredentialsRequest):
        _turn_credentials(router, session, me)
    elif isinstance(msg, DataChannel) and not session.extended:
        relay_id = parse_relay_id(msg.relay_id)
        ends = router.circuit_ends(relay_id) if relay_id is not None else None
        error = _legacy.data_channel_error(me, ends, msg)
        if error is not None:
            session.send_error("unknown_circuit", error, msg.relay_id)
    elif isinstance(msg, (Register, Authenticate)):
        session.send_error("already_registered", "this session is already registered")
    else:
        session.send_error("bad_frame", f"{message_type(msg)} is not a client message")
    return None


def route_binary(router: RelayRouter, session: RoutedSession, frame: bytes, now: float) -> Blocking:
    """A binary frame (PROTOCOL.md 5.1): only registered darkswap-relay/1 sessions send them."""
    if not session.registered:
        session.send_error("not_registered", "binary frame before registration")
        return None
    if not session.extended:
        session.send_error("bad_frame", "binary frames need darkswap-relay/1")
        return None
    if len(frame) >= DATA_HEADER_LENGTH and frame[0] == FRAME_DATA:
        # DATA is forwarded as received (the frame is the same on both sides of the
        # relay): the header is checked here and the payload never copied.
        return circuit_data(
            router, session, frame[1:DATA_HEADER_LENGTH], memoryview(frame)[DATA_HEADER_LENGTH:], now,
            wait_for_credit=False, frame=frame,
        )  # fmt: skip
    try:
        parsed = decode_binary_untrusted(frame)
    except SignalingParseError as exc:
        session.send_error(exc.code, str(exc))
        return None
    assert session.peer_id is not None and isinstance(parsed, CircuitCredit)
    if not router.credit(parsed.relay_id, session.peer_id, parsed.increment, now):
        session.send_error("unknown_circuit", "no such circuit", relay_id_text(parsed.relay_id))
    return None


def circuit_data(
    router: RelayRouter,
    session: RoutedSession,
    relay_id: bytes,
    payload: bytes | memoryview,
    now: float,
    *,
    wait_for_credit: bool,
    frame: bytes | None = None,
) -> Blocking:
    """Deliver ``payload`` now, or return the wait for credit / bandwidth that must come
    first (``frame``: the sender's DATA frame, forwarded as is)."""
    me = session.peer_id
    assert me is not None
    size = len(payload)
    limits = router.circuit_limits()  # every circuit has the router's window and bandwidth
    # A legacy sender knows nothing of credit: stop reading until it returns.
    need = min(size, limits.max_data_frame) if wait_for_credit else 0
    balance = router.credit_balance(relay_id, me) if need else None
    if (balance is not None and balance < need) or (
        limits.bandwidth and router.send_delay(relay_id, me, size, now) > 0
    ):
        return _deliver_later(router, session, relay_id, payload, need, frame)
    if not router.deliver(me, relay_id, payload, now, frame):
        session.send_error("unknown_circuit", "no such circuit", relay_id_text(relay_id))
    return None


async def _deliver_later(
    router: RelayRouter,
    session: RoutedSession,
    relay_id: bytes,
    payload: bytes | memoryview,
    need: int,
    frame: bytes | None,
) -> None:
    """Deliver once ``need`` credit is there (legacy senders) and the bandwidth limit
    allows; the held payload counts in ``buffered_bytes`` meanwhile. The session does not
    read while this runs (that is the backpressure)."""
    me = session.peer_id
    assert me is not None
    size = len(payload)
    buffered = router.buffered
    buffered.value += size
    try:
        while (balance := router.credit_balance(relay_id, me)) is not None and balance < need:
            await session.wait_for_credit()
        now = trio.current_time()
        delay = router.send_delay(relay_id, me, size, now)
        if delay > 0:
            # Bandwidth limit: pace this sender (stop reading it) instead of dropping.
            router.metrics.limit_hit("circuit_bandwidth")
            await trio.sleep(delay)
            now = trio.current_time()
    finally:
        buffered.value -= size
    if not router.deliver(me, relay_id, payload, now, frame):
        session.send_error("unknown_circuit", "no such circuit", relay_id_text(relay_id))


def _topic_register(
    router: RelayRouter, session: RoutedSession, msg: TopicRegister, now: float
) -> None:
    """Topic rendezvous (docs/PROTOCOL.md 14.6): register, answer with a sample of peers."""
    me = session.peer_id
    assert me is not None
    if msg.leave:
        router.unregister_topic(me, msg.topic)
        return
    try:
        peers = router.register_topic(me, msg.topic, now)
    except TopicLimit as exc:
        session.send_error(exc.code, str(exc), msg.topic[:128])
        return
    session.send_control(TopicPeers(msg.topic, tuple(peers)))


async def _topic_register_shared(
    router: RelayRouter, shared: SharedRendezvous, session: RoutedSession, msg: TopicRegister
) -> None:
    """The same in a cluster (PROTOCOL.md 14.6, 16.5): the registration lives in Redis,
    so the sample names peers of every node. A local copy answers while Redis cannot:
    then the sample names only this node's peers, and the bounds are this node's."""
    me = session.peer_id
    assert me is not None
    if msg.leave:
        router.unregister_topic(me, msg.topic)
        await shared.unregister(me, msg.topic)
        return
    try:
        peers = await shared.register(me, msg.topic)
    except TopicLimit as exc:
        router.metrics.limit_hit(exc.limit)
        session.send_error(exc.code, str(exc), msg.topic[:128])
        return
    if router.lookup(me) is not session:
        return  # the session ended meanwhile: its drop follows the registration in Redis
    if peers is None:  # Redis did not answer in time
        _topic_register(router, session, msg, trio.current_time())
        return
    router.register_topic(me, msg.topic, trio.current_time(), bounded=False)
    session.send_control(TopicPeers(msg.topic, tuple(peers)))


def _turn_credentials(router: RelayRouter, session: RoutedSession, me: str) -> None:
    """TurnCredentialsRequest (PROTOCOL.md 13.6): only to peers that proved their id."""
    issuer = router.turn_issuer
    if issuer is None:
        session.send_error("turn_disabled", "this relay does not serve TURN")
        return
    if not session.extended or router.config.auth.mode == "open":
        session.send_error("turn_refused", "TURN credentials need a proven peer id")
        return
    credentials = issuer.issue(me)
    if credentials is None:
        session.send_error("turn_refused", "this peer id cannot name TURN credentials")
        return
    session.send_control(credentials)
