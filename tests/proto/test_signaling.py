"""The signaling codec: every message round-trips; untrusted input raises only ParseError."""

import json
import unicodedata
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio.proto import signaling as sig
from darkswap_trio.proto.errors import ParseError, SignalingParseError

ids = st.text(
    alphabet="123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz", min_size=1, max_size=60
)
texts = st.text(max_size=200)
opt_texts = st.none() | texts
nonces = st.binary(min_size=32, max_size=32)
blobs = st.binary(max_size=300)
numbers = st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(0, 2**40)
limits = st.builds(
    sig.CircuitLimits,
    duration=st.floats(0, 1e6, allow_nan=False),
    data=st.integers(0, 2**40),
    bandwidth=st.integers(0, 2**32),
    window=st.integers(0, 2**31),
    max_data_frame=st.integers(0, 2**20),
)

messages = st.one_of(
    st.builds(sig.Register, peer_id=ids, protocol=opt_texts, nonce=st.none() | nonces),
    st.builds(sig.Challenge, nonce=nonces, relay_peer_id=ids, signature=st.none() | blobs),
    st.builds(sig.Authenticate, signature=blobs, token=opt_texts),
    st.builds(
        sig.Registered,
        peer_id=ids,
        relay_peer_id=ids,
        auth=texts,
        protocol=opt_texts,
        signature=st.none() | blobs,
        token_expires_at=st.none() | st.floats(0, 1e10, allow_nan=False),
        limits=st.none() | st.dictionaries(st.text(max_size=10), st.integers(0, 2**40), max_size=4),
    ),
    st.builds(sig.RefreshToken, token=texts),
    st.builds(sig.TokenRefreshed, expires_at=st.floats(0, 1e10, allow_nan=False)),
    st.builds(sig.Offer, from_=ids, to=ids, sdp=texts),
    st.builds(sig.Answer, from_=ids, to=ids, sdp=texts),
    st.builds(
        sig.IceCandidate,
        from_=ids,
        to=ids,
        candidate=texts,
        sdp_mid=opt_texts,
        sdp_mline_index=st.none() | st.integers(0, 65535),
    ),
    st.builds(sig.RelayRequest, from_=ids, to=ids),
    st.builds(
        sig.RelayResponse,
        relay_id=ids,
        accepted=st.booleans(),
        error=opt_texts,
        code=opt_texts,
        to=st.none() | ids,
        limits=st.none() | limits,
    ),
    st.builds(sig.DataChannel, peer_id=ids, relay_id=ids, channel=texts, limits=st.none() | limits),
    st.builds(sig.RelayData, from_=ids, relay_id=ids, data=blobs),
    st.builds(sig.CloseRelay, relay_id=ids, reason=opt_texts),
    st.builds(sig.Error, message=texts, code=opt_texts, ref=opt_texts),
    st.builds(sig.Ping, nonce=st.none() | st.text(max_size=sig.PING_NONCE_MAX)),
    st.builds(sig.Pong, nonce=st.none() | st.text(max_size=sig.PING_NONCE_MAX)),
    st.builds(sig.TurnCredentialsRequest),
    st.builds(
        sig.TurnCredentials,
        username=texts,
        password=texts,
        ttl=st.floats(1e-3, 1e8),
        uris=st.lists(
            st.from_regex(r"turns?:[\x21-\x7e]{1,60}", fullmatch=True), min_size=1, max_size=8
        ).map(tuple),
    ),
)


@given(messages)
def test_every_message_round_trips(msg):
    assert sig.decode_message_untrusted(sig.encode_message(msg)) == msg


def test_original_wire_format_is_kept():
    # The original DarkSwap relay's frames, byte for byte in structure.
    assert json.loads(sig.encode_message(sig.Ping())) == {"type": "Ping"}
    frame = json.loads(sig.encode_message(sig.RelayResponse(relay_id="r", accepted=True)))
    assert frame == {
        "type": "RelayResponse",
        "payload": {"relay_id": "r", "accepted": True, "error": None},
    }
    frame = json.loads(sig.encode_message(sig.IceCandidate(from_="a", to="b", candidate="c")))
    assert frame["payload"] == {
        "from": "a",
        "to": "b",
        "candidate": "c",
        "sdp_mid": None,
        "sdp_mline_index": None,
    }
    msg = sig.decode_message_untrusted(
        '{"type":"RelayData","payload":{"from":"a","relay_id":"r","data":"aGVsbG8="}}'
    )
    assert msg == sig.RelayData(from_="a", relay_id="r", data=b"hello")
    # A unit message with a null or empty payload is tolerated.
    assert sig.decode_message_untrusted('{"type":"Pong","payload":null}') == sig.Pong()


