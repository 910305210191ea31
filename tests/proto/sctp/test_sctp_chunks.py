"""SCTP packet/chunk codec: round trips, CRC32c, strict parsing of untrusted bytes."""

from __future__ import annotations

import struct
from collections import deque

import google_crc32c
import pytest
from aiortc import rtcsctptransport as aiortc_sctp
from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio.proto.errors import ParseError, SctpParseError
from darkswap_trio.proto.sctp._acks import SackScheduler
from darkswap_trio.proto.sctp._chunks import (
    DATA_BEGINNING,
    DATA_END,
    DATA_UNORDERED,
    PARAM_FORWARD_TSN_SUPPORTED,
    PARAM_STATE_COOKIE,
    PARAM_SUPPORTED_EXTENSIONS,
    PARAM_ZERO_CHECKSUM_ACCEPTABLE,
    ZERO_CHECKSUM_DTLS,
    AbortChunk,
    CookieAckChunk,
    CookieEchoChunk,
    DataChunk,
    ErrorChunk,
    ForwardTsnChunk,
    HeartbeatAckChunk,
    HeartbeatChunk,
    InitAckChunk,
    InitChunk,
    OutgoingResetRequest,
    ReconfigChunk,
    ReconfigResponse,
    SackChunk,
    ShutdownAckChunk,
    ShutdownChunk,
    ShutdownCompleteChunk,
    UnknownChunk,
    UnknownReconfigParam,
)
from darkswap_trio.proto.sctp._packets import (
    CommonHeader,
    encode_packet,
    parse_lone_data_untrusted,
    parse_packet_untrusted,
    parse_plain_sack_untrusted,
    parse_sack_data_untrusted,
    seal_packet,
)
from darkswap_trio.proto.sctp._streams import MASK32, SctpReceiver

HEADER = CommonHeader(5000, 5000, 0x12345678)
EXTENSIONS = [(PARAM_FORWARD_TSN_SUPPORTED, b""), (PARAM_SUPPORTED_EXTENSIONS, bytes([192, 130]))]

EXAMPLES = [
    DataChunk(1, 2, 3, 51, b"x"),
    DataChunk(0xFFFFFFFF, 65535, 65535, 53, bytes(range(256)) * 4, DATA_UNORDERED | DATA_END),
    DataChunk(7, 0, 0, 53, b"abcde", DATA_BEGINNING),
    InitChunk(0xDEADBEEF, 131072, 65535, 65535, 42, EXTENSIONS),
    InitAckChunk(1, 2, 3, 4, 5, [(PARAM_STATE_COOKIE, b"cookie!"), *EXTENSIONS]),
    SackChunk(100, 65536, [(2, 3), (5, 9)], [99, 98]),
    SackChunk(0, 0),
    HeartbeatChunk(b"\x01\x02\x03"),
    HeartbeatAckChunk(b"12345678"),
    AbortChunk([(12, b"bye")]),
    AbortChunk([], t_bit=True),
    ShutdownChunk(0xFFFFFFFE),
    ShutdownAckChunk(),
    ErrorChunk([(6, b"\xc1\x00\x00\x04")]),
    CookieEchoChunk(b"opaque cookie bytes"),
    CookieAckChunk(),
    ShutdownCompleteChunk(),
    ShutdownCompleteChunk(t_bit=True),
    ForwardTsnChunk(1234, [(1, 7), (9, 0)]),
    ForwardTsnChunk(1234),
    ReconfigChunk([OutgoingResetRequest(10, 20, 30, (1, 3, 5))]),
    ReconfigChunk([OutgoingResetRequest(10, 20, 30)]),
    ReconfigChunk([ReconfigResponse(10, 1)]),
    ReconfigChunk([OutgoingResetRequest(1, 2, 3, (4,)), ReconfigResponse(5, 6)]),
    ReconfigChunk([UnknownReconfigParam(17, b"\x00\x00\x00\x01\x00\x05\x00\x00")]),
    UnknownChunk(0x80 | 5, 3, b"skip me"),
]


