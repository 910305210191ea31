"""A minimal TURN client for driving the sans-IO server core in tests (no sockets)."""

from __future__ import annotations

import itertools
import struct
from typing import Any

from aioice import stun

from darkswap_trio.proto.turn import (
    AllocationRequested,
    TurnServer,
    TurnServerSettings,
    rest_api_credentials,
)
from darkswap_trio.proto.turn.codec import (
    ALLOCATE,
    CHANNEL_BIND,
    CREATE_PERMISSION,
    REFRESH,
    REQUEST,
    Attr,
    encode_message,
    long_term_key,
    pack_xor_address,
    uint32_attr,
)
from darkswap_trio.proto.turn.events import ToClient, ToPeer

SECRET = b"0123456789abcdef-secret"
REALM = "test.realm"
UNIX_OFFSET = 1_700_000_000.0  # unix time = core time + this
_ids = itertools.count(1)


def make_server(**overrides: Any) -> TurnServer:
    values: dict[str, Any] = {"realm": REALM, "secret": SECRET, "relay_ip": "198.51.100.1"}
    values.update(overrides)
    return TurnServer(TurnServerSettings(**values), unix_offset=UNIX_OFFSET, nonce_key=b"k" * 32)


def tid() -> bytes:
    return struct.pack("!4sQ", b"test", next(_ids))


def peer_attr(addr: tuple[str, int], transaction_id: bytes) -> tuple[int, bytes]:
    return Attr.XOR_PEER_ADDRESS, pack_xor_address(addr, transaction_id)


class Client:
    """One client (``("udp"|"tcp", addr)``) talking to ``server`` with REST credentials."""

    def __init__(
        self,
        server: TurnServer,
        addr: tuple[str, int] = ("203.0.113.7", 40000),
        peer_id: str = "peerA",
        transport: str = "udp",
        ttl: float = 86400.0,
        now: float = 0.0,
    ) -> None:
        self.server = server
        self.key_tuple = (transport, addr)
        self.username, self.password = rest_api_credentials(SECRET, peer_id, ttl, now + UNIX_OFFSET)
        self.key = long_term_key(self.username, REALM, self.password)
        self.nonce: str | None = None
        self.events: list[Any] = []

    def request(
        self,
        method: int,
        attrs: list[tuple[int, bytes]],
        now: float,
        *,
        transaction_id: bytes | None = None,
        auth: bool = True,
        key: bytes | None = None,
        retry_stale: bool = True,
    ) -> stun.Message:
        """Send one request (signing it when ``auth``); return the parsed response."""
        transaction_id = transaction_id or tid()
        extra: list[tuple[int, bytes]] = []
        if auth:
            if self.nonce is None:
                self._learn_nonce(now)
            assert self.nonce is not None
            extra = [
                (Attr.USERNAME, self.username.encode()),
                (Attr.REALM, REALM.encode()),
                (Attr.NONCE, self.nonce.encode()),
            ]
        data = encode_message(
            method,
            REQUEST,
            transaction_id,
            attrs + extra,
            integrity_key=(key or self.key) if auth else None,
        )
        self.server.receive(self.key_tuple, data, now)
        response = self.response(now)
        if auth and response.error_code == 438 and retry_stale:  # as real clients do
            self.nonce = response.attributes["NONCE"].decode()
            return self.request(method, attrs, now, auth=auth, key=key, retry_stale=False)
        return response

    def _learn_nonce(self, now: float) -> None:
        response = self.request(ALLOCATE, [], now, auth=False)
        assert response.error_code == 401
        self.nonce = response.attributes["NONCE"].decode()

    def response(self, now: float) -> stun.Message:
        self.handle_allocations(now)
        out = [t for t in drain(self.server) if isinstance(t, ToClient)]
        assert len(out) == 1, out
        assert out[0].client == self.key_tuple
        return stun.parse_message(out[0].data)

    def handle_allocations(self, now: float) -> None:
        """Play the driver: bind every requested allocation on a fake port; other
        events go to ``self.events``."""
        while (event := self.server.poll_event()) is not None:
            if isinstance(event, AllocationRequested):
                relayed = ("198.51.100.1", 50000 + event.allocation_id)
                self.server.allocation_bound(event.allocation_id, relayed, now)
            else:
                self.events.append(event)

    def allocate(
        self, now: float, lifetime: int | None = None, transport: int = 17
    ) -> stun.Message:
        attrs = [uint32_attr(Attr.REQUESTED_TRANSPORT, transport << 24)]
        if lifetime is not None:
            attrs.append(uint32_attr(Attr.LIFETIME, lifetime))
        return self.request(ALLOCATE, attrs, now)

    def refresh(self, now: float, lifetime: int | None = None) -> stun.Message:
        attrs = [] if lifetime is None else [uint32_attr(Attr.LIFETIME, lifetime)]
        return self.request(REFRESH, attrs, now)

    def permit(self, peers: list[tuple[str, int]], now: float) -> stun.Message:
        t = tid()
        return self.request(
            CREATE_PERMISSION, [peer_attr(p, t) for p in peers], now, transaction_id=t
        )

    def bind(self, number: int, peer: tuple[str, int], now: float) -> stun.Message:
        t = tid()
        attrs = [(Attr.CHANNEL_NUMBER, struct.pack("!HH", number, 0)), peer_attr(peer, t)]
        return self.request(CHANNEL_BIND, attrs, now, transaction_id=t)


def drain(server: TurnServer) -> list[ToClient | ToPeer]:
    out = []
    while (t := server.poll_transmit()) is not None:
        out.append(t)
    return out


def events(server: TurnServer) -> list[Any]:
    out = []
    while (e := server.poll_event()) is not None:
        out.append(e)
    return out
