"""The Darkswap-Relay-Challenge header of the upgrade response (PROTOCOL.md 2.1.1)."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio import Keypair
from darkswap_trio.proto.errors import SignalingParseError
from darkswap_trio.proto.upgrade_challenge import (
    UpgradeChallenge,
    challenge_from_head_untrusted,
    challenge_header,
)
from darkswap_trio.proto.websocket import build_accept_response, parse_response_untrusted

RELAY = str(Keypair.from_seed(b"r" * 32).peer_id)
KEY = base64.b64encode(b"k" * 16).decode()


def head_with(*headers: tuple[str, str]) -> bytes:
    return build_accept_response(KEY, headers)


def test_round_trip_through_a_101():
    nonce = os.urandom(32)
    head = head_with(challenge_header(nonce, RELAY), ("X-Other", "1"))
    parse_response_untrusted(head)  # still a valid 101
    assert challenge_from_head_untrusted(head) == UpgradeChallenge(nonce, RELAY)
    # Header names are case-insensitive; surrounding whitespace is not part of the value.
    lower = head.replace(b"Darkswap-Relay-Challenge: ", b"darkswap-relay-challenge:   ")
    assert challenge_from_head_untrusted(lower) == UpgradeChallenge(nonce, RELAY)


def test_absent_header():
    assert challenge_from_head_untrusted(head_with()) is None
    assert challenge_from_head_untrusted(b"") is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        base64.b64encode(b"n" * 32).decode(),  # no relay id
        base64.b64encode(b"n" * 31).decode() + "= " + RELAY,  # 31 bytes
        base64.b64encode(b"n" * 33).decode()[:44] + " " + RELAY,  # not canonical base64
        "!" * 44 + " " + RELAY,
        base64.b64encode(b"n" * 32).decode() + " " + RELAY + "0",  # '0' is not base58
        base64.b64encode(b"n" * 32).decode() + " " + RELAY + " extra",
    ],
)
def test_malformed_values_are_parse_errors(value):
    with pytest.raises(SignalingParseError):
        challenge_from_head_untrusted(head_with(("Darkswap-Relay-Challenge", value)))


def test_repeated_header_is_a_parse_error():
    one = challenge_header(os.urandom(32), RELAY)
    with pytest.raises(SignalingParseError, match="repeated"):
        challenge_from_head_untrusted(head_with(one, one))


def test_header_needs_a_32_byte_nonce():
    with pytest.raises(ValueError):
        challenge_header(b"short", RELAY)


@given(st.binary(max_size=400))
def test_any_bytes_raise_only_parse_errors(data):
    try:
        result = challenge_from_head_untrusted(data)
    except SignalingParseError:
        return
    assert result is None or len(result.nonce) == 32


@given(st.binary(max_size=120), st.text(max_size=80), st.binary(min_size=32, max_size=32))
def test_any_value_in_a_head_raises_only_parse_errors(prefix, value, nonce):
    raw = b"HTTP/1.1 101 x\r\nDarkswap-Relay-Challenge:" + value.encode("utf-8", "replace")
    for head in (raw, raw + b"\r\n\r\n", prefix + raw + b"\r\n\r\n"):
        try:
            challenge_from_head_untrusted(head)
        except SignalingParseError:
            pass
    name, text = challenge_header(nonce, RELAY)
    good = f"HTTP/1.1 101 x\r\n{name}: {text}\r\n\r\n".encode()
    assert challenge_from_head_untrusted(good) == UpgradeChallenge(nonce, RELAY)