@pytest.mark.parametrize("chunk", EXAMPLES, ids=lambda c: type(c).__name__)
def test_chunk_round_trip(chunk):
    packet = encode_packet(HEADER, [chunk])
    assert len(packet) % 4 == 0
    header, chunks = parse_packet_untrusted(packet)
    assert header == HEADER
    assert chunks == [chunk]


def test_bundled_round_trip():
    packet = encode_packet(HEADER, EXAMPLES)
    assert parse_packet_untrusted(packet) == (HEADER, EXAMPLES)


def test_crc32c_is_stored_little_endian():
    packet = encode_packet(HEADER, [CookieAckChunk()])
    zeroed = packet[:8] + b"\x00" * 4 + packet[12:]
    assert struct.unpack("<I", packet[8:12])[0] == google_crc32c.value(zeroed)
    # RFC 3309 check value of the CRC32c polynomial.
    assert google_crc32c.value(b"123456789") == 0xE3069283


def test_data_flags_and_init_extensions():
    chunk = DataChunk(1, 2, 3, 4, b"y", DATA_UNORDERED | DATA_BEGINNING)
    assert chunk.encode()[1] == 0x06
    init = InitChunk(1, 2, 3, 4, 5, EXTENSIONS)
    assert init.forward_tsn_supported and init.reconfig_supported
    bare = InitChunk(1, 2, 3, 4, 5)
    assert not bare.forward_tsn_supported and not bare.reconfig_supported
    ack = InitAckChunk(1, 2, 3, 4, 5, [(PARAM_STATE_COOKIE, b"c")])
    assert ack.state_cookie == b"c"


# --- interoperability with aiortc's codec -----------------------------------------------


def test_aiortc_parses_our_packets():
    ours = [
        InitChunk(0xCAFE, 131072, 65535, 65535, 77, EXTENSIONS),
        DataChunk(5, 1, 2, 53, b"hello", DATA_BEGINNING | DATA_END),
        SackChunk(4, 1000, [(2, 2)], [3]),
        ForwardTsnChunk(9, [(1, 2)]),
        ReconfigChunk([OutgoingResetRequest(1, 2, 3, (4, 6))]),
    ]
    for chunk in ours:
        _, _, tag, (theirs,) = aiortc_sctp.parse_packet(encode_packet(HEADER, [chunk]))
        assert tag == HEADER.verification_tag
        assert bytes(theirs) == chunk.encode()


def test_we_parse_aiortc_packets():
    init = aiortc_sctp.InitChunk()
    init.initiate_tag, init.advertised_rwnd = 0xBEEF, 131072
    init.outbound_streams, init.inbound_streams, init.initial_tsn = 65535, 65535, 99
    init.params = [(PARAM_FORWARD_TSN_SUPPORTED, b""), (PARAM_SUPPORTED_EXTENSIONS, b"\xc0\x82")]
    data = aiortc_sctp.DataChunk(flags=3)
    data.tsn, data.stream_id, data.stream_seq, data.protocol, data.user_data = 1, 2, 3, 51, b"z"
    sack = aiortc_sctp.SackChunk()
    sack.cumulative_tsn, sack.advertised_rwnd, sack.gaps, sack.duplicates = 5, 6, [(2, 4)], [7]
    for theirs, expected in [
        (init, InitChunk(0xBEEF, 131072, 65535, 65535, 99, init.params)),
        (data, DataChunk(1, 2, 3, 51, b"z", 3)),
        (sack, SackChunk(5, 6, [(2, 4)], [7])),
    ]:
        packet = aiortc_sctp.serialize_packet(5000, 5000, 0x1234, theirs)
        header, chunks = parse_packet_untrusted(packet)
        assert header.verification_tag == 0x1234
        assert chunks == [expected]


# --- malformed input --------------------------------------------------------------------


