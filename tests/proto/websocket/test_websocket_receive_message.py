"""WebSocketCore.receive_message: a read that is one whole binary frame comes back as the
message itself, without an event; any other input is taken as ``receive`` takes it, and
the messages, events and replies that come out are exactly those of receive + poll_event.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from darkswap_trio.proto.websocket._connection import (
    MessageReceived,
    Opcode,
    ProtocolFailed,
    WebSocketCore,
    encode_frame,
    parse_frame_untrusted,
)

MASK = bytes.fromhex("37fa213d")


def drain(core: WebSocketCore) -> list[object]:
    out: list[object] = []
    while (event := core.poll_event()) is not None:
        out.append(event)
    while (data := core.poll_transmit()) is not None:
        parsed = parse_frame_untrusted(data)  # a client's replies are masked at random
        assert parsed is not None
        out.append(("transmit", parsed[0]))
    return out


def test_a_whole_binary_frame_is_the_message_with_no_event():
    client = WebSocketCore(is_client=True)
    assert client.receive_message(encode_frame(Opcode.BINARY, b"hello")) == b"hello"
    assert client.poll_event() is None
    assert client.buffered_bytes == 0


def test_a_server_unmasks_a_whole_frame():
    server = WebSocketCore(is_client=False)
    frame = encode_frame(Opcode.BINARY, b"x" * 300, mask_key=MASK)  # a 16-bit length
    assert server.receive_message(frame) == b"x" * 300
    assert server.poll_event() is None


def test_anything_else_is_left_to_poll_event():
    client = WebSocketCore(is_client=True)
    two = encode_frame(Opcode.BINARY, b"a") + encode_frame(Opcode.BINARY, b"b")
    assert client.receive_message(two) is None
    assert drain(client) == [MessageReceived(b"a"), MessageReceived(b"b")]
    assert client.receive_message(encode_frame(Opcode.TEXT, b"t")) is None
    assert drain(client) == [MessageReceived("t")]
    frame = encode_frame(Opcode.BINARY, b"half")
    assert client.receive_message(frame[:3]) is None
    assert client.receive_message(frame[3:]) is None  # something was pending
    assert drain(client) == [MessageReceived(b"half")]


def test_a_masked_frame_to_a_client_still_fails_the_connection():
    client = WebSocketCore(is_client=True)
    assert client.receive_message(encode_frame(Opcode.BINARY, b"m", mask_key=MASK)) is None
    (event, *_) = drain(client)
    assert isinstance(event, ProtocolFailed)


def test_size_limits_still_apply():
    server = WebSocketCore(is_client=False, max_message_size=10)
    assert server.receive_message(encode_frame(Opcode.BINARY, b"y" * 11, mask_key=MASK)) is None
    (event, *_) = drain(server)
    assert isinstance(event, ProtocolFailed) and event.code == 1009
    relay = WebSocketCore(is_client=False, discard_above=10)
    assert relay.receive_message(encode_frame(Opcode.BINARY, b"z" * 11, mask_key=MASK)) is None
    assert len(drain(relay)[0]) == 11  # MessageDiscarded, as receive() reports it


def test_a_short_client_message_is_framed_whole():
    # The round-trip path writes one bytes object, masked once: nothing is left in `rest`.
    client = WebSocketCore(is_client=True)
    header, rest = client.send_binary_parts(b"\x01" + b"k" * 16, b"payload")
    assert rest == b""
    server = WebSocketCore(is_client=False)
    assert server.receive_message(header) == b"\x01" + b"k" * 16 + b"payload"


_whole = st.tuples(st.just(Opcode.BINARY), st.binary(max_size=140), st.just(True))
_frames = st.one_of(
    _whole,
    _whole,
    _whole,
    st.tuples(st.just(Opcode.BINARY), st.binary(min_size=120, max_size=400), st.just(True)),
    st.tuples(st.just(Opcode.BINARY), st.binary(max_size=20), st.booleans()),  # fragments
    st.tuples(st.just(Opcode.CONTINUATION), st.binary(max_size=20), st.booleans()),
    st.tuples(st.just(Opcode.TEXT), st.text(max_size=20).map(str.encode), st.booleans()),
    st.tuples(st.sampled_from([Opcode.PING, Opcode.PONG]), st.binary(max_size=10), st.just(True)),
    st.tuples(st.just(Opcode.CLOSE), st.sampled_from([b"", b"\x03\xe8bye"]), st.just(True)),
    st.tuples(st.just(-1), st.binary(min_size=1, max_size=6), st.just(True)),  # garbage
)


def run_both(chunks, *, is_client, max_message_size=1 << 20, discard_above=None) -> int:
    """Feed ``chunks`` to a core through receive() and to another through
    receive_message(); assert the same output. Returns how many took the fast path."""

    def core() -> WebSocketCore:
        return WebSocketCore(
            is_client=is_client, max_message_size=max_message_size, discard_above=discard_above
        )

    plain, fast = core(), core()
    expected: list[object] = []
    got: list[object] = []
    whole = 0
    for chunk in chunks:
        plain.receive(chunk)
        expected += drain(plain)
        message = fast.receive_message(chunk)
        if message is not None:
            whole += 1
            got.append(MessageReceived(message))
        got += drain(fast)
    assert got == expected
    assert (fast.state, fast.close_sent, fast.buffered_bytes) == (
        plain.state,
        plain.close_sent,
        plain.buffered_bytes,
    )
    return whole


def split(pieces: list[bytes], cut_after: list[bool], cuts: list[int]) -> list[bytes]:
    """The stream of ``pieces`` in reads that end after the pieces ``cut_after`` says
    and at the offsets ``cuts``."""
    stream = b"".join(pieces)
    ends = {len(stream)}
    position = 0
    for piece, cut in zip(pieces, cut_after, strict=False):  # cut_after may be longer
        position += len(piece)
        if cut:
            ends.add(position)
    ends.update(cut for cut in cuts if 0 < cut < len(stream))
    chunks, start = [], 0
    for end in sorted(ends):
        chunks.append(stream[start:end])
        start = end
    return chunks


@settings(max_examples=300)
@given(
    frames=st.lists(_frames, max_size=12),
    is_client=st.booleans(),
    wrong_mask=st.integers(0, 4).map(lambda n: n == 0),
    max_message_size=st.sampled_from([1 << 20, 1 << 20, 100]),
    discard_above=st.sampled_from([None, None, 130]),
    cut_after=st.lists(st.integers(0, 3).map(bool), min_size=12, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=6000), max_size=4),
)
def test_receive_message_yields_what_receive_and_poll_event_yield(
    frames, is_client, wrong_mask, max_message_size, discard_above, cut_after, cuts
):
    masked = is_client if wrong_mask else not is_client  # what the peer sends
    pieces = [
        payload
        if opcode == -1
        else encode_frame(opcode, payload, fin=fin, mask_key=MASK if masked else None)
        for opcode, payload, fin in frames
    ]
    run_both(
        split(pieces, cut_after, cuts),
        is_client=is_client,
        max_message_size=max_message_size,
        discard_above=discard_above,
    )


@settings(max_examples=200)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=10),
    is_client=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=2),
)
def test_reads_of_whole_frames_take_the_fast_path(sizes, is_client, cuts):
    mask_key = None if is_client else MASK
    pieces = [encode_frame(Opcode.BINARY, bytes([n % 251]) * n, mask_key=mask_key) for n in sizes]
    whole = run_both(split(pieces, [True] * len(pieces), cuts), is_client=is_client)
    assert whole >= len(sizes) - len(cuts)  # a cut inside a frame costs that frame


@given(st.binary(max_size=300), st.booleans())
def test_message_parts_are_one_frame(payload, is_client):
    # Short server frames are built without the general header encoder.
    header, rest = WebSocketCore(is_client=is_client).send_message_parts(payload)
    assert WebSocketCore(is_client=not is_client).receive_message(header + bytes(rest)) == payload


@given(
    prefix=st.binary(max_size=40),
    size=st.sampled_from([0, 1, 125, 126, 127, 1000, 1023, 1024, 1025, 5000]),
    is_client=st.booleans(),
    memoryview_payload=st.booleans(),
)
def test_binary_parts_of_any_size_are_one_frame(prefix, size, is_client, memoryview_payload):
    # Whole-frame client messages below 1 KiB, 7- and 16-bit lengths either side of 126.
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    part = memoryview(payload) if memoryview_payload else payload
    header, rest = WebSocketCore(is_client=is_client).send_binary_parts(prefix, part)
    if is_client and len(prefix) + size < 1024:
        assert rest == b""
    peer = WebSocketCore(is_client=not is_client)
    assert peer.receive_message(header + bytes(rest)) == prefix + payload


@settings(max_examples=20)
@given(size=st.sampled_from([125, 126, 300, 65535, 65536, 70000]))
def test_a_server_message_of_any_length_is_one_frame(size):
    # The relay's forward gets its 2- or 4-byte header directly below 64 KiB.
    payload = b"\x07" * size
    header, rest = WebSocketCore(is_client=False).send_message_parts(payload)
    assert len(header) == (2 if size < 126 else 4 if size < 65536 else 10)
    client = WebSocketCore(is_client=True, max_message_size=1 << 20)
    client.receive(header + bytes(rest))
    events = drain(client)
    assert len(events) == 1 and events[0].data == payload  # type: ignore[attr-defined]
