"""WebSocketCore ``discard_above`` (issue #10 item 6): an oversize data frame is reported
as MessageDiscarded at its header and its payload is dropped as it arrives, so the core
never buffers more than one allowed frame plus one read."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from darkswap_trio.proto.websocket._connection import (
    MessageDiscarded,
    MessageReceived,
    Opcode,
    ProtocolFailed,
    WebSocketCore,
    encode_frame,
)

LIMIT = 1000


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return encode_frame(opcode, payload, fin=fin, mask_key=os.urandom(4))


def events(core: WebSocketCore) -> list:
    out = []
    while (e := core.poll_event()) is not None:
        out.append(e)
    return out


def test_oversize_frame_is_discarded_at_its_header_and_never_buffered():
    core = WebSocketCore(is_client=False, max_message_size=4 * LIMIT, discard_above=LIMIT)
    big = client_frame(Opcode.BINARY, b"b" * (3 * LIMIT))
    after = client_frame(Opcode.TEXT, b"next")
    stream = big + after
    seen = []
    for i in range(0, len(stream), 100):
        core.receive(stream[i : i + 100])
        seen += events(core)
        assert core.buffered_bytes <= 100  # never more than one read
    assert seen == [MessageDiscarded(3 * LIMIT), MessageReceived("next")]
    assert len(seen[0]) == 3 * LIMIT


def test_allowed_frames_and_over_hard_limit_are_unchanged():
    core = WebSocketCore(is_client=False, max_message_size=4 * LIMIT, discard_above=LIMIT)
    core.receive(client_frame(Opcode.BINARY, b"a" * LIMIT))
    assert events(core) == [MessageReceived(b"a" * LIMIT)]
    core.receive(client_frame(Opcode.BINARY, b"z" * (4 * LIMIT + 1)))
    [failed] = events(core)
    assert isinstance(failed, ProtocolFailed) and failed.code == 1009


def test_oversize_fragments_fail_1009():
    core = WebSocketCore(is_client=False, max_message_size=4 * LIMIT, discard_above=LIMIT)
    core.receive(client_frame(Opcode.BINARY, b"a" * 600, fin=False))
    core.receive(client_frame(Opcode.CONTINUATION, b"a" * 600, fin=True))
    [failed] = events(core)
    assert isinstance(failed, ProtocolFailed) and failed.code == 1009
    core = WebSocketCore(is_client=False, max_message_size=4 * LIMIT, discard_above=LIMIT)
    core.receive(client_frame(Opcode.BINARY, b"a" * (LIMIT + 1), fin=False))
    [failed] = events(core)
    assert isinstance(failed, ProtocolFailed) and failed.code == 1009


def test_discarded_payload_may_arrive_in_a_reused_buffer():
    core = WebSocketCore(is_client=False, max_message_size=4 * LIMIT, discard_above=LIMIT)
    stream = client_frame(Opcode.BINARY, b"q" * 2000) + client_frame(Opcode.BINARY, b"ok")
    scratch = bytearray(64)
    seen = []
    for i in range(0, len(stream), 64):
        chunk = stream[i : i + 64]
        scratch[: len(chunk)] = chunk
        core.receive(memoryview(scratch)[: len(chunk)])
        scratch[:] = bytes(64)  # the core must not have kept a reference
        seen += events(core)
    assert seen == [MessageDiscarded(2000), MessageReceived(b"ok")]


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3 * LIMIT), min_size=1, max_size=8),
    chunk=st.integers(1, 700),
)
def test_any_chunking_gives_the_same_events_and_a_bounded_buffer(sizes, chunk):
    stream = b"".join(
        client_frame(Opcode.BINARY, bytes([i % 251]) * n) for i, n in enumerate(sizes)
    )
    expected = [
        MessageDiscarded(n) if n > LIMIT else MessageReceived(bytes([i % 251]) * n)
        for i, n in enumerate(sizes)
    ]
    core = WebSocketCore(is_client=False, max_message_size=4 * LIMIT, discard_above=LIMIT)
    seen = []
    for i in range(0, len(stream), chunk):
        core.receive(stream[i : i + chunk])
        seen += events(core)
        # One allowed frame (payload + 14-byte header) plus what one read appended.
        assert core.buffered_bytes <= LIMIT + 14 + chunk
    assert seen == expected


@given(st.binary(max_size=3000))
def test_garbage_only_fails_the_protocol(data):
    core = WebSocketCore(is_client=False, max_message_size=4 * LIMIT, discard_above=LIMIT)
    core.receive(data)
    seen = events(core)  # poll_event raises nothing: bad input is a ProtocolFailed event
    failures = [e for e in seen if isinstance(e, ProtocolFailed)]
    assert len(failures) <= 1 and (not failures or seen[-1] is failures[0])
    assert core.buffered_bytes <= len(data)
