"""The TURN server core (RFC 8656, UDP relaying): sans-IO, deterministic, no clock.

Input: :meth:`TurnServer.receive` (a datagram, or one message deframed from a TCP
stream, from a client), :meth:`~TurnServer.receive_from_peer` (a datagram that
arrived on an allocation's relayed socket), :meth:`~TurnServer.allocation_bound` /
``allocation_failed`` (the driver's answer to :class:`AllocationRequested`),
:meth:`~TurnServer.client_closed` and :meth:`~TurnServer.handle_timeout`.
Output: :meth:`poll_transmit` (:class:`ToClient` / :class:`ToPeer`),
:meth:`poll_event` and :meth:`poll_timeout`.

Authentication is the long-term mechanism (RFC 8489 section 9.2) with TURN REST API
credentials (:mod:`.auth`). Every peer address is checked by :class:`PeerPolicy` when
a permission or channel is installed and again on every relayed datagram, except the
relayed addresses of this server's own allocations: two relay-only peers of one server
reach each other, in process (no :class:`ToPeer`), and nothing else on ``relay_ip``.
"""

from __future__ import annotations

import heapq
import math
import os
import struct
from collections import Counter, deque

from ..errors import TurnParseError
from .allocation import Allocation, BandwidthBucket, ChannelRefusal
from .auth import AuthRefusal, LongTermAuth, NonceIssuer
from .codec import (
    ALLOCATE,
    CHANNEL_BIND,
    CREATE_PERMISSION,
    ERROR,
    INDICATION,
    MAX_CHANNEL,
    MAX_CHANNEL_RFC5766,
    MIN_CHANNEL,
    REASONS,
    REFRESH,
    REQUEST,
    SEND,
    SUCCESS,
    Attr,
    TurnMessage,
    encode_channel_data,
    encode_data_indication,
    encode_message,
    error_attrs,
    is_channel_data,
    pack_xor_address,
    parse_channel_data_untrusted,
    parse_turn_untrusted,
    uint32_attr,
    unknown_attributes_attr,
)
from .events import (
    AllocationClosed,
    AllocationRequested,
    ClientKey,
    LimitHit,
    ToClient,
    ToPeer,
    TurnServerSettings,
    TurnStatistics,
)
from .policy import PeerPolicy, canonical_peer_ip

__all__ = ["TurnServer", "TurnStatistics"]

_UDP = 17
_Event = AllocationRequested | AllocationClosed | LimitHit


class _Responded(Exception):
    """Internal: the request has been answered (with an error); stop processing it."""