def test_ping_nonce_is_echoed_and_optional():
    # Our extension: Ping may carry a nonce the Pong echoes; without one, the original form.
    assert json.loads(sig.encode_message(sig.Ping(nonce="1f"))) == {
        "type": "Ping",
        "payload": {"nonce": "1f"},
    }
    assert sig.decode_message_untrusted('{"type":"Pong","payload":{"nonce":"1f"}}') == sig.Pong(
        nonce="1f"
    )
    assert sig.decode_message_untrusted('{"type":"Pong"}') == sig.Pong(nonce=None)


def test_unknown_fields_are_ignored():
    msg = sig.decode_message_untrusted('{"type":"Register","payload":{"peer_id":"p","future":1}}')
    assert msg == sig.Register(peer_id="p")


@pytest.mark.parametrize(
    "frame, code",
    [
        ("not json", "bad_frame"),
        ("[]", "bad_frame"),
        ('{"payload":{}}', "bad_frame"),
        ('{"type":"Launch","payload":{}}', "unknown_type"),
        ('{"type":"Offer","payload":{"from":"a","to":"b"}}', "bad_frame"),
        ('{"type":"Offer","payload":{"from":"a","to":"b","sdp":5}}', "bad_frame"),
        ('{"type":"RelayResponse","payload":{"relay_id":"r","accepted":"yes"}}', "bad_frame"),
        ('{"type":"RelayData","payload":{"from":"a","relay_id":"r","data":"***"}}', "bad_frame"),
        ('{"type":"Register","payload":{"peer_id":"p","nonce":"aGVsbG8="}}', "bad_frame"),
        ('{"type":"Ping","payload":{"nonce":1}}', "bad_frame"),
        ('{"type":"Pong","payload":{"nonce":"' + "n" * 65 + '"}}', "bad_frame"),
        (
            '{"type":"IceCandidate","payload":{"from":"a","to":"b","candidate":"c","sdp_mline_index":true}}',
            "bad_frame",
        ),
        ('{"type":"TokenRefreshed","payload":{"expires_at":NaN}}', "bad_frame"),
        ("[" * 100000, "bad_frame"),
    ],
)
def test_bad_frames_have_codes(frame, code):
    with pytest.raises(SignalingParseError) as info:
        sig.decode_message_untrusted(frame)
    assert info.value.code == code


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.sampled_from(sorted(sig._BY_NAME) + ["Nope"]), json_values)
def test_any_json_payload_raises_only_parse_error(type_name, payload):
    frame = json.dumps({"type": type_name, "payload": payload})
    try:
        sig.decode_message_untrusted(frame)
    except ParseError:
        pass


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_any_text_raises_only_parse_error(text):
    try:
        sig.decode_message_untrusted(text)
    except ParseError:
        pass


# -- ids (PROTOCOL.md 3.1) -------------------------------------------------------------

FORBIDDEN_IN_IDS = {"Cc", "Cs", "Zl", "Zp"}  # controls, surrogates, line/paragraph separators


def is_valid_id(text: str, *, allow_empty: bool = False) -> bool:
    """The documented rule, written independently of the codec's implementation."""
    if not (0 if allow_empty else 1) <= len(text) <= sig.MAX_ID_LENGTH:
        return False
    return not any(unicodedata.category(c) in FORBIDDEN_IN_IDS for c in text)


# Any text, surrogates included, with lengths around the bounds.
any_text = st.text(st.characters(exclude_categories=()), max_size=140) | st.builds(
    lambda c, n: c * n, st.characters(exclude_categories=()), st.integers(0, 140)
)
printable_ids = st.text(
    st.characters(exclude_categories=tuple(FORBIDDEN_IN_IDS)), min_size=1, max_size=128
)