def _raw(body: bytes) -> bytes:
    return seal_packet(5000, 5000, 1, body)


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x00" * 15,
        _raw(b""),  # no chunk at all
        _raw(b"\x0b\x00\x00"),  # truncated chunk header
        _raw(b"\x0b\x00\x00\x02"),  # chunk length below 4
        _raw(b"\x0b\x00\x00\x08\x00\x00"),  # chunk length beyond the packet
        _raw(b"\x0a\x00\x00\x05x" + b"\x0b\x00\x00\x04"),  # padding missing before next chunk
        _raw(b"\x00\x03\x00\x10" + bytes(12)),  # DATA without user data
        _raw(b"\x01\x00\x00\x14" + bytes(16)),  # INIT with a zero initiate tag
        _raw(b"\x03\x00\x00\x14" + struct.pack("!IIHH", 0, 0, 5, 0) + bytes(4)),  # SACK counts
        _raw(b"\x03\x00\x00\x14" + struct.pack("!IIHH", 0, 0, 1, 0) + struct.pack("!HH", 3, 2)),
        _raw(b"\x04\x00\x00\x08" + struct.pack("!HH", 2, 4)),  # HEARTBEAT without info
        _raw(b"\x07\x00\x00\x06\x00\x00\x00\x00"),  # SHUTDOWN of the wrong length
        _raw(b"\x0b\x00\x00\x05x\x00\x00\x00"),  # COOKIE-ACK with a value
        _raw(b"\xc0\x00\x00\x0a" + bytes(6) + b"\x00\x00"),  # FORWARD-TSN, odd stream list
        _raw(b"\x82\x00\x00\x04"),  # RE-CONFIG without parameters
        _raw(b"\x82\x00\x00\x0c" + struct.pack("!HH", 16, 6) + b"\x00\x00\x00\x00"),
        _raw(b"\x06\x00\x00\x08" + struct.pack("!HH", 12, 9)),  # cause longer than chunk
    ],
)
def test_malformed_packets_raise_parse_error(packet):
    with pytest.raises(SctpParseError):
        parse_packet_untrusted(packet)


def test_bad_crc_raises():
    packet = bytearray(encode_packet(HEADER, [DataChunk(1, 2, 3, 4, b"data")]))
    packet[-5] ^= 0x40
    with pytest.raises(SctpParseError, match="CRC"):
        parse_packet_untrusted(bytes(packet))


def test_unpadded_last_chunk_is_tolerated():
    packet = _raw(b"\x0a\x00\x00\x05x")
    assert parse_packet_untrusted(packet)[1] == [CookieEchoChunk(b"x")]


@given(st.binary(max_size=300))
def test_any_bytes_raise_only_parse_error(data):
    try:
        parse_packet_untrusted(data)
    except ParseError as exc:
        assert isinstance(exc, SctpParseError)


@given(st.binary(max_size=300))
def test_any_body_with_valid_crc_raises_only_parse_error(body):
    # With a correct checksum the chunk parsers themselves see the random bytes.
    try:
        parse_packet_untrusted(_raw(body))
    except ParseError as exc:
        assert isinstance(exc, SctpParseError)


@given(
    st.sampled_from([0, 1, 3, 4, 6, 7, 9, 10, 14, 130, 192]),
    st.integers(0, 255),
    st.binary(max_size=64),
)
def test_any_known_chunk_value_raises_only_parse_error(ctype, flags, value):
    chunk = struct.pack("!BBH", ctype, flags, 4 + len(value)) + value
    try:
        parse_packet_untrusted(_raw(chunk + b"\x00" * (-len(chunk) % 4)))
    except SctpParseError:
        pass


