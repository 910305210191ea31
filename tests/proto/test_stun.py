"""STUN codec: RFC 5769 vectors, binding helpers, transaction timer, untrusted parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio.proto.errors import StunParseError
from darkswap_trio.proto.stun import (
    OTHER_ADDRESS,
    Class,
    Message,
    Method,
    StunTransaction,
    binding_request,
    binding_success_response,
    error_response,
    is_stun,
    mapped_address,
    other_address_untrusted,
    parse_stun_untrusted,
)

# RFC 5769 section 2.1: sample request (short-term credential).
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e"
    "207465737420636c69656e7400240004"
    "6e0001ff80290008932ff9b151263b36000600096576746a3a683676"
    "59202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)
RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
# RFC 5769 section 2.2 and 2.3: sample IPv4 and IPv6 responses.
RFC5769_RESPONSE_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b"
    "7465737420766563746f722000200008"
    "0001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53"
    "f06be7d780280004c07d4c96"
)
RFC5769_RESPONSE_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae8022000b"
    "7465737420766563746f722000200014"
    "0002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e"
    "4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c"
)


def test_rfc5769_request():
    message = parse_stun_untrusted(RFC5769_REQUEST)
    assert message.message_method == Method.BINDING
    assert message.message_class == Class.REQUEST
    assert message.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert message.attributes["USERNAME"] == "evtj:h6vY"
    assert message.attributes["SOFTWARE"] == "STUN test client"
    assert message.attributes["PRIORITY"] == 0x6E0001FF
    assert message.attributes["ICE-CONTROLLED"] == 0x932FF9B151263B36
    assert message.check_message_integrity(RFC5769_PASSWORD)
    assert not message.check_message_integrity(b"wrong password")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (RFC5769_RESPONSE_V4, ("192.0.2.1", 32853)),
        (RFC5769_RESPONSE_V6, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_rfc5769_responses(data, expected):
    message = parse_stun_untrusted(data)
    assert message.message_class == Class.RESPONSE
    assert mapped_address(message) == expected
    assert message.check_message_integrity(RFC5769_PASSWORD)
    assert is_stun(data)


def test_bad_fingerprint_rejected():
    data = bytearray(RFC5769_RESPONSE_V4)
    data[-1] ^= 1
    with pytest.raises(StunParseError):
        parse_stun_untrusted(bytes(data))


def test_bad_cookie_and_length_rejected():
    data = bytearray(RFC5769_REQUEST)
    data[4] ^= 0xFF
    assert not is_stun(bytes(data))
    with pytest.raises(StunParseError, match="cookie"):
        parse_stun_untrusted(bytes(data))
    with pytest.raises(StunParseError, match="length"):
        parse_stun_untrusted(RFC5769_REQUEST[:-4])
    with pytest.raises(StunParseError, match="short"):
        parse_stun_untrusted(b"\x00\x01")


def test_truncated_attribute_rejected():
    # Header claims 4 bytes of body, the attribute claims 8 bytes of value.
    data = bytes.fromhex("000100042112a442") + bytes(12) + bytes.fromhex("00240008")
    with pytest.raises(StunParseError, match="truncated"):
        parse_stun_untrusted(data)


@pytest.mark.parametrize("addr", [("203.0.113.7", 40000), ("2001:db8::1", 3478)])
def test_binding_round_trip(addr):
    request = binding_request()
    request.add_fingerprint()
    parsed_request = parse_stun_untrusted(bytes(request))
    assert parsed_request.message_class == Class.REQUEST
    response = parse_stun_untrusted(binding_success_response(parsed_request, addr))
    assert response.message_class == Class.RESPONSE
    assert response.transaction_id == request.transaction_id
    assert mapped_address(response) == addr
    assert "FINGERPRINT" in response.attributes
    # Signed variant, as ICE checks need.
    signed = parse_stun_untrusted(binding_success_response(parsed_request, addr, b"k" * 22))
    assert signed.check_message_integrity(b"k" * 22)


def test_error_response():
    request = binding_request(b"\x01" * 12)
    error = parse_stun_untrusted(error_response(request, 487, "Role Conflict", b"pw"))
    assert error.message_class == Class.ERROR
    assert error.error_code == 487
    assert error.check_message_integrity(b"pw")
    with pytest.raises(ValueError):
        binding_request(b"short")


def test_transaction_schedule_rfc5389():
    # RFC 5389 7.2.1: requests at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5; timeout at 39.5.
    transaction = StunTransaction(b"x", now=0.0)
    sends = [0.0]
    now = 0.0
    while True:
        now = transaction.poll_timeout()
        outcome = transaction.handle_timeout(now)
        if outcome.timed_out:
            break
        assert outcome.retransmit
        sends.append(now)
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert now == 39.5
    # Early calls do nothing.
    fresh = StunTransaction(b"x", now=10.0)
    assert fresh.handle_timeout(10.1) == fresh.handle_timeout(10.2)
    assert not fresh.handle_timeout(10.1).retransmit


@given(st.binary(max_size=200))
def test_any_bytes_raise_only_stun_parse_error(data):
    try:
        message = parse_stun_untrusted(data)
    except StunParseError:
        return
    assert isinstance(message, Message)


@given(
    st.binary(min_size=12, max_size=12),
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=6),
    st.integers(0, 0x3FF),
)
def test_well_framed_garbage_raises_only_stun_parse_error(tid, attrs, message_type):
    # Valid header and attribute framing with arbitrary types/values reaches aioice's
    # attribute decoders, where the odd exceptions come from.
    body = b""
    for attr_type, value in attrs:
        body += attr_type.to_bytes(2, "big") + len(value).to_bytes(2, "big")
        body += value + bytes(-len(value) % 4)
    data = (
        message_type.to_bytes(2, "big")
        + len(body).to_bytes(2, "big")
        + bytes.fromhex("2112a442")
        + tid
        + body
    )
    assert is_stun(data)
    try:
        parse_stun_untrusted(data)
    except StunParseError:
        pass


def _response_with(attrs: bytes) -> bytes:
    return (
        (0x0101).to_bytes(2, "big")
        + len(attrs).to_bytes(2, "big")
        + bytes.fromhex("2112A442")
        + bytes(12)
        + attrs
    )


def test_other_address_rfc5780():
    v4 = (
        OTHER_ADDRESS.to_bytes(2, "big")
        + (8).to_bytes(2, "big")
        + bytes([0, 1])
        + (3479).to_bytes(2, "big")
        + bytes([198, 51, 100, 9])
    )
    assert other_address_untrusted(_response_with(v4)) == ("198.51.100.9", 3479)
    v6 = (
        OTHER_ADDRESS.to_bytes(2, "big")
        + (20).to_bytes(2, "big")
        + bytes([0, 2])
        + (1).to_bytes(2, "big")
        + bytes(15)
        + b"\x01"
    )
    assert other_address_untrusted(_response_with(v6)) == ("::1", 1)
    assert other_address_untrusted(bytes(binding_request())) is None
    with pytest.raises(StunParseError):
        other_address_untrusted(_response_with(v4[:4] + bytes([0, 3]) + v4[6:]))


@given(
    st.binary(max_size=120),
    st.lists(
        st.tuples(st.sampled_from([OTHER_ADDRESS, 0x0020, 0x8028]), st.binary(max_size=24)),
        max_size=4,
    ),
)
def test_other_address_raises_only_stun_parse_error(tail, attrs):
    body = b"".join(
        t.to_bytes(2, "big") + len(v).to_bytes(2, "big") + v + bytes(-len(v) % 4) for t, v in attrs
    )
    for data in (tail, _response_with(body), _response_with(body) + tail):
        try:
            result = other_address_untrusted(data)
        except StunParseError:
            continue
        assert result is None or (isinstance(result[0], str) and 0 <= result[1] < 65536)