@given(any_text)
def test_any_peer_id_text_is_accepted_or_raises_parse_error(text):
    frame = json.dumps({"type": "Register", "payload": {"peer_id": text}})
    try:
        msg = sig.decode_message_untrusted(frame)
    except SignalingParseError as exc:
        assert not is_valid_id(text), text
        assert exc.code == "bad_frame"
    else:
        assert is_valid_id(text), text
        assert msg == sig.Register(peer_id=text)
    assert (sig.id_problem(text) is None) == is_valid_id(text)


@given(any_text, st.sampled_from(["from", "to"]))
def test_ids_in_signaling_fields_follow_the_same_rule(text, key):
    payload = {"from": "peer1", "to": "peer2", "sdp": "v=0"} | {key: text}
    frame = json.dumps({"type": "Offer", "payload": payload})
    try:
        msg = sig.decode_message_untrusted(frame)
    except SignalingParseError:
        assert not is_valid_id(text)
    else:
        assert is_valid_id(text) and getattr(msg, "from_" if key == "from" else key) == text


@given(any_text)
def test_any_relay_id_text_is_accepted_or_raises_parse_error(text):
    # Relay ids may be empty: a refused RelayResponse carries "".
    frame = json.dumps({"type": "CloseRelay", "payload": {"relay_id": text}})
    try:
        msg = sig.decode_message_untrusted(frame)
    except SignalingParseError:
        assert not is_valid_id(text, allow_empty=True)
    else:
        assert is_valid_id(text, allow_empty=True) and msg == sig.CloseRelay(relay_id=text)


@given(printable_ids, printable_ids)
def test_printable_ids_round_trip(a, b):
    for msg in (
        sig.Register(peer_id=a),
        sig.RelayRequest(from_=a, to=b),
        sig.IceCandidate(from_=b, to=a, candidate="c"),
        sig.DataChannel(peer_id=a, relay_id=b, channel="relay"),
    ):
        assert sig.decode_message_untrusted(sig.encode_message(msg)) == msg


def test_id_bounds_and_forbidden_characters():
    for good in ["peer1", "peer-1a2b3c4d", "x" * 128, "peer 1", "ünïcødé ✓", "\u00a0"]:
        assert sig.id_problem(good) is None, good
    for bad in ["", "x" * 129, "a\nb", "a\x00", "\x7f", "\x85", "a\u2028", "\u2029", "\ud800"]:
        assert sig.id_problem(bad) is not None, repr(bad)
    assert sig.id_problem("", allow_empty=True) is None


@given(st.binary(min_size=16, max_size=16), st.binary(max_size=2000))
def test_binary_data_round_trips(relay_id, payload):
    frame = sig.encode_circuit_data(relay_id, payload)
    assert sig.decode_binary_untrusted(frame) == sig.CircuitData(relay_id, payload)


@given(st.binary(min_size=16, max_size=16), st.integers(1, 2**32 - 1))
def test_binary_credit_round_trips(relay_id, increment):
    frame = sig.encode_circuit_credit(relay_id, increment)
    assert sig.decode_binary_untrusted(frame) == sig.CircuitCredit(relay_id, increment)


@given(st.binary(max_size=100))
def test_any_binary_raises_only_parse_error(frame):
    try:
        sig.decode_binary_untrusted(frame)
    except ParseError:
        pass


def test_bad_binary_frames():
    rid = uuid.uuid4().bytes
    for frame in [
        b"",
        b"\x01" + rid[:5],
        b"\x03" + rid,
        b"\x02" + rid + b"\0\0\0\0",
        b"\x02" + rid + b"\0\0\1",
    ]:
        with pytest.raises(SignalingParseError):
            sig.decode_binary_untrusted(frame)
    with pytest.raises(ValueError):
        sig.encode_circuit_credit(rid, 0)


def test_auth_messages_bind_both_ids_and_nonce():
    a = sig.peer_auth_message(b"n" * 32, "relay", "peer")
    assert a != sig.peer_auth_message(b"n" * 32, "relay2", "peer")
    assert a != sig.peer_auth_message(b"n" * 32, "relay", "peer2")
    assert a != sig.relay_auth_message(b"n" * 32, "relay", "peer")