u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
params = st.lists(st.tuples(u16, st.binary(max_size=20)), max_size=4)
chunks = st.one_of(
    st.builds(
        DataChunk, u32, u16, u16, u32, st.binary(min_size=1, max_size=50), st.integers(0, 15)
    ),
    st.builds(
        InitChunk,
        st.integers(1, 0xFFFFFFFF),
        u32,
        st.integers(1, 0xFFFF),
        st.integers(1, 0xFFFF),
        u32,
        params,
    ),
    st.builds(
        SackChunk,
        u32,
        u32,
        st.lists(st.tuples(st.integers(1, 100), st.integers(100, 200)), max_size=5),
        st.lists(u32, max_size=5),
    ),
    st.builds(HeartbeatChunk, st.binary(max_size=40)),
    st.builds(AbortChunk, params, st.booleans()),
    st.builds(ShutdownChunk, u32),
    st.builds(CookieEchoChunk, st.binary(max_size=80)),
    st.builds(ForwardTsnChunk, u32, st.lists(st.tuples(u16, u16), max_size=5)),
    st.builds(
        ReconfigChunk,
        st.lists(
            st.one_of(
                st.builds(
                    OutgoingResetRequest, u32, u32, u32, st.lists(u16, max_size=5).map(tuple)
                ),
                st.builds(ReconfigResponse, u32, u32),
            ),
            min_size=1,
            max_size=2,
        ),
    ),
)


@given(st.lists(chunks, min_size=1, max_size=6), u16, u16, u32)
def test_round_trip_property(chunk_list, src, dst, tag):
    header = CommonHeader(src, dst, tag)
    assert parse_packet_untrusted(encode_packet(header, chunk_list)) == (header, chunk_list)


# --- the data path's shortcuts: same answers as the general parser, or None ---------------


def _check_shortcuts(packet: bytes, header: CommonHeader = HEADER) -> None:
    fast_header = struct.pack(
        "!HHI", header.source_port, header.destination_port, header.verification_tag
    )
    try:
        general = parse_packet_untrusted(packet)
    except SctpParseError:
        general = None
    only = (
        general[1][0]
        if general is not None and general[0] == header and len(general[1]) == 1
        else None
    )
    lone = parse_lone_data_untrusted(packet, fast_header)
    if lone is not None:  # only ever a packet the general parser reads the same way
        assert only == lone
    else:
        assert type(only) is not DataChunk, "a lone DATA chunk missed the shortcut"
    sack = parse_plain_sack_untrusted(packet, fast_header)
    if sack is not None:
        assert only == SackChunk(*sack)
    else:
        assert not (type(only) is SackChunk and not only.gaps and not only.dups), "missed SACK"
    pair = (
        general[1]
        if general is not None and general[0] == header and len(general[1]) == 2
        else None
    )
    both = parse_sack_data_untrusted(packet, fast_header)
    if both is not None:
        assert pair == [SackChunk(both[0], both[1]), both[2]]
    else:
        assert not (
            pair is not None
            and type(pair[0]) is SackChunk
            and not pair[0].gaps
            and not pair[0].dups
            and type(pair[1]) is DataChunk
        ), "a SACK+DATA packet missed the shortcut"


@given(st.one_of(chunks, st.builds(SackChunk, u32, u32)), st.binary(max_size=6))
def test_shortcuts_agree_with_the_general_parser(chunk, trailer):
    packet = encode_packet(HEADER, [chunk])
    _check_shortcuts(packet)
    _check_shortcuts(packet + trailer)  # a second chunk or stray bytes: general path
    _check_shortcuts(packet[:-1])  # truncated
    _check_shortcuts(encode_packet(CommonHeader(1, 2, 3), [chunk]))  # someone else's


@given(st.builds(SackChunk, u32, u32), chunks, st.binary(max_size=6))
def test_the_sack_data_shortcut_agrees_with_the_general_parser(sack, chunk, trailer):
    packet = encode_packet(HEADER, [sack, chunk])
    _check_shortcuts(packet)
    _check_shortcuts(packet + trailer)
    _check_shortcuts(packet[:-1])
    _check_shortcuts(encode_packet(HEADER, [chunk, sack]))  # the other order: general path
    _check_shortcuts(encode_packet(CommonHeader(1, 2, 3), [sack, chunk]))


@given(st.binary(max_size=300))
def test_shortcuts_on_any_bytes_never_raise(data):
    _check_shortcuts(data)
    _check_shortcuts(_raw(data), CommonHeader(5000, 5000, 1))  # a valid CRC over random chunks


