"""Properties of the TURN core: parsers raise only ParseError; the allocation state
machine agrees with a model under any sequence of client actions and time steps."""

from __future__ import annotations

import struct

from aioice import stun
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from turn_client import Client, drain, make_server

from darkswap_trio.proto.errors import ParseError
from darkswap_trio.proto.turn import (
    AllocationClosed,
    NonceIssuer,
    PeerPolicy,
    StreamDeframer,
    parse_channel_data_untrusted,
    parse_turn_untrusted,
)
from darkswap_trio.proto.turn.auth import username_expiry
from darkswap_trio.proto.turn.codec import MAGIC_COOKIE, encode_channel_data, xor_address

# Bytes that look like STUN (valid header, cookie and length) reach deeper code.
stun_like = st.builds(
    lambda kind, body, tid: (
        struct.pack("!HHI", kind & 0x3FFF, len(body) - len(body) % 4, MAGIC_COOKIE)
        + tid
        + body[: len(body) - len(body) % 4]
    ),
    st.integers(0, 0xFFFF),
    st.binary(max_size=200),
    st.binary(min_size=12, max_size=12),
)
attribute_soup = st.builds(
    lambda kind, tid, attrs: (
        lambda body: struct.pack("!HHI", kind, len(body), MAGIC_COOKIE) + tid + body
    )(b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4) for t, v in attrs)),
    st.sampled_from([0x0003, 0x0004, 0x0008, 0x0009, 0x0016, 0x0001]),
    st.binary(min_size=12, max_size=12),
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    0x0006,
                    0x0008,
                    0x000C,
                    0x000D,
                    0x0012,
                    0x0013,
                    0x0014,
                    0x0015,
                    0x0017,
                    0x0019,
                    0x8028,
                    0x7001,
                ]
            ),
            st.binary(max_size=24),
        ),
        max_size=6,
    ),
)
any_bytes = st.one_of(st.binary(max_size=300), stun_like, attribute_soup)


@given(any_bytes)
def test_turn_parser_raises_only_parse_error(data: bytes) -> None:
    try:
        message = parse_turn_untrusted(data)
    except ParseError:
        return
    for op in (message.peer_addresses, message.unknown_required):
        try:
            op()
        except ParseError:
            pass
    for attr in (0x0006, 0x0014, 0x0015):
        try:
            message.text(attr)
        except ParseError:
            pass
    try:
        message.uint32(0x000D)
    except ParseError:
        pass


@given(st.binary(max_size=100), st.booleans())
def test_channel_data_parser_raises_only_parse_error(data: bytes, stream: bool) -> None:
    try:
        parse_channel_data_untrusted(data, stream=stream)
    except ParseError:
        pass


@given(st.lists(st.binary(max_size=80), max_size=8))
def test_stream_deframer_raises_only_parse_error(chunks: list[bytes]) -> None:
    deframer = StreamDeframer()
    try:
        for chunk in chunks:
            deframer.feed(chunk)
    except ParseError:
        pass


@given(st.lists(st.tuples(st.binary(min_size=0, max_size=40), st.booleans()), max_size=6))
def test_stream_deframer_splits_any_chunking(payloads: list[tuple[bytes, bool]]) -> None:
    stream = b"".join(
        encode_channel_data(0x4000 + i, p, stream=True) for i, (p, _) in enumerate(payloads)
    )
    deframer = StreamDeframer()
    out = []
    for i in range(0, len(stream), 3):
        out += deframer.feed(stream[i : i + 3])
    assert [parse_channel_data_untrusted(m, stream=True)[1] for m in out] == [
        p for p, _ in payloads
    ]


@given(st.binary(max_size=24), st.binary(min_size=12, max_size=12))
def test_xor_address_raises_only_parse_error(value: bytes, transaction_id: bytes) -> None:
    try:
        ip, port = xor_address(value, transaction_id)
    except ParseError:
        return
    assert 0 <= port <= 0xFFFF
    PeerPolicy(allow_loopback=True).check(ip)  # any decoded address: a verdict, no error


@given(st.text(max_size=80))
def test_untrusted_strings_never_raise(text: str) -> None:
    # USERNAME and NONCE values reach these after UTF-8 decoding.
    assert username_expiry(text) is None or username_expiry(text) >= 0
    assert NonceIssuer(b"k" * 32, 600).check(text, "203.0.113.1", 0.0) in ("ok", "stale", "invalid")
    assert PeerPolicy().check(text) is None or ":" in text or "." in text


@given(any_bytes, st.sampled_from(["udp", "tcp"]))
def test_core_survives_any_client_bytes(data: bytes, transport: str) -> None:
    server = make_server()
    client = Client(server, transport=transport)
    client.allocate(0.0)
    server.receive(client.key_tuple, data, 1.0)
    server.receive(client.key_tuple, b"\x40\x00" + data, 1.0)
    drain(server)


PEERS = [("8.8.8.8", 1000), ("1.1.1.1", 2000), ("9.9.9.9", 3000), ("10.0.0.1", 4000)]


