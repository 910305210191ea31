"""A second channel on a PeerLink (topics): its messages are taken wherever they sit
among unread application messages, and the ACK/window accounting stays sound."""

from darkswap_trio.proto.link import LinkCore

PREFIX = b"\x00darkswap-topic/1\x00"


def pair():
    a = LinkCore(
        max_message_size=1000, window=4000, ack_delay=0.0, ping_interval=1.0, path_timeout=3.0
    )
    b = LinkCore(
        max_message_size=1000, window=4000, ack_delay=0.0, ping_interval=1.0, path_timeout=3.0
    )
    for core in (a, b):
        core.add_path("p", 1200, 0.0)
        core.use_path("p")
    return a, b


def move(src, dst, now=0.0):
    while (frame := src.poll_transmit("p", now)) is not None:
        dst.receive_frame("p", frame, now)


def test_channel_messages_skip_unread_application_messages():
    a, b = pair()
    for message in (b"app 1", PREFIX + b"t1", b"app 2", PREFIX + b"t2"):
        assert a.queue_message(message)
    move(a, b)
    assert b.take_prefixed(PREFIX, 0.0) == [PREFIX + b"t1", PREFIX + b"t2"]
    assert b.take_prefixed(PREFIX, 0.0) == []
    assert b.next_message(0.0) == b"app 1"
    assert b.next_message(0.0) == b"app 2"
    assert b.next_message(0.0) is None


def test_taken_channel_bytes_are_acknowledged_and_free_the_window():
    a, b = pair()
    assert a.queue_message(b"unread application message")
    taken = 0
    # Ten times the window in channel bytes while the application reads nothing: each
    # message is taken, acknowledged, and frees the window for the next one.
    for i in range(40):
        assert a.queue_message(PREFIX + bytes(1000 - len(PREFIX))), f"window full at message {i}"
        move(a, b, i)
        taken += len(b.take_prefixed(PREFIX, i))
        b.handle_timeout(i + 0.5)
        move(b, a, i + 0.5)
    assert taken == 40
    assert b.next_message(99.0) == b"unread application message"
    assert a.statistics().unacked_bytes < 4000