def test_zero_checksum_is_accepted_only_when_announced_and_never_on_init():
    data = encode_packet(HEADER, [DataChunk(5, 1, 0, 51, b"payload")])
    zeroed = data[:8] + b"\x00\x00\x00\x00" + data[12:]
    assert seal_packet(5000, 5000, HEADER.verification_tag, data[12:], True) == zeroed
    with pytest.raises(SctpParseError, match="CRC"):
        parse_packet_untrusted(zeroed)
    assert parse_packet_untrusted(zeroed, accept_zero_checksum=True) == parse_packet_untrusted(data)
    fast_header = data[:8]
    assert parse_lone_data_untrusted(zeroed, fast_header) is None
    assert parse_lone_data_untrusted(zeroed, fast_header, True) == DataChunk(
        5, 1, 0, 51, b"payload"
    )
    sack = encode_packet(HEADER, [SackChunk(9, 1000)])
    sack_zeroed = sack[:8] + b"\x00\x00\x00\x00" + sack[12:]
    assert parse_plain_sack_untrusted(sack_zeroed, fast_header) is None
    assert parse_plain_sack_untrusted(sack_zeroed, fast_header, True) == (9, 1000)
    both = encode_packet(HEADER, [SackChunk(9, 1000), DataChunk(5, 1, 0, 51, b"payload")])
    both_zeroed = both[:8] + b"\x00\x00\x00\x00" + both[12:]
    assert parse_sack_data_untrusted(both_zeroed, fast_header) is None
    assert parse_sack_data_untrusted(both_zeroed, fast_header, True) == (
        9,
        1000,
        DataChunk(5, 1, 0, 51, b"payload"),
    )
    # An INIT goes out before the peer knows what we accept: always a real CRC32c.
    init = encode_packet(CommonHeader(5000, 5000, 0), [InitChunk(1, 2, 3, 4, 5, EXTENSIONS)])
    with pytest.raises(SctpParseError, match="CRC"):
        parse_packet_untrusted(
            init[:8] + b"\x00\x00\x00\x00" + init[12:], accept_zero_checksum=True
        )
    # A wrong non-zero checksum stays wrong.
    with pytest.raises(SctpParseError, match="CRC"):
        parse_packet_untrusted(
            data[:8] + b"\x00\x00\x00\x01" + data[12:], accept_zero_checksum=True
        )


def test_zero_checksum_acceptable_parameter():
    announced = InitChunk(1, 2, 3, 4, 5, [(PARAM_ZERO_CHECKSUM_ACCEPTABLE, ZERO_CHECKSUM_DTLS)])
    assert announced.zero_checksum_dtls
    assert not InitChunk(1, 2, 3, 4, 5, EXTENSIONS).zero_checksum_dtls
    other_method = InitChunk(1, 2, 3, 4, 5, [(PARAM_ZERO_CHECKSUM_ACCEPTABLE, b"\0\0\0\x02")])
    assert not other_method.zero_checksum_dtls  # only DTLS (EDMID 1) is ours


@given(
    st.lists(st.integers(0, 40), max_size=30),
    st.integers(0, 2**32 - 1),
    st.integers(60, 1200),
)
def test_sack_scheduler_builds_what_sack_chunk_encodes(
    offsets: list[int], initial_tsn: int, room: int
) -> None:
    """SackScheduler.build (with its shortcut for a SACK with no gaps or duplicates)
    makes the bytes SackChunk.encode makes of the receiver's state."""
    receiver = SctpReceiver(initial_tsn, 1 << 20, deque())
    for offset in offsets:
        receiver.receive_data(DataChunk((initial_tsn + offset) & MASK32, 0, offset, 53, b"x"))
    dups = receiver.dups[: (room - 16) // 8]
    gaps = receiver.gap_blocks()[: (room - 16) // 4 - len(dups)]
    expected = SackChunk(receiver.cum_tsn & MASK32, receiver.a_rwnd, gaps, dups).encode()
    assert SackScheduler(1 << 20, 1200, 0.2, 2).build(receiver, room) == expected