class AllocationMachine(RuleBasedStateMachine):
    """Two clients, one allocation each at most; the model tracks expiry times."""

    def __init__(self) -> None:
        super().__init__()
        self.server = make_server(max_permissions_per_allocation=3, max_channels_per_allocation=2)
        self.now = 0.0
        self.clients = [
            Client(self.server, addr=("203.0.113.1", p), peer_id=f"u{p}") for p in (1, 2)
        ]
        self.expires: dict[int, float] = {}  # client index -> allocation expiry
        self.ids: dict[int, int] = {}
        self.permissions: dict[int, dict[str, float]] = {}
        # client index -> channel number -> (peer, binding expiry)
        self.channels: dict[int, dict[int, tuple[tuple[str, int], float]]] = {}

    def _closed(self) -> None:
        for client in self.clients:
            for event in client.events:
                if isinstance(event, AllocationClosed):
                    index = self.clients.index(client) if event.client == client.key_tuple else None
                    if index is not None and self.ids.get(index) == event.allocation_id:
                        self.expires.pop(index, None)
            client.events.clear()

    @rule(i=st.integers(0, 1), lifetime=st.sampled_from([None, 0, 60, 900, 5000]))
    def allocate(self, i: int, lifetime: int | None) -> None:
        response = self.clients[i].allocate(self.now, lifetime=lifetime)
        if i in self.expires:
            assert response.error_code == 437
            return
        assert response.message_class == stun.Class.RESPONSE, response
        granted = response.attributes["LIFETIME"]
        assert granted == (600 if lifetime in (None, 0, 60) else min(lifetime, 3600))
        self.expires[i] = self.now + granted
        self.ids[i] = self.server._by_client[self.clients[i].key_tuple].allocation_id
        self.permissions[i] = {}
        self.channels[i] = {}

    @rule(i=st.integers(0, 1), lifetime=st.sampled_from([None, 0, 700]))
    def refresh(self, i: int, lifetime: int | None) -> None:
        response = self.clients[i].refresh(self.now, lifetime=lifetime)
        if i not in self.expires:
            assert response.error_code == 437
            return
        assert response.message_class == stun.Class.RESPONSE
        if lifetime == 0:
            del self.expires[i]
            self._closed()
        else:
            self.expires[i] = self.now + response.attributes["LIFETIME"]

    @rule(i=st.integers(0, 1), peers=st.lists(st.sampled_from(PEERS), min_size=1, max_size=3))
    def permit(self, i: int, peers: list[tuple[str, int]]) -> None:
        response = self.clients[i].permit(peers, self.now)
        if i not in self.expires:
            assert response.error_code == 437
        elif any(p[0] == "10.0.0.1" for p in peers):
            assert response.error_code == 403
        else:
            live = {ip for ip, t in self.permissions[i].items() if t > self.now}
            if len(live | {p[0] for p in peers}) > 3:
                assert response.error_code == 508
            else:
                assert response.message_class == stun.Class.RESPONSE
                for peer in peers:
                    self.permissions[i][peer[0]] = self.now + 300

    @rule(i=st.integers(0, 1), peer=st.sampled_from(PEERS[:3]))
    def peer_sends(self, i: int, peer: tuple[str, int]) -> None:
        if i not in self.ids:
            return
        self.server.receive_from_peer(self.ids[i], peer, b"data", self.now)
        out = drain(self.server)
        expected = i in self.expires and self.permissions[i].get(peer[0], -1) > self.now
        assert len(out) == (1 if expected else 0)

    @rule(
        i=st.integers(0, 1),
        number=st.sampled_from([0x4000, 0x4001, 0x4002]),
        peer=st.sampled_from(PEERS),
    )
    def bind(self, i: int, number: int, peer: tuple[str, int]) -> None:
        response = self.clients[i].bind(number, peer, self.now)
        if i not in self.expires:
            assert response.error_code == 437
            return
        if peer[0] == "10.0.0.1":
            assert response.error_code == 403
            return
        # A binding reserves its number and peer for each other until 5 min after expiry.
        held = {n: (p, t) for n, (p, t) in self.channels[i].items() if t + 300 > self.now}
        self.channels[i] = held
        live_permissions = {ip for ip, t in self.permissions[i].items() if t > self.now}
        taken = number in held and held[number][0] != peer
        peer_taken = any(p == peer and n != number for n, (p, _) in held.items())
        if taken or peer_taken:
            assert response.error_code == 400
        elif number not in held and len(held) >= 2:
            assert response.error_code == 508
        elif peer[0] not in live_permissions and len(live_permissions) >= 3:
            assert response.error_code == 508
        else:
            assert response.message_class == stun.Class.RESPONSE, response
            self.channels[i][number] = (peer, self.now + 600)
            self.permissions[i][peer[0]] = self.now + 300

    @rule(i=st.integers(0, 1), number=st.sampled_from([0x4000, 0x4001, 0x4002]))
    def channel_data(self, i: int, number: int) -> None:
        client = self.clients[i]
        self.server.receive(client.key_tuple, encode_channel_data(number, b"cd"), self.now)
        out = drain(self.server)
        entry = self.channels.get(i, {}).get(number) if i in self.expires else None
        expected = (
            entry is not None
            and entry[1] > self.now
            and self.permissions[i].get(entry[0][0], -1) > self.now
        )
        assert [(t.peer, t.data) for t in out] == ([(entry[0], b"cd")] if expected else [])

    @rule(step=st.sampled_from([1.0, 100.0, 299.0, 301.0, 599.0, 601.0, 3000.0]))
    def advance(self, step: float) -> None:
        self.now += step
        deadline = self.server.poll_timeout()
        while deadline is not None and deadline <= self.now:
            self.server.handle_timeout(deadline)
            new = self.server.poll_timeout()
            assert new is None or new > deadline
            deadline = new
        self.server.handle_timeout(self.now)
        while (event := self.server.poll_event()) is not None:
            assert isinstance(event, AllocationClosed) and event.reason == "expired"
            index = next(k for k, c in enumerate(self.clients) if c.key_tuple == event.client)
            assert self.expires.pop(index) <= self.now
        for expiry in self.expires.values():
            assert expiry > self.now, "an allocation outlived its lifetime"

    @invariant()
    def statistics_agree(self) -> None:
        assert self.server.statistics().allocations == len(self.expires)
        assert sum(self.server._per_user.values()) == len(self.expires)


TestAllocationMachine = AllocationMachine.TestCase
TestAllocationMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
