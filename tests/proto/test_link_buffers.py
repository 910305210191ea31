"""The link core's stream buffers against a plain bytes model, cut at every boundary."""

import struct

from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio.proto.link_buffers import MessageCutter, SendBuffer

messages = st.lists(
    st.one_of(st.binary(max_size=40), st.binary(min_size=4090, max_size=4200)), max_size=12
)


def stream_of(items):
    return b"".join(struct.pack(">I", len(m)) + m for m in items)


@given(messages, st.lists(st.integers(1, 5000), min_size=1, max_size=40), st.data())
def test_send_buffer_reads_the_stream_and_rewinds_to_acked(items, limits, data):
    buf = SendBuffer()
    for m in items:
        buf.append_message(m)
    stream = stream_of(items)
    assert buf.written == len(stream)
    for limit in limits:
        start = buf.position
        got = b"".join(bytes(p) for p in buf.read(limit))
        assert got == stream[start : start + limit]
        assert buf.position == start + len(got)
        action = data.draw(st.sampled_from(["none", "ack", "rewind"]))
        if action == "ack":
            buf.release(data.draw(st.integers(buf.acked, buf.written)))
            assert buf.position >= buf.acked
        elif action == "rewind":
            buf.seek(buf.acked)
    buf.seek(buf.acked)
    assert b"".join(bytes(p) for p in buf.read(1 << 30)) == stream[buf.acked :]


def test_send_buffer_compacts_released_pieces():
    buf = SendBuffer()
    for i in range(5000):
        buf.append_message(b"x" * (i % 7))
        if i % 3 == 0:
            buf.release(buf.written - 3)
    buf.release(buf.written)
    assert buf.read(100) == []
    assert len(buf._pieces) < 3000


@given(messages, st.lists(st.integers(1, 300), max_size=30))
def test_cutter_yields_the_messages_whatever_the_cuts(items, cuts):
    stream = stream_of(items)
    out = []
    cutter = MessageCutter(1 << 20)
    pos = 0
    for cut in cuts + [len(stream)]:
        cutter.feed(memoryview(stream)[pos : pos + cut], out.append)
        pos += cut
        if pos >= len(stream):
            break
    cutter.feed(stream[pos:], out.append)
    assert out == items
    assert cutter.buffered == 0


def test_cutter_copies_what_the_caller_may_change():
    out = []
    cutter = MessageCutter(1 << 20)
    stream = stream_of([b"a" * 100])
    chunk = bytearray(stream[:50])
    cutter.feed(chunk, out.append)
    chunk[:] = b"z" * 50  # the caller reuses its buffer
    cutter.feed(bytearray(stream[50:]), out.append)
    assert out == [b"a" * 100]


def test_poll_transmit_can_leave_a_short_tail_for_later():
    from darkswap_trio.proto.link import DATA, LinkCore

    core = LinkCore()
    core.add_path("r", 1009, 0.0)  # 1000 bytes of payload per DATA frame
    core.use_path("r")
    assert core.poll_transmit("r", 0.0)[0] != DATA  # the path's first ACK
    core.queue_message(b"a" * 1500)  # 1504 stream bytes: a full frame and a short tail
    assert len(core.poll_transmit("r", 0.0, short=False)) == 1009
    assert core.poll_transmit("r", 0.0, short=False) is None
    assert core.wants_transmit("r", 0.0)
    core.queue_message(b"b" * 600)  # the tail and the next message fill a frame
    assert len(core.poll_transmit("r", 0.0, short=False)) == 1009
    assert len(core.poll_transmit("r", 0.0)) == 9 + 504 + 604 - 1000