class TurnServer:
    """All allocations of one TURN server; see the module docstring for the surface.

    ``unix_offset`` maps the driver's clock to unix time (``time.time() - now`` at
    start): REST API usernames carry a unix expiry, but the core never reads a clock.
    ``counters`` counts responses (``response_<code>``), drops (``drop_<reason>``) and
    relayed bytes (``bytes_to_peer`` / ``bytes_to_client``) for the driver's metrics.
    """

    def __init__(
        self, settings: TurnServerSettings, *, unix_offset: float, nonce_key: bytes | None = None
    ) -> None:
        self.settings = settings
        self._unix_offset = unix_offset
        nonces = NonceIssuer(nonce_key or os.urandom(32), settings.nonce_lifetime)
        self._auth = LongTermAuth(settings.realm, settings.secret, nonces)
        self._policy = PeerPolicy(
            (*settings.own_addresses, settings.relay_ip),
            allow_loopback=settings.allow_loopback_peers,
        )
        self._max_channel = MAX_CHANNEL_RFC5766 if settings.rfc5766_channels else MAX_CHANNEL
        self._allocations: dict[int, Allocation] = {}
        self._by_client: dict[ClientKey, Allocation] = {}
        self._by_relayed: dict[tuple[str, int], Allocation] = {}
        self._per_user: Counter[str] = Counter()
        self._per_ip: Counter[str] = Counter()
        self._timers: list[tuple[float, int]] = []
        self._timer_at: dict[int, float] = {}
        self._transmits: deque[ToClient | ToPeer] = deque()
        self._events: deque[_Event] = deque()
        self._next_id = 1
        self._indications = 0
        self.counters: Counter[str] = Counter()

    # -- output -------------------------------------------------------------------

    def poll_transmit(self) -> ToClient | ToPeer | None:
        return self._transmits.popleft() if self._transmits else None

    def poll_event(self) -> _Event | None:
        return self._events.popleft() if self._events else None

    def poll_timeout(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def statistics(self) -> TurnStatistics:
        allocations = self._allocations.values()
        return TurnStatistics(
            allocations=len(self._allocations),
            permissions=sum(len(a.permissions) for a in allocations),
            channels=sum(len(a.channels) for a in allocations),
        )

    def allocation(self, allocation_id: int) -> Allocation | None:
        return self._allocations.get(allocation_id)

    def has_allocation(self, client: ClientKey) -> bool:
        return client in self._by_client

    # -- input from clients ---------------------------------------------------------

    def receive(self, client: ClientKey, data: bytes, now: float) -> None:
        """One UDP datagram, or one deframed TCP message, from ``client``."""
        if is_channel_data(data):
            self._channel_data(client, data, now)
            return
        try:
            message = parse_turn_untrusted(data)
        except TurnParseError:
            self.counters["drop_malformed"] += 1
            return
        if message.cls == INDICATION and message.method == SEND:
            self._send_indication(client, message, now)
        elif message.cls == REQUEST and message.method in (
            ALLOCATE,
            REFRESH,
            CREATE_PERMISSION,
            CHANNEL_BIND,
        ):
            try:
                self._request(client, message, now)
            except _Responded:
                pass
            except TurnParseError:
                self._error(client, message, 400, None)
        else:
            self.counters["drop_unexpected"] += 1

    def client_closed(self, client: ClientKey, now: float) -> None:
        """The client's TCP connection closed: its allocation goes with it (RFC 8656 section 3.1)."""
        allocation = self._by_client.get(client)
        if allocation is not None:
            self._close(allocation, "client_closed")

    # -- input from the driver about relayed sockets -------------------------------

    def allocation_bound(self, allocation_id: int, relayed: tuple[str, int], now: float) -> bool:
        """The relayed socket of ``allocation_id`` is bound to ``relayed``: answer the
        Allocate. False if the allocation is gone meanwhile (close the socket)."""
        allocation = self._allocations.get(allocation_id)
        if allocation is None or allocation.relayed is not None:
            return False
        allocation.relayed = relayed
        self._by_relayed[relayed] = allocation
        client = allocation.client
        tid = allocation.allocate_transaction
        lifetime = max(0, math.ceil(allocation.expires_at - now))
        mapped = (str(canonical_peer_ip(client[1][0])), client[1][1])
        response = encode_message(
            ALLOCATE,
            SUCCESS,
            tid,
            [
                (Attr.XOR_RELAYED_ADDRESS, pack_xor_address(relayed, tid)),
                uint32_attr(Attr.LIFETIME, lifetime),
                (Attr.XOR_MAPPED_ADDRESS, pack_xor_address(mapped, tid)),
                *self._software(),
            ],
            integrity_key=allocation.key,
        )
        allocation.allocate_response = response
        self._count_response(0)
        self._transmits.append(ToClient(client, response))
        self._schedule(allocation)
        return True

    def allocation_failed(self, allocation_id: int, now: float) -> None:
        """No relayed socket could be bound: answer 508 and forget the allocation."""
        allocation = self._allocations.get(allocation_id)
        if allocation is None or allocation.relayed is not None:
            return
        response = encode_message(
            ALLOCATE,
            ERROR,
            allocation.allocate_transaction,
            error_attrs(508, REASONS[508]),
            integrity_key=allocation.key,
        )
        self._count_response(508)
        self._transmits.append(ToClient(allocation.client, response))
        self._forget(allocation)

    def receive_from_peer(
        self, allocation_id: int, peer: tuple[str, int], data: bytes, now: float
    ) -> None:
        """A datagram from ``peer`` on the relayed socket of ``allocation_id``."""
        allocation = self._allocations.get(allocation_id)
        if allocation is None:
            return
        if ":" in peer[0]:  # an IPv4 socket reports IPv4; be safe with other forms
            peer = (str(canonical_peer_ip(peer[0])), peer[1])
        if not allocation.permitted(peer[0], now):
            self.counters["drop_no_permission"] += 1  # RFC 8656 section 11.5: silently
            return
        if not allocation.bucket.try_take(len(data), now):
            self._bandwidth_exceeded()
            return
        client = allocation.client
        stream = client[0] != "udp"
        number = allocation.peer_channel(peer, now)
        if number is not None:
            frame = encode_channel_data(number, data, stream=stream)
        else:
            self._indications += 1
            tid = struct.pack("!4sQ", b"dsTD", self._indications)
            frame = encode_data_indication(tid, peer, data)
        self.counters["bytes_to_client"] += len(data)
        self._transmits.append(ToClient(client, frame, payload=len(data)))

    def handle_timeout(self, now: float) -> None:
        """Expire allocations, permissions and channel bindings due by ``now``."""
        while self._timers and self._timers[0][0] <= now:
            deadline, allocation_id = heapq.heappop(self._timers)
            allocation = self._allocations.get(allocation_id)
            if allocation is None or self._timer_at.get(allocation_id) != deadline:
                continue
            del self._timer_at[allocation_id]
            if allocation.expires_at <= now:
                self._close(allocation, "expired")
                continue
            allocation.expire(now)
            self._schedule(allocation)

    # -- requests -------------------------------------------------------------------

    def _request(self, client: ClientKey, message: TurnMessage, now: float) -> None:
        unknown = message.unknown_required()
        if unknown:
            self._error(client, message, 420, None, [unknown_attributes_attr(unknown)])
        username, key = self._authenticate(client, message, now)
        allocation = self._by_client.get(client)
        if message.method == ALLOCATE:
            self._allocate(client, message, allocation, username, key, now)
            return
        if allocation is None or allocation.relayed is None:
            self._error(client, message, 437, key)
        assert allocation is not None
        if username != allocation.username:
            self._error(client, message, 441, key)
        if message.method == REFRESH:
            self._refresh(allocation, message, now)
        elif message.method == CREATE_PERMISSION:
            self._create_permission(allocation, message, now)
        else:
            self._channel_bind(allocation, message, now)

    def _authenticate(
        self, client: ClientKey, message: TurnMessage, now: float
    ) -> tuple[str, bytes]:
        """``(username, key)``, or answer 400 / 401 / 438 and raise _Responded."""
        ip = _client_ip(client)
        result = self._auth.verify(message, ip, now, now + self._unix_offset)
        if isinstance(result, AuthRefusal):
            if result.counter is not None:
                self.counters[result.counter] += 1
            challenge = self._auth.challenge(ip, now) if result.code != 400 else []
            self._error(client, message, result.code, None, challenge)
        assert not isinstance(result, AuthRefusal)
        return result

    def _allocate(
        self,
        client: ClientKey,
        message: TurnMessage,
        existing: Allocation | None,
        username: str,
        key: bytes,
        now: float,
    ) -> None:
        s = self.settings
        if existing is not None:
            if existing.allocate_transaction == message.transaction_id:
                if existing.allocate_response is not None:  # a retransmission
                    self._transmits.append(ToClient(client, existing.allocate_response))
                return
            self._error(client, message, 437, key)
        transport = message.uint32(Attr.REQUESTED_TRANSPORT)
        if transport is None:
            self._error(client, message, 400, key)
        assert transport is not None
        if transport >> 24 != _UDP:
            self._error(client, message, 442, key)
        family = message.first(Attr.REQUESTED_ADDRESS_FAMILY)
        if family is not None:
            if len(family) != 4 or family[0] not in (1, 2):
                self._error(client, message, 400, key)
            if family[0] != 1:
                self._error(client, message, 440, key)
        even = message.first(Attr.EVEN_PORT)
        if even is not None:
            if len(even) != 1:
                self._error(client, message, 400, key)
            if even[0] & 0x80:  # a reservation for the next port: not offered
                self._error(client, message, 508, key)
        ip = _client_ip(client)
        if len(self._allocations) >= s.max_allocations:
            self._limit(client, message, key, 508, "allocations_total")
        if self._per_user[_user(username)] >= s.max_allocations_per_user:
            self._limit(client, message, key, 486, "allocations_per_user")
        if self._per_ip[ip] >= s.max_allocations_per_ip:
            self._limit(client, message, key, 486, "allocations_per_ip")
        lifetime = self._lifetime(message)
        allocation = Allocation(
            allocation_id=self._next_id,
            client=client,
            username=username,
            key=key,
            expires_at=now + lifetime,
            bucket=BandwidthBucket(s.bandwidth_per_allocation, s.bandwidth_burst, now),
            allocate_transaction=message.transaction_id,
        )
        self._next_id += 1
        self._allocations[allocation.allocation_id] = allocation
        self._by_client[client] = allocation
        self._per_user[_user(username)] += 1
        self._per_ip[ip] += 1
        self.counters["allocations_created"] += 1
        self._events.append(
            AllocationRequested(allocation.allocation_id, client, even_port=even is not None)
        )

    def _refresh(self, allocation: Allocation, message: TurnMessage, now: float) -> None:
        requested = message.uint32(Attr.LIFETIME)
        if requested == 0:
            self._success(allocation, message, [uint32_attr(Attr.LIFETIME, 0)])
            self._close(allocation, "deleted")
            return
        lifetime = self._lifetime(message)
        allocation.expires_at = now + lifetime
        self._schedule(allocation)
        self._success(allocation, message, [uint32_attr(Attr.LIFETIME, lifetime)])

    def _create_permission(self, allocation: Allocation, message: TurnMessage, now: float) -> None:
        peers = message.peer_addresses()
        if not peers:
            self._error(allocation.client, message, 400, allocation.key)
        ips = {self._check_peer(allocation, message, ip) for ip, _ in peers}
        allocation.expire(now)
        new = ips - allocation.permissions.keys()
        if len(allocation.permissions) + len(new) > self.settings.max_permissions_per_allocation:
            self._limit(
                allocation.client, message, allocation.key, 508, "permissions_per_allocation"
            )
        for ip in ips:
            allocation.permissions[ip] = now + self.settings.permission_lifetime
        self._schedule(allocation)
        self._success(allocation, message, [])

    def _channel_bind(self, allocation: Allocation, message: TurnMessage, now: float) -> None:
        raw = message.first(Attr.CHANNEL_NUMBER)
        peers = message.peer_addresses()
        if raw is None or len(raw) != 4 or len(peers) != 1:
            self._error(allocation.client, message, 400, allocation.key)
        assert raw is not None
        number = struct.unpack_from("!H", raw)[0]
        if not MIN_CHANNEL <= number <= self._max_channel:
            self._error(allocation.client, message, 400, allocation.key)
        ip = self._check_peer(allocation, message, peers[0][0])
        peer = (ip, peers[0][1])
        allocation.expire(now)
        try:
            allocation.check_channel(number, peer, now)
        except ChannelRefusal as exc:
            self._error(allocation.client, message, 400, allocation.key, reason=str(exc))
        s = self.settings
        if (
            number not in allocation.channels
            and len(allocation.channels) >= s.max_channels_per_allocation
        ):
            self._limit(allocation.client, message, allocation.key, 508, "channels_per_allocation")
        if (
            ip not in allocation.permissions
            and len(allocation.permissions) >= s.max_permissions_per_allocation
        ):
            self._limit(
                allocation.client, message, allocation.key, 508, "permissions_per_allocation"
            )
        allocation.bind_channel(number, peer, now + s.channel_lifetime)
        allocation.permissions[ip] = now + s.permission_lifetime
        self._schedule(allocation)
        self._success(allocation, message, [])

    # -- data from clients ------------------------------------------------------------

    def _send_indication(self, client: ClientKey, message: TurnMessage, now: float) -> None:
        allocation = self._by_client.get(client)
        if allocation is None or allocation.relayed is None:
            self.counters["drop_no_allocation"] += 1
            return
        try:
            peers = message.peer_addresses()
        except TurnParseError:
            peers = []
        data = message.first(Attr.DATA)
        if len(peers) != 1 or data is None:
            self.counters["drop_malformed"] += 1
            return
        self._relay_to_peer(allocation, peers[0], data, now)

    def _channel_data(self, client: ClientKey, data: bytes, now: float) -> None:
        try:
            number, payload = parse_channel_data_untrusted(
                data, stream=client[0] != "udp", max_channel=self._max_channel
            )
        except TurnParseError:
            self.counters["drop_malformed"] += 1
            return
        allocation = self._by_client.get(client)
        peer = allocation.channel_peer(number, now) if allocation is not None else None
        if allocation is None or peer is None:
            self.counters["drop_no_channel"] += 1
            return
        self._relay_to_peer(allocation, peer, payload, now)

    def _relay_to_peer(
        self, allocation: Allocation, peer: tuple[str, int], data: bytes, now: float
    ) -> None:
        target = self._by_relayed.get(peer)
        # Again on every send, not only at permission; another allocation of ours passes.
        ip = peer[0] if target is not None else self._policy.check(peer[0])
        if ip is None or ":" in ip:
            self.counters["drop_peer_denied"] += 1
            return
        if not allocation.permitted(ip, now):
            self.counters["drop_no_permission"] += 1
            return
        if not allocation.bucket.try_take(len(data), now):
            self._bandwidth_exceeded()
            return
        self.counters["bytes_to_peer"] += len(data)
        if target is not None and allocation.relayed is not None:
            # What the kernel would do (from A's relayed socket to B's), without it.
            self.counters["hairpin_datagrams"] += 1
            self.receive_from_peer(target.allocation_id, allocation.relayed, data, now)
            return
        self._transmits.append(ToPeer(allocation.allocation_id, (ip, peer[1]), data))

    # -- helpers ------------------------------------------------------------------------

    def _check_peer(self, allocation: Allocation, message: TurnMessage, text: str) -> str:
        """The canonical peer IP, or a 403 (denied) / 443 (family mismatch) answer."""
        address = self._policy.check(text)
        if address is None and _same_ip(text, self.settings.relay_ip):
            address = self.settings.relay_ip  # sends reach only our allocations (above)
        if address is None:
            self.counters["peer_denied"] += 1
            self._error(allocation.client, message, 403, allocation.key)
        assert address is not None
        if ":" in address:  # relayed addresses are IPv4 only
            self._error(allocation.client, message, 443, allocation.key)
        return address

    def _lifetime(self, message: TurnMessage) -> int:
        s = self.settings
        requested = message.uint32(Attr.LIFETIME)
        if requested is None:
            return s.default_lifetime
        if requested > s.max_lifetime:
            self._events.append(LimitHit("lifetime"))  # capped, not refused (RFC 8656 7.2)
        return max(s.default_lifetime, min(requested, s.max_lifetime))

    def _limit(
        self, client: ClientKey, message: TurnMessage, key: bytes, code: int, name: str
    ) -> None:
        self._events.append(LimitHit(name))
        self._error(client, message, code, key)

    def _bandwidth_exceeded(self) -> None:
        self.counters["drop_bandwidth"] += 1
        self._events.append(LimitHit("bandwidth"))

    def _software(self) -> list[tuple[int, bytes]]:
        software = self.settings.software
        return [(Attr.SOFTWARE, software.encode())] if software else []

    def _success(
        self, allocation: Allocation, message: TurnMessage, attrs: list[tuple[int, bytes]]
    ) -> None:
        data = encode_message(
            message.method, SUCCESS, message.transaction_id, attrs, integrity_key=allocation.key
        )
        self._count_response(0)
        self._transmits.append(ToClient(allocation.client, data))

    def _error(
        self,
        client: ClientKey,
        message: TurnMessage,
        code: int,
        key: bytes | None,
        extra: list[tuple[int, bytes]] | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        """Answer ``code`` (signed with ``key`` once the request was authenticated) and
        stop processing the request."""
        attrs = error_attrs(code, reason or REASONS[code]) + (extra or [])
        data = encode_message(
            message.method, ERROR, message.transaction_id, attrs, integrity_key=key
        )
        self._count_response(code)
        self._transmits.append(ToClient(client, data, unauthenticated=key is None))
        raise _Responded

    def _count_response(self, code: int) -> None:
        self.counters[f"response_{code or 'ok'}"] += 1

    def _schedule(self, allocation: Allocation) -> None:
        deadline = allocation.next_deadline()
        current = self._timer_at.get(allocation.allocation_id)
        if current is None or deadline < current:
            self._timer_at[allocation.allocation_id] = deadline
            heapq.heappush(self._timers, (deadline, allocation.allocation_id))

    def _close(self, allocation: Allocation, reason: str) -> None:
        self._forget(allocation)
        self._events.append(AllocationClosed(allocation.allocation_id, allocation.client, reason))

    def _forget(self, allocation: Allocation) -> None:
        del self._allocations[allocation.allocation_id]
        self._timer_at.pop(allocation.allocation_id, None)
        if self._by_client.get(allocation.client) is allocation:
            del self._by_client[allocation.client]
        if (
            allocation.relayed is not None
            and self._by_relayed.get(allocation.relayed) is allocation
        ):
            del self._by_relayed[allocation.relayed]
        for table, key in (
            (self._per_user, _user(allocation.username)),
            (self._per_ip, _client_ip(allocation.client)),
        ):
            table[key] -= 1
            if table[key] <= 0:
                del table[key]


def _user(username: str) -> str:
    """Whose allocation it is for the per-user quota: the peer id, whatever the expiry."""
    return username.partition(":")[2]


def _client_ip(client: ClientKey) -> str:
    return str(canonical_peer_ip(client[1][0]))


def _same_ip(text: str, ip: str) -> bool:
    try:
        return str(canonical_peer_ip(text)) == ip
    except ValueError:
        return False
