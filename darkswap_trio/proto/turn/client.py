"""The TURN client core (RFC 8656): one UDP allocation on one server, sans-IO.

Input: :meth:`TurnClient.allocate`, :meth:`~TurnClient.send` (a datagram for a peer),
:meth:`~TurnClient.receive` (a datagram, or one deframed TCP message, from the
server), :meth:`~TurnClient.handle_timeout` and :meth:`~TurnClient.close`.
Output: :meth:`poll_transmit` (bytes for the server), :meth:`poll_event`
(:mod:`.client_events`) and :meth:`poll_timeout`. ``now`` is always passed in.

What it does for its user: the long-term credential dance (an unsigned Allocate,
401 with REALM and NONCE, then signed requests; 438 Stale Nonce retried with the
new nonce), Refresh before the allocation expires, a CreatePermission per peer IP
the first time something is sent to it (data waits for the answer, bounded), a
ChannelBind per peer once the permission is in (ChannelData then replaces Send
indications), permissions and channels refreshed while they are used, and Refresh
with LIFETIME 0 on :meth:`~TurnClient.close`.

Over TCP (``stream=True``) requests are not retransmitted and ChannelData is padded
to 4 bytes (RFC 8656 section 12.5); the driver deframes what it reads with
:class:`~.codec.StreamDeframer`.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import TurnParseError
from ..stun import StunTransaction
from .client_events import (
    Allocated,
    AllocationEnded,
    AllocationFailed,
    PeerData,
    PermissionFailed,
    TurnClientEvent,
)
from .codec import (
    ALLOCATE,
    CHANNEL_BIND,
    CREATE_PERMISSION,
    DATA,
    ERROR,
    INDICATION,
    MAX_CHANNEL,
    MIN_CHANNEL,
    REFRESH,
    REQUEST,
    SEND,
    SUCCESS,
    Attr,
    TurnMessage,
    encode_channel_data,
    encode_message,
    is_channel_data,
    long_term_key,
    pack_xor_address,
    parse_channel_data_untrusted,
    parse_turn_untrusted,
    uint32_attr,
    xor_address,
)

__all__ = ["TurnClient", "TurnClientSettings", "error_code_untrusted"]

PERMISSION_LIFETIME = 300.0  # RFC 8656 section 9
CHANNEL_LIFETIME = 600.0  # RFC 8656 section 12
REFRESH_MARGIN = 60.0  # refresh this long before something expires
MAX_QUEUED_PER_PEER = 16  # datagrams waiting for a permission
MAX_STALE_RETRIES = 3
STREAM_TIMEOUT = 39.5  # RFC 8489 section 6.2.2: Ti over a reliable transport
_UDP_TRANSPORT = uint32_attr(Attr.REQUESTED_TRANSPORT, 17 << 24)


@dataclass(frozen=True)
class TurnClientSettings:
    """One TURN server: its address (an IP literal), the long-term credentials, and
    whether the client reaches it over a stream (TCP or TLS) rather than UDP."""

    server: tuple[str, int]
    username: str
    password: str
    stream: bool = False
    lifetime: int = 600  # asked for; the server decides
    software: str | None = None

    def __post_init__(self) -> None:
        if not self.username or not self.password:
            raise ValueError("a TURN server needs a username and a credential")
        if not 0 < int(self.server[1]) < 65536:
            raise ValueError(f"TURN server port out of range: {self.server[1]}")


@dataclass
class _Request:
    method: int
    attrs: Callable[[bytes], list[tuple[int, bytes]]]  # transaction id -> attributes
    on_success: Callable[[TurnMessage, float], None]
    on_error: Callable[[int | None, float], None]  # None: timed out
    transaction: StunTransaction | None = None
    stale_retries: int = 0


@dataclass
class _Permission:
    installed: bool = False
    expires_at: float = 0.0
    used_at: float = 0.0
    refreshing: bool = False
    queued: deque[tuple[tuple[str, int], bytes]] = field(default_factory=deque)


@dataclass
class _Channel:
    number: int
    bound: bool = False
    expires_at: float = 0.0
    used_at: float = 0.0
    binding: bool = False


class TurnClient:
    """One allocation (see the module docstring). ``state`` is ``"new"``,
    ``"allocating"``, ``"allocated"``, ``"failed"`` or ``"closed"``."""

    def __init__(self, settings: TurnClientSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.server = settings.server
        self.state = "new"
        self.relayed: tuple[str, int] | None = None
        self.mapped: tuple[str, int] | None = None
        self.counters: dict[str, int] = {}
        self._rng = rng if rng is not None else random.SystemRandom()
        self._realm: str | None = None
        self._nonce: str | None = None
        self._key: bytes | None = None
        self._expires_at = 0.0
        self._lifetime = 0.0
        self._refreshing = False
        self._close_transaction: bytes | None = None
        self._requests: dict[bytes, _Request] = {}
        self._permissions: dict[str, _Permission] = {}
        self._channels: dict[tuple[str, int], _Channel] = {}
        self._channel_peers: dict[int, tuple[str, int]] = {}
        self._next_channel = MIN_CHANNEL
        self._transmits: deque[bytes] = deque()
        self._events: deque[TurnClientEvent] = deque()

    # -- output -----------------------------------------------------------------------

    def poll_transmit(self) -> bytes | None:
        """The next datagram (or stream message) for :attr:`server`, or None."""
        return self._transmits.popleft() if self._transmits else None

    def poll_event(self) -> TurnClientEvent | None:
        return self._events.popleft() if self._events else None

    def poll_timeout(self) -> float | None:
        deadlines = [r.transaction.poll_timeout() for r in self._requests.values() if r.transaction]
        if self.state == "allocated":
            deadlines.append(self._expires_at if self._refreshing else self._refresh_at())
            deadlines.extend(self._maintenance_deadlines())
        return min(deadlines, default=None)

    def has_permission(self, ip: str) -> bool:
        permission = self._permissions.get(ip)
        return permission is not None and permission.installed

    # -- input ------------------------------------------------------------------------

    def allocate(self, now: float) -> None:
        """Start the allocation; :class:`Allocated` or :class:`AllocationFailed` follows."""
        if self.state != "new":
            return
        self.state = "allocating"
        self._start(
            _Request(ALLOCATE, self._allocate_attrs, self._allocated, self._allocate_failed), now
        )

    def send(self, peer: tuple[str, int], data: bytes, now: float) -> bool:
        """Relay ``data`` to ``peer``: at once if its permission is installed (True),
        else after CreatePermission succeeds (False; a few datagrams wait)."""
        frame = self.wrap(peer, data, now)
        if frame is not None:
            self._transmits.append(frame)
            return True
        permission = self._permissions.get(peer[0])
        if permission is not None and not permission.installed:
            if len(permission.queued) >= MAX_QUEUED_PER_PEER:
                permission.queued.popleft()
                self._count("dropped_waiting_permission")
            permission.queued.append((peer, bytes(data)))
        return False

    def wrap(self, peer: tuple[str, int], data: bytes, now: float) -> bytes | None:
        """``data`` for ``peer`` framed for the server (ChannelData once a channel is
        bound, else a Send indication), or None while the peer's permission is not
        installed (CreatePermission is started then; nothing is queued)."""
        if self.state != "allocated":
            self._count("dropped_not_allocated")
            return None
        permission = self._permission(peer[0], now)
        if not permission.installed:
            return None
        permission.used_at = now
        channel = self._channels.get(peer)
        if channel is None:
            channel = self._bind_channel(peer, now)
        if channel is not None:
            channel.used_at = now
            if channel.bound:
                return encode_channel_data(channel.number, data, stream=self.settings.stream)
        tid = self._transaction_id()
        attrs = [(Attr.XOR_PEER_ADDRESS, pack_xor_address(peer, tid)), (Attr.DATA, bytes(data))]
        return encode_message(SEND, INDICATION, tid, attrs, fingerprint=False)

    def permit(self, ip: str, now: float) -> None:
        """Install a permission for ``ip`` ahead of any data (to receive from it)."""
        if self.state == "allocated":
            self._permission(ip, now).used_at = now

    def receive(self, data: bytes, now: float) -> bool:
        """One datagram from the server; False if it is not TURN for this client (a
        STUN answer to someone else's transaction, say), True if it was taken."""
        if is_channel_data(data):
            try:
                number, payload = parse_channel_data_untrusted(
                    data, stream=self.settings.stream, max_channel=MAX_CHANNEL
                )
            except TurnParseError:
                self._count("dropped_malformed")
                return True
            peer = self._channel_peers.get(number)
            if peer is None:
                self._count("dropped_unknown_channel")
            else:
                self._touch(peer, now)
                self._events.append(PeerData(peer, payload))
            return True
        try:
            message = parse_turn_untrusted(data)
        except TurnParseError:
            return False
        if message.cls == INDICATION and message.method == DATA:
            self._data_indication(message, now)
            return True
        request = self._requests.get(message.transaction_id)
        if request is None or message.cls not in (SUCCESS, ERROR):
            return message.transaction_id == self._close_transaction
        self._response(request, message, now)
        return True

    def handle_timeout(self, now: float) -> None:
        for tid, request in list(self._requests.items()):
            transaction = request.transaction
            if transaction is None or transaction.poll_timeout() > now:
                continue
            outcome = transaction.handle_timeout(now)
            if outcome.retransmit:
                self._transmits.append(transaction.data)
            elif outcome.timed_out:
                del self._requests[tid]
                request.on_error(None, now)
        if self.state != "allocated":
            return
        if self._expires_at <= now:
            self._end("the allocation expired")
            return
        if not self._refreshing and self._refresh_at() <= now:
            self._refresh(now)
        self._maintain(now)

    def close(self, now: float) -> None:
        """Free the allocation (Refresh with LIFETIME 0, sent once, not awaited). One
        still being made is freed as soon as the server grants it."""
        allocating = self.state == "allocating"
        if self.state == "allocated":
            self._free()
        self.state = "closed"
        if not allocating:
            self._requests.clear()

    def _free(self) -> None:
        if self._key is not None:
            tid = self._close_transaction = self._transaction_id()
            self._transmits.append(self._encode(REFRESH, tid, [uint32_attr(Attr.LIFETIME, 0)]))

    # -- requests -----------------------------------------------------------------------

    def _start(self, request: _Request, now: float) -> None:
        tid = self._transaction_id()
        data = self._encode(request.method, tid, request.attrs(tid))
        if self.settings.stream:
            transaction = StunTransaction(
                data, now, rto=STREAM_TIMEOUT, max_requests=1, last_wait_factor=1
            )
        else:
            transaction = StunTransaction(data, now)
        request.transaction = transaction
        self._requests[tid] = request
        self._transmits.append(data)

    def _encode(self, method: int, tid: bytes, attrs: list[tuple[int, bytes]]) -> bytes:
        software = self.settings.software
        if software:
            attrs = [*attrs, (Attr.SOFTWARE, software.encode())]
        if self._key is None or self._nonce is None or self._realm is None:
            return encode_message(method, REQUEST, tid, attrs)
        attrs = [
            *attrs,
            (Attr.USERNAME, self.settings.username.encode()),
            (Attr.REALM, self._realm.encode()),
            (Attr.NONCE, self._nonce.encode()),
        ]
        return encode_message(method, REQUEST, tid, attrs, integrity_key=self._key)

    def _response(self, request: _Request, message: TurnMessage, now: float) -> None:
        try:
            code = error_code_untrusted(message) if message.cls == ERROR else None
            if code in (401, 438):
                if self._challenged(request, message, code):
                    del self._requests[message.transaction_id]
                    request.stale_retries += 1
                    self._start(request, now)
                    return
            elif self._key is not None and not message.check_integrity(self._key):
                self._count("dropped_bad_integrity")  # not from the server: keep waiting
                return
        except TurnParseError:
            self._count("dropped_malformed")
            return
        del self._requests[message.transaction_id]
        if message.cls == SUCCESS:
            try:
                request.on_success(message, now)
            except TurnParseError:
                self._count("dropped_malformed")
                request.on_error(400, now)
        else:
            request.on_error(code, now)

    def _challenged(self, request: _Request, message: TurnMessage, code: int) -> bool:
        """Learn REALM/NONCE from a 401 or 438; True if the request is worth repeating."""
        nonce = message.text(Attr.NONCE)
        realm = message.text(Attr.REALM)
        if nonce is None or request.stale_retries >= MAX_STALE_RETRIES:
            return False
        if code == 401 and self._key is not None and realm in (None, self._realm):
            return False  # our signed request was refused: the credentials are wrong
        if realm is not None:
            self._realm = realm
        if self._realm is None:
            return False
        self._nonce = nonce
        self._key = long_term_key(self.settings.username, self._realm, self.settings.password)
        return True

    # -- allocation ---------------------------------------------------------------------

    def _allocate_attrs(self, tid: bytes) -> list[tuple[int, bytes]]:
        return [_UDP_TRANSPORT, uint32_attr(Attr.LIFETIME, self.settings.lifetime)]

    def _allocated(self, message: TurnMessage, now: float) -> None:
        relayed = message.first(Attr.XOR_RELAYED_ADDRESS)
        mapped = message.first(Attr.XOR_MAPPED_ADDRESS)
        if relayed is None:
            raise TurnParseError("Allocate success without XOR-RELAYED-ADDRESS")
        if self.state == "closed":  # closed while the Allocate was on its way
            self._free()
            return
        self.relayed = xor_address(relayed, message.transaction_id)
        self.mapped = None if mapped is None else xor_address(mapped, message.transaction_id)
        self._set_lifetime(message, now)
        self.state = "allocated"
        self._events.append(Allocated(self.relayed, self.mapped, self._lifetime))

    def _allocate_failed(self, code: int | None, now: float) -> None:
        if self.state != "allocating":
            return
        self.state = "failed"
        reason = "no answer from the TURN server" if code is None else f"error {code}"
        self._events.append(AllocationFailed(reason, code))

    def _set_lifetime(self, message: TurnMessage, now: float) -> None:
        lifetime = message.uint32(Attr.LIFETIME)
        self._lifetime = float(self.settings.lifetime if lifetime is None else lifetime)
        self._expires_at = now + self._lifetime

    def _refresh_at(self) -> float:
        margin = min(REFRESH_MARGIN, self._lifetime / 2)
        return self._expires_at - margin

    def _refresh(self, now: float) -> None:
        self._refreshing = True
        lifetime = uint32_attr(Attr.LIFETIME, self.settings.lifetime)
        self._start(
            _Request(REFRESH, lambda tid: [lifetime], self._refreshed, self._refresh_failed), now
        )

    def _refreshed(self, message: TurnMessage, now: float) -> None:
        self._refreshing = False
        if self.state == "allocated":
            self._set_lifetime(message, now)

    def _refresh_failed(self, code: int | None, now: float) -> None:
        self._refreshing = False
        if code is not None and self.state == "allocated":  # 437: the server forgot us
            self._end(f"Refresh refused with error {code}")
        # A lost Refresh is tried again at the next deadline, until the expiry.

    def _end(self, reason: str) -> None:
        self.state = "failed"
        self._requests.clear()
        self._events.append(AllocationEnded(reason))

    # -- permissions and channels --------------------------------------------------------

    def _permission(self, ip: str, now: float) -> _Permission:
        permission = self._permissions.get(ip)
        if permission is None:
            permission = self._permissions[ip] = _Permission(used_at=now)
            self._create_permission(ip, permission, now)
        return permission

    def _create_permission(self, ip: str, permission: _Permission, now: float) -> None:
        permission.refreshing = True

        def attrs(tid: bytes) -> list[tuple[int, bytes]]:
            return [(Attr.XOR_PEER_ADDRESS, pack_xor_address((ip, 0), tid))]

        def done(message: TurnMessage, now: float) -> None:
            permission.installed, permission.refreshing = True, False
            permission.expires_at = now + PERMISSION_LIFETIME
            while permission.queued and self.state == "allocated":
                peer, data = permission.queued.popleft()
                frame = self.wrap(peer, data, now)
                if frame is not None:
                    self._transmits.append(frame)

        def failed(code: int | None, now: float) -> None:
            permission.refreshing = False
            if permission.installed and code is None and permission.expires_at > now:
                return  # a lost refresh: tried again at the next deadline
            self._permissions.pop(ip, None)
            self._count("permissions_failed")
            self._events.append(PermissionFailed(ip, code))

        self._start(_Request(CREATE_PERMISSION, attrs, done, failed), now)

    def _bind_channel(self, peer: tuple[str, int], now: float) -> _Channel | None:
        if self._next_channel > MAX_CHANNEL:
            return None  # out of numbers: Send indications it is
        channel = self._channels[peer] = _Channel(self._next_channel, used_at=now)
        self._next_channel += 1
        self._start_bind(peer, channel, now)
        return channel

    def _start_bind(self, peer: tuple[str, int], channel: _Channel, now: float) -> None:
        channel.binding = True
        # The server may use the channel before its answer reaches us (or if it is lost).
        self._channel_peers[channel.number] = peer

        def attrs(tid: bytes) -> list[tuple[int, bytes]]:
            return [
                (Attr.CHANNEL_NUMBER, struct.pack("!HH", channel.number, 0)),
                (Attr.XOR_PEER_ADDRESS, pack_xor_address(peer, tid)),
            ]

        def done(message: TurnMessage, now: float) -> None:
            channel.bound, channel.binding = True, False
            channel.expires_at = now + CHANNEL_LIFETIME
            self._channel_peers[channel.number] = peer
            permission = self._permissions.get(peer[0])
            if permission is not None:  # ChannelBind refreshes the permission too
                permission.expires_at = now + PERMISSION_LIFETIME

        def failed(code: int | None, now: float) -> None:
            channel.binding = False
            if code is not None or channel.expires_at <= now:
                channel.bound = False  # Send indications from now on; the number stays used
                self._channel_peers.pop(channel.number, None)

        self._start(_Request(CHANNEL_BIND, attrs, done, failed), now)

    def _maintenance_deadlines(self) -> list[float]:
        """When each permission or channel is refreshed (used in its last lifetime)
        or forgotten (not used)."""
        deadlines = []
        for permission in self._permissions.values():
            if permission.installed and not permission.refreshing:
                deadlines.append(_due(permission, PERMISSION_LIFETIME))
        for channel in self._channels.values():
            if channel.bound and not channel.binding:
                deadlines.append(_due(channel, CHANNEL_LIFETIME))
        return deadlines

    def _maintain(self, now: float) -> None:
        """Refresh what was used in its last lifetime; forget the rest when it lapses."""
        for peer, channel in list(self._channels.items()):
            if not channel.bound or channel.binding or _due(channel, CHANNEL_LIFETIME) > now:
                continue
            if channel.expires_at > now:
                self._start_bind(peer, channel, now)
            else:
                channel.bound = False
                self._channel_peers.pop(channel.number, None)
        for ip, permission in list(self._permissions.items()):
            if not permission.installed or permission.refreshing:
                continue
            if _due(permission, PERMISSION_LIFETIME) > now:
                continue
            if permission.expires_at > now:
                self._create_permission(ip, permission, now)
            else:
                del self._permissions[ip]

    def _touch(self, peer: tuple[str, int], now: float) -> None:
        permission = self._permissions.get(peer[0])
        if permission is not None:
            permission.used_at = now
        channel = self._channels.get(peer)
        if channel is not None:
            channel.used_at = now

    def _data_indication(self, message: TurnMessage, now: float) -> None:
        data = message.first(Attr.DATA)
        raw_peer = message.first(Attr.XOR_PEER_ADDRESS)
        if data is None or raw_peer is None:
            self._count("dropped_malformed")
            return
        try:
            peer = xor_address(raw_peer, message.transaction_id)
        except TurnParseError:
            self._count("dropped_malformed")
            return
        self._touch(peer, now)
        self._events.append(PeerData(peer, data))

    # -- helpers ------------------------------------------------------------------------

    def _transaction_id(self) -> bytes:
        return self._rng.getrandbits(96).to_bytes(12, "big")

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


def _due(item: _Permission | _Channel, lifetime: float) -> float:
    """Refresh time if ``item`` was used in its current lifetime, else its expiry."""
    if item.used_at > item.expires_at - lifetime:
        return item.expires_at - REFRESH_MARGIN
    return item.expires_at


def error_code_untrusted(message: TurnMessage) -> int:
    """The code of an ERROR-CODE attribute (RFC 8489 section 14.8).

    Raises:
        TurnParseError: missing or malformed.
    """
    value = message.first(Attr.ERROR_CODE)
    if value is None or len(value) < 4:
        raise TurnParseError("error response without a valid ERROR-CODE")
    code = (value[2] & 0x07) * 100 + value[3]
    if not 300 <= code <= 699:
        raise TurnParseError(f"ERROR-CODE {code} out of range")
    return code
