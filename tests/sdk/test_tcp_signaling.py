"""The TCP signaling helper: JSON lines both ways over loopback; its parser is total."""

import json

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio.proto.errors import SignalingParseError
from darkswap_trio.webrtc import SignalMessage, open_tcp_signaling
from darkswap_trio.webrtc._tcp_signaling import MAX_LINE, parse_signal_line_untrusted


async def test_offer_answer_and_candidates_cross_a_tcp_connection():
    with trio.fail_after(10):
        ports = []
        async with trio.open_nursery() as nursery:
            received = []

            async def answerer():
                async with open_tcp_signaling(
                    "127.0.0.1", 0, listen=True, on_listening=ports.append
                ) as signaling:
                    for _ in range(3):
                        received.append(await signaling.receive())
                    await signaling.send_description("answer", "v=0 answer")
                    with pytest.raises(trio.EndOfChannel):
                        await signaling.receive()

            nursery.start_soon(answerer)
            while not ports:
                await trio.sleep(0.001)
            async with open_tcp_signaling("127.0.0.1", ports[0]) as signaling:
                await signaling.send_description("offer", "v=0 offer")
                await signaling.send_candidate("candidate:1 1 udp 1 127.0.0.1 9 typ host")
                await signaling.send_candidate(None)
                assert await signaling.receive() == SignalMessage("answer", sdp="v=0 answer")
        assert received == [
            SignalMessage("offer", sdp="v=0 offer"),
            SignalMessage("candidate", candidate="candidate:1 1 udp 1 127.0.0.1 9 typ host"),
            SignalMessage("candidate", candidate=None),
        ]


def test_bad_lines_raise_signaling_parse_error():
    for line in (
        b"{",
        b"[]",
        b'{"type": "x"}',
        b'{"type": "offer"}',
        b'{"type": "candidate", "candidate": 3}',
        b"\xff",
    ):
        with pytest.raises(SignalingParseError):
            parse_signal_line_untrusted(line)
    assert MAX_LINE >= 16384


@given(
    st.binary(max_size=200)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["type", "sdp", "candidate", "x"]) | st.text(max_size=3),
                inner,
                max_size=4,
            )
        ),
        max_leaves=10,
    ).map(lambda v: json.dumps(v).encode())
)
def test_any_line_raises_only_signaling_parse_error(line):
    try:
        message = parse_signal_line_untrusted(line)
    except SignalingParseError:
        return
    assert message.type in ("offer", "answer", "candidate")
