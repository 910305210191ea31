"""DCEP codec, PPIDs and two DataChannelRegistry cores wired back to back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from darkswap_trio.proto.datachannel import (
    ChannelAcknowledged,
    ChannelClosed,
    ChannelInfo,
    ChannelLimitError,
    ChannelOpenedByPeer,
    ChannelState,
    ChannelStateError,
    DataChannelRegistry,
    DcepAck,
    DcepOpen,
    MessageReceived,
    MessageTooLarge,
    Ppid,
    ProtocolViolation,
    Reliability,
    SctpMessage,
    StreamReset,
    decode_user_message_untrusted,
    encode_user_message,
    parse_dcep_untrusted,
)
from darkswap_trio.proto.errors import DcepParseError


def drain_sends(registry: DataChannelRegistry) -> list[SctpMessage | StreamReset]:
    out = []
    while (item := registry.poll_send()) is not None:
        out.append(item)
    return out


def drain_events(registry: DataChannelRegistry) -> list[object]:
    out = []
    while (event := registry.poll_event()) is not None:
        out.append(event)
    return out


class Link:
    """Two registries joined by a perfect SCTP association (ordered, reliable)."""

    def __init__(self, **options: int) -> None:
        self.client = DataChannelRegistry(dtls_client=True, **options)
        self.server = DataChannelRegistry(dtls_client=False, **options)

    def pump(self) -> list[SctpMessage | StreamReset]:
        """Deliver everything both sides queued until quiet; return what was sent."""
        sent = []
        while True:
            moved = False
            for src, dst in ((self.client, self.server), (self.server, self.client)):
                for item in drain_sends(src):
                    moved = True
                    sent.append(item)
                    if isinstance(item, SctpMessage):
                        dst.receive_message(item.stream_id, item.ppid, item.payload)
                    else:
                        dst.receive_stream_reset(item.stream_id)
            if not moved:
                return sent


def test_open_wire_format_rfc8832() -> None:
    message = DcepOpen(
        label="chat",
        protocol="x",
        ordered=False,
        reliability=Reliability.REXMIT,
        reliability_parameter=3,
        priority=512,
    )
    wire = message.encode()
    assert wire == bytes.fromhex("03 81 0200 00000003 0004 0001") + b"chatx"
    assert parse_dcep_untrusted(wire) == message
    assert DcepAck().encode() == b"\x02"
    assert parse_dcep_untrusted(b"\x02") == DcepAck()


@given(
    st.text(max_size=50),
    st.text(max_size=50),
    st.booleans(),
    st.sampled_from(list(Reliability)),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**16 - 1),
)
def test_open_round_trip(
    label: str, protocol: str, ordered: bool, reliability: Reliability, param: int, prio: int
) -> None:
    if reliability is Reliability.RELIABLE:
        param = 0  # ignored on the wire for reliable channels
    message = DcepOpen(label, protocol, ordered, reliability, param, prio)
    assert parse_dcep_untrusted(message.encode()) == message


@given(st.binary(max_size=300))
def test_any_bytes_raise_only_dcep_parse_error(data: bytes) -> None:
    try:
        parse_dcep_untrusted(data)
    except DcepParseError:
        pass


@given(st.integers(0, 2**32 - 1), st.binary(max_size=100))
def test_any_user_payload_raises_only_dcep_parse_error(ppid: int, payload: bytes) -> None:
    try:
        decode_user_message_untrusted(ppid, payload)
    except DcepParseError:
        pass


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x02\x00", "ACK must be 1 byte"),
        (b"\x07", "unknown DCEP message type"),
        (b"\x03\x00\x00", "shorter than 12"),
        (bytes.fromhex("03 00 0000 00000000 0004 0000") + b"abc", "length does not match"),
        (bytes.fromhex("03 03 0000 00000000 0000 0000"), "channel type 0x03"),
        (bytes.fromhex("03 00 0000 00000000 0001 0000") + b"\xff", "UTF-8"),
    ],
)
def test_malformed_dcep(data: bytes, message: str) -> None:
    with pytest.raises(DcepParseError, match=message):
        parse_dcep_untrusted(data)


@pytest.mark.parametrize(
    ("message", "ppid", "payload"),
    [
        ("héllo", Ppid.STRING, "héllo".encode()),
        (b"\x00\x01", Ppid.BINARY, b"\x00\x01"),
        ("", Ppid.STRING_EMPTY, b"\x00"),
        (b"", Ppid.BINARY_EMPTY, b"\x00"),
    ],
)
def test_ppid_encoding(message: str | bytes, ppid: Ppid, payload: bytes) -> None:
    assert encode_user_message(message) == (ppid, payload)
    decoded = decode_user_message_untrusted(ppid, payload)
    assert decoded == message and type(decoded) is type(message)


def test_ppid_decoding_errors() -> None:
    with pytest.raises(DcepParseError, match="UTF-8"):
        decode_user_message_untrusted(Ppid.STRING, b"\xff")
    with pytest.raises(DcepParseError, match="not a data channel user message"):
        decode_user_message_untrusted(Ppid.DCEP, b"\x02")
    with pytest.raises(TypeError):
        encode_user_message(5)  # type: ignore[arg-type]


def test_stream_id_parity_follows_dtls_role() -> None:
    client = DataChannelRegistry(dtls_client=True)
    server = DataChannelRegistry(dtls_client=False)
    assert [client.open_channel(f"c{i}") for i in range(3)] == [0, 2, 4]
    assert [server.open_channel(f"s{i}") for i in range(3)] == [1, 3, 5]


def test_open_ack_flow_and_messages_both_ways() -> None:
    link = Link()
    sid = link.client.open_channel("chat", protocol="json", ordered=False, max_retransmits=2)
    assert link.client.state_of(sid) is ChannelState.OPENING
    [open_send] = drain_sends(link.client)
    assert (open_send.ppid, open_send.ordered, open_send.max_retransmits) == (Ppid.DCEP, True, None)
    link.server.receive_message(sid, open_send.ppid, open_send.payload)
    [opened] = drain_events(link.server)
    assert opened == ChannelOpenedByPeer(
        ChannelInfo(sid, "chat", "json", False, 2, None, 256, False, False)
    )
    link.pump()  # the ACK
    assert drain_events(link.client) == [ChannelAcknowledged(sid)]
    assert link.client.state_of(sid) is ChannelState.OPEN
    assert link.server.state_of(sid) is ChannelState.OPEN

    for message in ("hi", b"\x00bin", "", b""):
        link.client.send(sid, message)
        link.server.send(sid, message)
    sent = link.pump()
    # Unordered + partially reliable options travel with every user message once acked.
    assert all(not s.ordered and s.max_retransmits == 2 for s in sent if isinstance(s, SctpMessage))
    expected = [MessageReceived(sid, m) for m in ("hi", b"\x00bin", "", b"")]
    assert drain_events(link.server) == expected
    assert drain_events(link.client) == expected


def test_messages_before_ack_are_ordered_and_imply_the_ack() -> None:
    link = Link()
    sid = link.server.open_channel("fast", ordered=False, max_packet_lifetime_ms=100)
    link.server.send(sid, b"early")
    open_send, early = drain_sends(link.server)
    assert early.ordered and early.lifetime_ms == 100  # ordered until acknowledged
    link.client.receive_message(sid, open_send.ppid, open_send.payload)
    [ack] = drain_sends(link.client)
    link.client.send(sid, "reply")
    [reply] = drain_sends(link.client)
    # The (unordered) reply overtakes the ACK: it acknowledges implicitly.
    link.server.receive_message(reply.stream_id, reply.ppid, reply.payload)
    assert drain_events(link.server) == [ChannelAcknowledged(sid), MessageReceived(sid, "reply")]
    link.server.receive_message(ack.stream_id, ack.ppid, ack.payload)
    assert drain_events(link.server) == []  # the late ACK is expected, not an error
    link.server.receive_message(sid + 2, Ppid.DCEP, ack.payload)
    [stray] = drain_events(link.server)
    assert isinstance(stray, ProtocolViolation) and "ACK" in stray.reason


def test_close_resets_both_directions() -> None:
    link = Link()
    sid = link.client.open_channel("a")
    link.pump()
    drain_events(link.client), drain_events(link.server)
    link.client.close_channel(sid)
    assert link.client.state_of(sid) is ChannelState.CLOSING
    with pytest.raises(ChannelStateError, match="closing"):
        link.client.send(sid, "late")
    sent = link.pump()
    assert sent == [StreamReset(sid), StreamReset(sid)]
    assert drain_events(link.server) == [ChannelClosed(sid)]
    assert drain_events(link.client) == [ChannelClosed(sid)]
    assert link.client.state_of(sid) is ChannelState.CLOSED and link.client.channels() == ()
    assert link.client.open_channel("b") == sid  # the id is free again
    with pytest.raises(ChannelStateError, match="closed"):
        link.server.send(sid, "x")


def test_max_message_size_enforced_on_send() -> None:
    registry = DataChannelRegistry(dtls_client=True, remote_max_message_size=10)
    sid = registry.open_channel("a")
    registry.send(sid, b"x" * 10)
    registry.send(sid, "é" * 5)  # 10 UTF-8 bytes
    with pytest.raises(MessageTooLarge, match="11 bytes exceeds the peer's max-message-size of 10"):
        registry.send(sid, b"x" * 11)
    with pytest.raises(MessageTooLarge):
        registry.send(sid, "é" * 6)
    unlimited = DataChannelRegistry(dtls_client=True, remote_max_message_size=0)
    unlimited.send(unlimited.open_channel("a"), b"x" * 1_000_000)


def test_oversized_and_partial_incoming_messages() -> None:
    link = Link(local_max_message_size=8)
    sid = link.client.open_channel("a")
    link.pump()
    drain_events(link.server)
    link.server.receive_message(sid, Ppid.BINARY, b"x" * 9)
    [violation] = drain_events(link.server)
    assert isinstance(violation, ProtocolViolation) and "exceeds" in violation.reason
    # Deprecated partial messages (PPID 54/52) are reassembled up to the limit.
    link.server.receive_message(sid, Ppid.STRING_PARTIAL, b"ab")
    link.server.receive_message(sid, Ppid.STRING_PARTIAL, b"cd")
    link.server.receive_message(sid, Ppid.STRING, b"ef")
    assert drain_events(link.server) == [MessageReceived(sid, "abcdef")]
    for _ in range(3):
        link.server.receive_message(sid, Ppid.BINARY_PARTIAL, b"xyz")
    link.server.receive_message(sid, Ppid.BINARY, b"end")
    link.server.receive_message(sid, Ppid.BINARY, b"next")
    events = drain_events(link.server)
    assert isinstance(events[0], ProtocolViolation) and events[1:] == [
        MessageReceived(sid, b"next")
    ]


def test_peer_errors_become_violations() -> None:
    registry = DataChannelRegistry(dtls_client=True, max_channels=1)
    registry.receive_message(7, Ppid.BINARY, b"x")  # no channel on stream 7
    registry.receive_message(9, Ppid.DCEP, b"\x09")  # bad DCEP: refused with a reset
    registry.receive_message(11, Ppid.DCEP, DcepOpen("a").encode())
    registry.receive_message(11, Ppid.DCEP, DcepOpen("again").encode())
    registry.receive_message(13, Ppid.DCEP, DcepOpen("over the limit").encode())
    registry.receive_message(11, 99, b"unknown ppid")
    events = drain_events(registry)
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "ProtocolViolation",
        "ProtocolViolation",
        "ChannelOpenedByPeer",
        "ProtocolViolation",
        "ProtocolViolation",
        "ProtocolViolation",
    ]
    sends = drain_sends(registry)
    assert StreamReset(9) in sends and StreamReset(13) in sends
    assert SctpMessage(11, Ppid.DCEP, b"\x02", True, None, None) in sends
    with pytest.raises(ChannelLimitError):
        registry.open_channel("mine")


def test_local_argument_checks_and_negotiated_channels() -> None:
    link = Link()
    with pytest.raises(ValueError, match="at most one"):
        link.client.open_channel("a", max_retransmits=1, max_packet_lifetime_ms=1)
    with pytest.raises(ValueError, match="65535 UTF-8 bytes"):
        link.client.open_channel("x" * 70000)
    assert link.client.channels() == ()  # nothing half-created
    a = link.client.open_channel("neg", negotiated_id=5)
    b = link.server.open_channel("neg", negotiated_id=5)
    assert a == b == 5 and drain_sends(link.client) == []  # no DCEP for negotiated
    with pytest.raises(ChannelLimitError, match="in use"):
        link.client.open_channel("dup", negotiated_id=5)
    link.client.send(5, "over negotiated")
    link.pump()
    assert drain_events(link.server) == [MessageReceived(5, "over negotiated")]
    link.client.limit_streams(4)
    assert [link.client.open_channel("x"), link.client.open_channel("y")] == [0, 2]
    with pytest.raises(ChannelLimitError, match="no free stream id"):
        link.client.open_channel("z")


@given(
    st.lists(
        st.tuples(
            st.integers(0, 20),
            st.sampled_from([0, 50, 51, 52, 53, 54, 56, 57, 99]),
            st.one_of(
                st.binary(max_size=40),
                st.builds(lambda label: DcepOpen(label).encode(), st.text(max_size=5)),
                st.just(b"\x02"),
            ),
            st.booleans(),
        ),
        max_size=40,
    )
)
def test_registry_never_raises_on_peer_input(
    inputs: list[tuple[int, int, bytes, bool]],
) -> None:
    registry = DataChannelRegistry(dtls_client=True, max_channels=4, local_max_message_size=64)
    registry.open_channel("local")
    for stream_id, ppid, payload, reset in inputs:
        if reset:
            registry.receive_stream_reset(stream_id)
        else:
            registry.receive_message(stream_id, ppid, payload)
        for event in drain_events(registry):
            if isinstance(event, MessageReceived):
                assert registry.state_of(event.stream_id) is ChannelState.OPEN
        drain_sends(registry)
        assert len(registry.channels()) <= 4


_PEER_INPUTS = st.lists(
    st.tuples(
        st.integers(0, 20),
        st.sampled_from([0, 50, 51, 52, 53, 54, 56, 57, 99]),
        st.one_of(
            st.binary(max_size=80),
            st.text(max_size=20).map(str.encode),
            st.builds(lambda label: DcepOpen(label).encode(), st.text(max_size=5)),
            st.just(b"\x02"),
        ),
        st.booleans(),
    ),
    max_size=40,
)


@given(_PEER_INPUTS)
def test_receive_user_message_is_receive_message_without_the_queue(
    inputs: list[tuple[int, int, bytes, bool]],
) -> None:
    """The data path's receive_user_message never raises, and returns exactly the
    messages receive_message would have queued (the rest it queues the same way)."""
    general, fast = (
        DataChannelRegistry(dtls_client=True, max_channels=4, local_max_message_size=64)
        for _ in range(2)
    )
    for registry in (general, fast):
        registry.open_channel("local")
    for stream_id, ppid, payload, reset in inputs:
        if reset:
            general.receive_stream_reset(stream_id)
            fast.receive_stream_reset(stream_id)
            expected, got = drain_events(general), drain_events(fast)
        else:
            general.receive_message(stream_id, ppid, payload)
            message = fast.receive_user_message(stream_id, ppid, payload)
            expected, got = drain_events(general), drain_events(fast)
            if message is not None:
                assert got == []
                got = [MessageReceived(stream_id, message)]
        assert got == expected
        assert drain_sends(general) == drain_sends(fast)


@given(
    st.integers(0, 6),
    st.one_of(st.binary(max_size=80), st.text(max_size=40)),
    st.sampled_from(["open", "opening", "closing", "none"]),
)
def test_outgoing_is_what_send_queues(stream_id: int, message: str | bytes, state: str) -> None:
    """outgoing() (the data path's send) checks as send() does and returns the fields
    of the SctpMessage send() queues."""
    queued, direct = (
        DataChannelRegistry(dtls_client=True, remote_max_message_size=60) for _ in range(2)
    )
    for registry in (queued, direct):
        if state != "none":
            registry.open_channel("x", negotiated_id=2 if state != "opening" else None)
            drain_sends(registry)
        if state == "opening":
            registry.open_channel("y", ordered=False)
            drain_sends(registry)
        if state == "closing":
            registry.close_channel(2)
            drain_sends(registry)
    try:
        queued.send(stream_id, message)
    except (ChannelStateError, MessageTooLarge) as exc:
        with pytest.raises(type(exc)):
            direct.outgoing(stream_id, message)
        return
    (sent,) = drain_sends(queued)
    assert isinstance(sent, SctpMessage)
    assert SctpMessage(stream_id, *direct.outgoing(stream_id, message)) == sent
    assert not direct.sends_pending()


class PairOverSctp(RuleBasedStateMachine):
    """Two registries over a modelled SCTP association that reorders what SCTP may.

    Ordered messages and stream resets keep their order per stream; unordered
    messages may overtake ordered ones but never a reset (RFC 6525 applies a reset
    only after all earlier data on the stream arrived). Every message carries a
    unique token, so loss, duplication or misrouting is caught.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sides = {
            "client": DataChannelRegistry(dtls_client=True),
            "server": DataChannelRegistry(dtls_client=False),
        }
        self.in_flight: dict[str, list[SctpMessage | StreamReset]] = {"client": [], "server": []}
        self.sent: dict[str, tuple[str, int, bool]] = {}  # token -> sender, stream, ordered
        self.received: dict[str, list[str]] = {}  # "side:stream" -> tokens in arrival order
        self.tokens = 0

    @staticmethod
    def peer(side: str) -> str:
        return "server" if side == "client" else "client"

    def collect(self) -> None:
        for side, registry in self.sides.items():
            self.in_flight[self.peer(side)].extend(drain_sends(registry))
            for event in drain_events(registry):
                assert not isinstance(event, ProtocolViolation), event
                if isinstance(event, MessageReceived):
                    assert registry.state_of(event.stream_id) in (
                        ChannelState.OPEN,
                        ChannelState.CLOSING,
                    )
                    message = event.message
                    token = message.decode() if isinstance(message, bytes) else message
                    self.received.setdefault(f"{side}:{event.stream_id}", []).append(token)

    def deliverable(self, side: str) -> list[int]:
        queue = self.in_flight[side]
        indexes = []
        for i, item in enumerate(queue):
            earlier = [q for q in queue[:i] if q.stream_id == item.stream_id]
            if isinstance(item, SctpMessage) and not item.ordered:
                blocked = any(isinstance(q, StreamReset) for q in earlier)
            elif isinstance(item, SctpMessage):
                blocked = any(isinstance(q, StreamReset) or q.ordered for q in earlier)
            else:
                blocked = bool(earlier)
            if not blocked:
                indexes.append(i)
        return indexes

    @rule(side=st.sampled_from(["client", "server"]), ordered=st.booleans())
    def open_channel(self, side: str, ordered: bool) -> None:
        registry = self.sides[side]
        sid = registry.open_channel("label", ordered=ordered)
        assert sid % 2 == (0 if side == "client" else 1)
        self.collect()

    @rule(side=st.sampled_from(["client", "server"]), data=st.data())
    def send(self, side: str, data: st.DataObject) -> None:
        registry = self.sides[side]
        usable = [
            c.stream_id
            for c in registry.channels()
            if registry.state_of(c.stream_id) in (ChannelState.OPENING, ChannelState.OPEN)
        ]
        if not usable:
            return
        sid = data.draw(st.sampled_from(usable))
        token = f"{side}-{self.tokens}"
        self.tokens += 1
        registry.send(sid, token if data.draw(st.booleans()) else token.encode())
        self.sent[token] = (side, sid, registry.channel(sid).ordered)
        self.collect()

    @rule(side=st.sampled_from(["client", "server"]), data=st.data())
    def close(self, side: str, data: st.DataObject) -> None:
        registry = self.sides[side]
        if registry.channels():
            sid = data.draw(st.sampled_from([c.stream_id for c in registry.channels()]))
            registry.close_channel(sid)
            self.collect()

    @rule(side=st.sampled_from(["client", "server"]), data=st.data())
    def deliver(self, side: str, data: st.DataObject) -> None:
        indexes = self.deliverable(side)
        if not indexes:
            return
        self.deliver_at(side, data.draw(st.sampled_from(indexes)))

    @invariant()
    def tokens_arrive_once_at_the_right_place(self) -> None:
        seen = set()
        for key, tokens in self.received.items():
            side, sid = key.split(":")
            for token in tokens:
                assert token not in seen
                seen.add(token)
                sender, sent_sid, _ = self.sent[token]
                assert (self.peer(sender), sent_sid) == (side, int(sid))

    def teardown(self) -> None:
        for _ in range(10_000):
            if not (self.in_flight["client"] or self.in_flight["server"]):
                break
            for side in ("client", "server"):
                if self.in_flight[side]:
                    self.deliver_at(side, self.deliverable(side)[0])
        delivered = [token for tokens in self.received.values() for token in tokens]
        assert sorted(delivered) == sorted(self.sent)
        for key, tokens in self.received.items():
            numbers = [int(t.split("-")[1]) for t in tokens if self.sent[t][2]]
            assert numbers == sorted(numbers), key
        # Quiet: both sides agree on which channels exist.
        client, server = self.sides["client"], self.sides["server"]
        assert {c.stream_id for c in client.channels()} == {c.stream_id for c in server.channels()}

    def deliver_at(self, side: str, index: int) -> None:
        item = self.in_flight[side].pop(index)
        if isinstance(item, SctpMessage):
            self.sides[side].receive_message(item.stream_id, item.ppid, item.payload)
        else:
            self.sides[side].receive_stream_reset(item.stream_id)
        self.collect()


TestPairOverSctp = PairOverSctp.TestCase
