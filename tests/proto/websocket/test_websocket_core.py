"""Sans-IO WebSocket: frame codec, message core and handshake (no sockets, no trio)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio.proto.errors import WebSocketParseError
from darkswap_trio.proto.websocket._connection import (
    CloseReceived,
    ConnectionState,
    Frame,
    MessageReceived,
    Opcode,
    PingReceived,
    PongReceived,
    ProtocolFailed,
    WebSocketCore,
    apply_mask,
    apply_mask_pure,
    encode_frame,
    parse_close_payload_untrusted,
    parse_frame_untrusted,
)
from darkswap_trio.proto.websocket._handshake import (
    HttpRequest,
    WebSocketHandshakeError,
    accept_token,
    build_accept_response,
    build_http_response,
    build_upgrade_request,
    find_head_end_untrusted,
    is_upgrade_request,
    parse_request_untrusted,
    parse_response_untrusted,
    validate_upgrade_request,
    validate_upgrade_response,
)

MASK = bytes.fromhex("37fa213d")


def pair(max_message_size: int = 1 << 20) -> tuple[WebSocketCore, WebSocketCore]:
    return (
        WebSocketCore(is_client=True, max_message_size=max_message_size),
        WebSocketCore(is_client=False, max_message_size=max_message_size),
    )


def events(core: WebSocketCore) -> list[object]:
    out = []
    while (event := core.poll_event()) is not None:
        out.append(event)
    return out


def transmits(core: WebSocketCore) -> list[bytes]:
    out = []
    while (data := core.poll_transmit()) is not None:
        out.append(data)
    return out


# --- RFC 6455 section 5.7 examples -------------------------------------------------------


def test_rfc_examples_decode():
    assert parse_frame_untrusted(bytes.fromhex("810548656c6c6f")) == (
        Frame(Opcode.TEXT, b"Hello"),
        7,
    )
    masked = bytes.fromhex("818537fa213d7f9f4d5158")
    assert parse_frame_untrusted(masked, expect_masked=True) == (Frame(Opcode.TEXT, b"Hello"), 11)
    fragments = bytes.fromhex("010348656c80026c6f")
    first, offset = parse_frame_untrusted(fragments)
    second, end = parse_frame_untrusted(fragments, offset)
    assert (first, second, end) == (
        Frame(Opcode.TEXT, b"Hel", fin=False),
        Frame(Opcode.CONTINUATION, b"lo"),
        9,
    )
    pong = bytes.fromhex("8a8537fa213d7f9f4d5158")
    assert parse_frame_untrusted(pong)[0] == Frame(Opcode.PONG, b"Hello")


def test_rfc_examples_encode():
    assert encode_frame(Opcode.TEXT, b"Hello") == bytes.fromhex("810548656c6c6f")
    assert encode_frame(Opcode.TEXT, b"Hello", mask_key=MASK) == bytes.fromhex(
        "818537fa213d7f9f4d5158"
    )
    assert encode_frame(Opcode.PING, b"Hello") == bytes.fromhex("890548656c6c6f")
    assert encode_frame(Opcode.BINARY, bytes(256))[:4] == bytes.fromhex("827e0100")
    assert encode_frame(Opcode.BINARY, bytes(65536))[:10] == bytes.fromhex("827f0000000000010000")
    assert encode_frame(Opcode.TEXT, b"Hel", fin=False)[:2] == bytes.fromhex("0103")


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70001])
@pytest.mark.parametrize("mask_key", [None, MASK])
def test_length_encodings_round_trip(length, mask_key):
    payload = bytes(i & 0xFF for i in range(length))
    wire = encode_frame(Opcode.BINARY, payload, mask_key=mask_key)
    assert parse_frame_untrusted(wire[:-1] if length else wire[:1]) is None  # incomplete
    frame, end = parse_frame_untrusted(wire, expect_masked=mask_key is not None)
    assert frame == Frame(Opcode.BINARY, payload) and end == len(wire)


@given(st.binary(max_size=9000), st.binary(min_size=4, max_size=4))
def test_mask_is_an_involution_and_matches_reference(data, key):
    reference = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    assert apply_mask_pure(data, key) == reference
    assert apply_mask(data, key) == reference
    assert apply_mask_pure(memoryview(reference), key) == data


@given(
    st.sampled_from(list(Opcode)),
    st.binary(max_size=300),
    st.booleans(),
    st.one_of(st.none(), st.binary(min_size=4, max_size=4)),
)
def test_frame_round_trip_property(opcode, payload, fin, mask_key):
    if opcode >= 0x8:
        payload, fin = payload[:125], True
    wire = encode_frame(opcode, payload, fin=fin, mask_key=mask_key)
    assert parse_frame_untrusted(b"junk" + wire, 4) == (Frame(opcode, payload, fin), len(wire) + 4)


@given(st.binary(max_size=200), st.integers(0, 10), st.sampled_from([None, True, False]))
def test_frame_parser_raises_only_parse_error(data, offset, expect_masked):
    try:
        parse_frame_untrusted(data, offset, expect_masked=expect_masked, max_payload=100)
    except WebSocketParseError:
        pass


# --- the message core --------------------------------------------------------------------


def test_messages_both_ways_and_byte_at_a_time():
    client, server = pair()
    wire = client.send_message("héllo") + client.send_message(b"\x00" * 70000)
    wire += client.send_message(b"")
    got = []
    for i in range(len(wire)):
        server.receive(wire[i : i + 1])
        got += events(server)
        assert server.buffered_bytes <= 70000 + 14
    assert got == [MessageReceived("héllo"), MessageReceived(b"\x00" * 70000), MessageReceived(b"")]
    assert server.buffered_bytes == 0
    client.receive(server.send_message("back"))
    assert events(client) == [MessageReceived("back")]
    assert server.bytes_missing >= 1


def test_fragmented_message_with_interleaved_ping():
    client, server = pair()
    wire = (
        encode_frame(Opcode.TEXT, "hé".encode()[:2], fin=False, mask_key=MASK)
        + encode_frame(Opcode.PING, b"p", mask_key=MASK)
        + encode_frame(Opcode.CONTINUATION, "hé".encode()[2:], fin=False, mask_key=MASK)
        + encode_frame(Opcode.CONTINUATION, b"!", mask_key=MASK)
    )
    server.receive(wire)
    assert events(server) == [PingReceived(b"p"), MessageReceived("hé!")]
    pong = transmits(server)
    assert pong == [encode_frame(Opcode.PONG, b"p")]
    client.receive(pong[0])
    assert events(client) == [PongReceived(b"p")]


def test_client_masks_and_server_does_not():
    client, server = pair()
    assert client.send_message(b"abc")[1] & 0x80
    assert not server.send_message(b"abc")[1] & 0x80
    assert client.send_ping(b"x")[1] & 0x80
    with pytest.raises(ValueError):
        client.send_ping(b"x" * 126)


@given(st.binary(max_size=40), st.binary(max_size=5000), st.booleans())
def test_binary_parts_are_one_message(prefix, payload, is_client):
    # The payload is masked in the prefix's phase: the peer reads prefix + payload.
    sender = WebSocketCore(is_client=is_client)
    receiver = WebSocketCore(is_client=not is_client)
    header, rest = sender.send_binary_parts(prefix, payload)
    receiver.receive(header + bytes(rest))
    assert receiver.poll_event() == MessageReceived(prefix + payload)


def test_client_mask_keys_differ_from_frame_to_frame():
    client = WebSocketCore(is_client=True)
    keys = {client.send_message(b"x")[2:6] for _ in range(1000)}  # batches refill
    assert len(keys) > 990


def test_close_handshake_initiated_by_client():
    client, server = pair()
    server.receive(client.send_close(4000, "bye"))
    assert client.state is ConnectionState.CLOSE_SENT
    assert client.send_close() == b""  # only one close frame
    assert events(server) == [CloseReceived(4000, "bye")]
    echo = transmits(server)
    assert server.state is ConnectionState.CLOSED and len(echo) == 1
    with pytest.raises(RuntimeError):
        server.send_message("after close")
    client.receive(echo[0])
    assert events(client) == [CloseReceived(4000, "")]
    assert client.state is ConnectionState.CLOSED and transmits(client) == []


def test_close_without_code_and_messages_after_close_are_ignored():
    client, server = pair()
    server.receive(encode_frame(Opcode.CLOSE, b"", mask_key=MASK) + client.send_message("x"))
    assert events(server) == [CloseReceived(1005, "")]
    assert transmits(server) == [encode_frame(Opcode.CLOSE, b"")]
    server.receive(client.send_message("late"))
    assert events(server) == [] and server.buffered_bytes == 0


def violation(frames: bytes, *, is_client: bool = False, limit: int = 1 << 20) -> ProtocolFailed:
    core = WebSocketCore(is_client=is_client, max_message_size=limit)
    core.receive(frames)
    got = events(core)
    assert len(got) >= 1 and isinstance(got[-1], ProtocolFailed), got
    close = transmits(core)
    assert len(close) == 1
    code, _ = parse_close_payload_untrusted(parse_frame_untrusted(close[0])[0].payload)
    assert code == got[-1].code
    assert core.state is ConnectionState.CLOSED
    return got[-1]


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (encode_frame(Opcode.TEXT, b"unmasked"), 1002),
        (bytes([0xC1, 0x80]) + MASK, 1002),  # RSV1 without an extension
        (bytes([0x83, 0x80]) + MASK, 1002),  # reserved opcode
        (bytes([0x8B, 0x80]) + MASK, 1002),  # reserved control opcode
        (bytes([0x09, 0x80]) + MASK, 1002),  # fragmented ping
        (bytes([0x89, 0xFE, 0x00, 0x7E]) + MASK + bytes(126), 1002),  # long ping
        (encode_frame(Opcode.CONTINUATION, b"x", mask_key=MASK), 1002),
        (
            encode_frame(Opcode.TEXT, b"a", fin=False, mask_key=MASK)
            + encode_frame(Opcode.TEXT, b"b", mask_key=MASK),
            1002,
        ),
        (encode_frame(Opcode.TEXT, b"\xff\xfe", mask_key=MASK), 1007),
        (
            encode_frame(Opcode.TEXT, b"\xc3", fin=False, mask_key=MASK)
            + encode_frame(Opcode.CONTINUATION, b"(", mask_key=MASK),
            1007,
        ),
        (encode_frame(Opcode.CLOSE, b"\x03", mask_key=MASK), 1002),
        (encode_frame(Opcode.CLOSE, (1005).to_bytes(2, "big"), mask_key=MASK), 1002),
        (encode_frame(Opcode.CLOSE, (999).to_bytes(2, "big"), mask_key=MASK), 1002),
        (encode_frame(Opcode.CLOSE, b"\x03\xe8\xff", mask_key=MASK), 1007),
        (bytes([0x82, 0xFF]) + (1 << 63).to_bytes(8, "big") + MASK, 1002),
    ],
)
def test_protocol_violations_close_with_the_right_code(frames, code):
    assert violation(frames).code == code


def test_server_frames_must_not_be_masked():
    assert violation(encode_frame(Opcode.TEXT, b"x", mask_key=MASK), is_client=True).code == 1002


def test_frame_over_limit_fails_before_the_payload_arrives():
    header = encode_frame(Opcode.BINARY, bytes(5000), mask_key=MASK)[:8]  # header + mask only
    assert violation(header, limit=4096).code == 1009


def test_fragmented_message_over_limit():
    frames = b"".join(
        encode_frame(op, bytes(600), fin=fin, mask_key=MASK)
        for op, fin in [(Opcode.BINARY, False), (Opcode.CONTINUATION, True)]
    )
    assert violation(frames, limit=1000).code == 1009


def test_idle_core_holds_no_buffer():
    client, server = pair()
    wire = client.send_message(b"x" * 100_000)
    server.receive(wire[:50_000])
    assert events(server) == [] and server.bytes_missing == len(wire) - 50_000
    server.receive(wire[50_000:])
    assert events(server) == [MessageReceived(b"x" * 100_000)]
    assert server._buffer == b"" and server.buffered_bytes == 0


@given(
    st.lists(st.one_of(st.text(max_size=50), st.binary(max_size=3000)), max_size=8),
    st.lists(st.integers(1, 700), min_size=1, max_size=10),
)
def test_messages_survive_any_chunking(messages, cuts):
    client, server = pair()
    wire = b"".join(client.send_message(m) for m in messages)
    got, pos, i = [], 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        server.receive(wire[pos : pos + step])
        got += events(server)
        pos, i = pos + step, i + 1
    assert got == [MessageReceived(m) for m in messages]


@given(st.binary(max_size=300), st.booleans(), st.integers(1, 50))
def test_core_never_raises_on_any_bytes(data, is_client, chunk):
    core = WebSocketCore(is_client=is_client, max_message_size=64)
    for i in range(0, len(data), chunk):
        core.receive(data[i : i + chunk])
        for event in events(core):
            assert isinstance(
                event,
                MessageReceived | PingReceived | PongReceived | CloseReceived | ProtocolFailed,
            )
    transmits(core)


raw_frames = st.lists(
    st.tuples(
        st.integers(0, 255),  # first byte: FIN, RSV and any opcode
        st.binary(max_size=140),
        st.one_of(st.none(), st.binary(min_size=4, max_size=4)),
    ),
    max_size=6,
)


@given(raw_frames, st.booleans(), st.integers(1, 64))
def test_core_never_raises_on_structured_frames(frames, is_client, chunk):
    wire = b"".join(
        bytes([b0]) + encode_frame(0, payload, mask_key=key)[1:] for b0, payload, key in frames
    )
    core = WebSocketCore(is_client=is_client, max_message_size=100)
    got = []
    for i in range(0, len(wire), chunk):
        core.receive(wire[i : i + chunk])
        got += events(core)
    sent = transmits(core)
    # At most one close frame ever leaves, and nothing is parsed after a failure/close.
    assert sum(1 for t in sent if t[0] & 0x0F == Opcode.CLOSE) <= 1
    terminal = [e for e in got if isinstance(e, CloseReceived | ProtocolFailed)]
    assert len(terminal) <= 1 and (not terminal or got[-1] is terminal[0])


# --- handshake ---------------------------------------------------------------------------

REQUEST = (
    b"GET /chat?x=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_server_handshake_rfc_example():
    assert find_head_end_untrusted(REQUEST + b"\x81\x00") == len(REQUEST)
    assert find_head_end_untrusted(REQUEST[:-1]) is None
    request = parse_request_untrusted(REQUEST)
    assert (request.method, request.target) == ("GET", "/chat?x=1")
    assert request.header("origin") == "http://example.com"
    assert is_upgrade_request(request)
    key = validate_upgrade_request(request)
    assert accept_token(key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    response = parse_response_untrusted(build_accept_response(key))
    assert response.status == 101
    validate_upgrade_response(response, key)
    with pytest.raises(WebSocketHandshakeError):
        validate_upgrade_response(response, "AAAAAAAAAAAAAAAAAAAAAA==")


def test_client_request_is_accepted_by_the_server_side():
    key = "AAECAwQFBgcICQoLDA0ODw=="
    raw = build_upgrade_request("[::1]:8080", "/p", key, [("X-Token", "t")])
    request = parse_request_untrusted(raw)
    assert validate_upgrade_request(request) == key
    assert request.header("host") == "[::1]:8080" and request.header("x-token") == "t"
    with pytest.raises(ValueError):
        build_upgrade_request("h", "/p", key, [("Bad\r\nHeader", "x")])


def with_header(name: bytes, value: bytes | None) -> bytes:
    lines = [line for line in REQUEST.split(b"\r\n") if not line.lower().startswith(name + b":")]
    if value is not None:
        lines.insert(1, name + b": " + value)
    return b"\r\n".join(lines)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (with_header(b"sec-websocket-key", None), 400),
        (with_header(b"sec-websocket-key", b"c2hvcnQ="), 400),
        (with_header(b"sec-websocket-version", b"8"), 426),
        (with_header(b"connection", b"keep-alive"), 400),
        (with_header(b"host", None), 400),
        (REQUEST.replace(b"GET", b"POST", 1), 405),
    ],
)
def test_invalid_upgrade_requests(raw, status):
    with pytest.raises(WebSocketHandshakeError) as info:
        validate_upgrade_request(parse_request_untrusted(raw))
    assert info.value.status == status


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 65 + b"\r\n",
    ],
)
def test_malformed_requests(raw):
    with pytest.raises(WebSocketHandshakeError):
        parse_request_untrusted(raw)


def test_head_size_limit():
    with pytest.raises(WebSocketHandshakeError) as info:
        find_head_end_untrusted(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 3000)
    assert info.value.status == 431


def test_plain_http_response():
    raw = build_http_response(200, b"ok", content_type="text/plain")
    response = parse_response_untrusted(raw[: find_head_end_untrusted(raw)])
    assert response.status == 200 and response.header("content-length") == "2"
    assert raw.endswith(b"\r\n\r\nok")
    assert not is_upgrade_request(HttpRequest("GET", "/healthz", (("host", "a"),)))


@given(st.binary(max_size=400))
def test_handshake_parsers_raise_only_parse_error(data):
    for parse in (parse_request_untrusted, parse_response_untrusted):
        try:
            parsed = parse(data)
        except WebSocketParseError:
            continue
        try:
            if isinstance(parsed, HttpRequest):
                validate_upgrade_request(parsed)
            else:
                validate_upgrade_response(parsed, "dGhlIHNhbXBsZSBub25jZQ==")
        except WebSocketParseError:
            pass
    try:
        find_head_end_untrusted(data, 200)
    except WebSocketParseError:
        pass


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["host", "upgrade", "connection", "sec-websocket-key", "x"]),
            st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=30),
        ),
        max_size=8,
    )
)
def test_request_validation_with_structured_fuzz(headers):
    raw = (
        b"GET / HTTP/1.1\r\n"
        + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)
        + b"\r\n"
    )
    try:
        validate_upgrade_request(parse_request_untrusted(raw))
    except WebSocketParseError:
        pass
