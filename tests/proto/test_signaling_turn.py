"""TurnCredentials / TurnCredentialsRequest (PROTOCOL.md 13.6) in the signaling codec:
any payload decodes to credentials whose fields hold what the protocol promises, or
raises only ParseError."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio.proto import signaling as sig
from darkswap_trio.proto.errors import ParseError

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
uri_like = st.sampled_from(["turn:", "turns:", "stun:", "TURN:", ""]).flatmap(
    lambda p: st.text(max_size=40).map(lambda t: p + t)
)
field_values = scalars | st.lists(uri_like | scalars, max_size=10)


@given(
    st.dictionaries(st.sampled_from(["username", "password", "ttl", "uris", "extra"]), field_values)
)
def test_any_turn_credentials_payload_is_valid_or_raises_parse_error(payload):
    frame = json.dumps({"type": "TurnCredentials", "payload": payload})
    try:
        msg = sig.decode_message_untrusted(frame)
    except ParseError:
        return
    assert isinstance(msg, sig.TurnCredentials)
    assert isinstance(msg.username, str) and isinstance(msg.password, str)
    assert math.isfinite(msg.ttl) and msg.ttl > 0
    assert 1 <= len(msg.uris) <= sig.TURN_URIS_MAX
    assert all(u.startswith(("turn:", "turns:")) and u.isascii() for u in msg.uris)


@pytest.mark.parametrize(
    "payload",
    [
        {"username": "1:p", "password": "x", "ttl": 1e400, "uris": ["turn:h"]},
        {"username": "1:p", "password": "x", "ttl": 0, "uris": ["turn:h"]},
        {"username": "1:p", "password": "x", "ttl": True, "uris": ["turn:h"]},
        {"username": "1:p", "password": "x", "ttl": 5, "uris": []},
        {"username": "1:p", "password": "x", "ttl": 5, "uris": ["stun:h"]},
        {"username": "1:p", "password": "x", "ttl": 5, "uris": ["turn:a b"]},
        {"username": "1:p", "password": "x", "ttl": 5, "uris": ["turn:h"] * 9},
        {"username": "1:p", "ttl": 5, "uris": ["turn:h"]},
    ],
)
def test_bad_turn_credentials_are_bad_frames(payload):
    text = json.dumps({"type": "TurnCredentials", "payload": payload}).replace("Infinity", "1e400")
    with pytest.raises(ParseError) as info:
        sig.decode_message_untrusted(text)
    assert info.value.code == "bad_frame"


def test_request_has_no_fields_and_round_trips():
    assert sig.encode_message(sig.TurnCredentialsRequest()) == (
        '{"type":"TurnCredentialsRequest","payload":{}}'
    )
    for frame in (
        '{"type":"TurnCredentialsRequest"}',
        '{"type":"TurnCredentialsRequest","payload":null}',
    ):
        assert sig.decode_message_untrusted(frame) == sig.TurnCredentialsRequest()
