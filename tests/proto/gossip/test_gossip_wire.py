"""The topic wire format: round trips, bounds, and any bytes -> records or GossipParseError."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio.proto.errors import GossipParseError, ParseError
from darkswap_trio.proto.gossip.wire import (
    GRAFT,
    IHAVE,
    IWANT,
    MESSAGE_ID_SIZE,
    PRUNE,
    PUBLISH,
    SUBSCRIBE,
    UNSUBSCRIBE,
    Control,
    Message,
    encode_control,
    encode_frame,
    encode_record,
    parse_frame_untrusted,
    signed_bytes,
)
from darkswap_trio.proto.identity import Keypair

KEY = Keypair.from_seed(bytes(range(32)))
FROM = KEY.peer_id.multihash


def signed(topic="t", data=b"hello", seqno=7):
    return Message(FROM, seqno, topic, data, KEY.sign(signed_bytes(FROM, seqno, topic, data)))


def test_message_round_trip_and_signature():
    message = signed()
    frame = encode_frame([encode_record(PUBLISH, message.encode())])
    (parsed,) = parse_frame_untrusted(frame)
    assert parsed == message and parsed.signature_valid()
    assert parsed.id == message.id and len(parsed.id) == MESSAGE_ID_SIZE


def test_tampered_message_fails_verification():
    message = signed()
    for forged in (
        Message(FROM, 7, "t", b"hellO", message.signature),
        Message(FROM, 8, "t", b"hello", message.signature),
        Message(FROM, 7, "u", b"hello", message.signature),
        Message(
            Keypair.from_seed(bytes(32)).peer_id.multihash, 7, "t", b"hello", message.signature
        ),
    ):
        assert not forged.signature_valid()


@pytest.mark.parametrize(
    "control",
    [
        Control(SUBSCRIBE, "orders/BTC-USDT"),
        Control(UNSUBSCRIBE, "ü"),
        Control(GRAFT, "t"),
        Control(PRUNE, "t", backoff=60),
        Control(IHAVE, "t", ids=(b"a" * 20, b"b" * 20)),
        Control(IWANT, ids=(b"c" * 20,)),
        Control(IWANT, ids=()),
    ],
)
def test_control_round_trip(control):
    assert parse_frame_untrusted(encode_frame([encode_control(control)])) == [control]


def test_several_records_and_unknown_kinds_skipped():
    frame = encode_frame(
        [
            encode_control(Control(GRAFT, "a")),
            encode_record(99, b"future"),
            encode_record(PUBLISH, signed().encode()),
        ]
    )
    assert [type(r) for r in parse_frame_untrusted(frame)] == [Control, Message]


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x02",
        b"\x01\x01",
        b"\x01\x01\x00\x00\x00\x05\x00",  # bad version, truncated, empty topic
        b"\x01\x01\x00\x00\x00\x02\x01\xff",  # topic not UTF-8
        b"\x01\x04\x00\x00\x00\x03\x01ab",  # trailing byte in GRAFT
        b"\x01\x03\x00\x00\x00\x01\x00",  # PUBLISH with an empty publisher id
    ],
)
def test_malformed(frame):
    with pytest.raises(GossipParseError):
        parse_frame_untrusted(frame)


def test_bounds():
    big = Message(FROM, 1, "t", b"x" * 101, bytes(64))
    with pytest.raises(GossipParseError, match="exceeds"):
        parse_frame_untrusted(encode_frame([encode_record(PUBLISH, big.encode())]), max_data=100)
    many = encode_frame([encode_control(Control(GRAFT, "t"))] * 11)
    with pytest.raises(GossipParseError, match="too many"):
        parse_frame_untrusted(many, max_records=10)
    too_many_ids = encode_record(IWANT, struct.pack(">H", 6000) + bytes(6000 * 20))
    with pytest.raises(GossipParseError):
        parse_frame_untrusted(encode_frame([too_many_ids]))
    with pytest.raises(ValueError):
        encode_control(Control(GRAFT, "x" * 256))


@given(st.binary(max_size=300))
def test_any_bytes_only_parse_error(data):
    try:
        parse_frame_untrusted(data)
    except ParseError as exc:
        assert isinstance(exc, GossipParseError)


@given(st.lists(st.tuples(st.integers(0, 9), st.binary(max_size=80)), max_size=6))
def test_any_records_only_parse_error(records):
    # Well-framed records with arbitrary bodies reach the per-kind parsers.
    frame = encode_frame([encode_record(kind, body) for kind, body in records])
    try:
        parse_frame_untrusted(frame)
    except ParseError as exc:
        assert isinstance(exc, GossipParseError)


@given(st.binary(max_size=200), st.integers(0, 250))
def test_mutated_valid_frame_only_parse_error(noise, cut):
    frame = encode_frame(
        [
            encode_record(PUBLISH, signed().encode()),
            encode_control(Control(IHAVE, "t", ids=(b"i" * 20,))),
        ]
    )
    for candidate in (frame[:cut] + noise, frame[:cut] + frame[cut + 1 :], noise + frame[cut:]):
        try:
            for record in parse_frame_untrusted(candidate):
                if isinstance(record, Message):
                    record.signature_valid()  # must not raise either
        except ParseError as exc:
            assert isinstance(exc, GossipParseError)
