"""Two of our PeerConnections on loopback: signaling, channels, close, backpressure."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from darkswap_trio._peer_connection import (
    PeerConnection,
    PeerConnectionConfig,
    SignalingStateError,
    open_peer_connection,
)
from darkswap_trio.proto.datachannel import MessageTooLarge
from darkswap_trio.proto.errors import SdpParseError

LOOPBACK = PeerConnectionConfig(host_addresses=["127.0.0.1"], ice_pacing=0.005)


def without_candidates(sdp: str) -> str:
    """What a trickle-only peer (a browser right after createOffer) signals."""
    lines = sdp.split("\r\n")
    kept = [line for line in lines if not line.startswith(("a=candidate", "a=end-of-cand"))]
    return "\r\n".join(kept)


async def trickle(source: PeerConnection, sink: PeerConnection) -> list[str | None]:
    sent: list[str | None] = []
    async for candidate in source.local_candidates():
        sink.add_ice_candidate(candidate, sdp_mid="0", sdp_mline_index=0)
        sent.append(candidate)
    return sent


async def connect(a: PeerConnection, b: PeerConnection, *, trickled: bool = False) -> None:
    offer = await a.create_offer()
    assert "a=ice-pacing:5" in offer
    if trickled:
        offer = without_candidates(offer)
    await b.set_remote_description(offer, "offer")
    answer = await b.create_answer()
    if trickled:
        answer = without_candidates(answer)
        assert "a=candidate" not in answer
    await a.set_remote_description(answer, "answer")
    if trickled:
        a_sent = await trickle(a, b)
        b_sent = await trickle(b, a)
        assert a_sent[-1] is None and b_sent[-1] is None
        assert all(c.startswith("candidate:") and " 127.0.0.1 " in c for c in a_sent[:-1])
    await a.wait_connected()
    await b.wait_connected()
    assert a.connection_state == b.connection_state == "connected"


@pytest.fixture
async def pair():
    async with open_peer_connection(LOOPBACK) as a, open_peer_connection(LOOPBACK) as b:
        with trio.fail_after(10):
            await connect(a, b)
        yield a, b


async def open_channel(a: PeerConnection, b: PeerConnection, label: str, **options):
    ours = await a.create_data_channel(label, **options)
    theirs = await b.accept_data_channel()
    return ours, theirs


@pytest.mark.parametrize("trickled", [False, True], ids=["candidates-in-sdp", "trickled"])
async def test_connect_and_exchange_both_directions(trickled):
    with trio.fail_after(10):
        async with open_peer_connection(LOOPBACK) as a, open_peer_connection(LOOPBACK) as b:
            await connect(a, b, trickled=trickled)
            a_to_b, b_side = await open_channel(a, b, "from-a", protocol="chat")
            b_to_a, a_side = await open_channel(b, a, "from-b")
            assert (b_side.label, b_side.protocol, b_side.id) == ("from-a", "chat", a_to_b.id)
            assert a_side.label == "from-b"
            # Offerer is the DTLS server (we answer a=setup:active): odd ids; answerer even.
            assert a_to_b.id % 2 == 1 and b_to_a.id % 2 == 0
            for message in ["text", b"bytes", "", b"", "\u00e9\U0001f600"]:
                await a_to_b.send(message)
                assert await b_side.receive() == message
                await b_to_a.send(message)
                assert await a_side.receive() == message
                await b_side.send(message)  # the accepted end sends too
                assert await a_to_b.receive() == message
            stats = a.statistics()
            assert stats.connection_state == "connected" and stats.data_channels == 2
            assert stats.ice.selected_local[0] == "127.0.0.1"
            assert stats.sctp.messages_sent == 7  # 5 user messages, DCEP OPEN, DCEP ACK
            assert a_to_b.statistics().messages_sent == 5


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"ordered": False},
        {"max_retransmits": 0},
        {"ordered": False, "max_retransmits": 3},
        {"max_packet_life_time": 500},
    ],
    ids=["reliable", "unordered", "rexmit-0", "unordered-rexmit-3", "lifetime-500ms"],
)
async def test_channel_reliability_options(pair, options):
    a, b = pair
    with trio.fail_after(10):
        ours, theirs = await open_channel(a, b, "opts", **options)
        for channel in (ours, theirs):
            assert channel.ordered == options.get("ordered", True)
            assert channel.max_retransmits == options.get("max_retransmits")
            assert channel.max_packet_life_time == options.get("max_packet_life_time")
        sent = [b"%d" % i for i in range(200)]
        for message in sent:
            await ours.send(message)
        received = [await theirs.receive() for _ in sent]  # loopback loses nothing
        if options.get("ordered", True):
            assert received == sent
        else:
            assert sorted(received) == sorted(sent)


async def test_negotiated_channel(pair):
    a, b = pair
    with trio.fail_after(10):
        ours = await a.create_data_channel("n", negotiated_id=42)
        theirs = await b.create_data_channel("n", negotiated_id=42)
        assert ours.negotiated and ours.id == theirs.id == 42
        await ours.send("hi")
        assert await theirs.receive() == "hi"
        await theirs.send(b"back")
        assert await ours.receive() == b"back"


async def test_large_messages_up_to_max_message_size(pair):
    a, b = pair
    with trio.fail_after(10):
        ours, theirs = await open_channel(a, b, "big")
        for size in (1, 1159, 1160, 1161, 65536, 262143, 262144):
            payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
            await ours.send(payload)
            assert await theirs.receive() == payload
        text = "\u00e9" * 131072  # 262144 UTF-8 bytes
        await theirs.send(text)
        assert await ours.receive() == text
        with pytest.raises(MessageTooLarge):
            await ours.send(b"x" * 262145)
        await ours.send(b"still usable")
        assert await theirs.receive() == b"still usable"


async def test_many_channels_at_once(pair):
    a, b = pair
    count = 40
    with trio.fail_after(10):
        ours = [await a.create_data_channel(f"c{i}") for i in range(count)]
        theirs = {}
        for _ in range(count):
            channel = await b.accept_data_channel()
            theirs[channel.label] = channel
        assert len({c.id for c in ours}) == count

        async def talk(i: int) -> None:
            for j in range(20):
                await ours[i].send(f"{i}:{j}")
            for j in range(20):
                assert await theirs[f"c{i}"].receive() == f"{i}:{j}"
            await theirs[f"c{i}"].send(b"done")
            assert await ours[i].receive() == b"done"

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(talk, i)
        assert a.statistics().data_channels == count


@pytest.mark.parametrize("closer", ["opener", "acceptor"])
async def test_close_is_seen_by_the_other_side(pair, closer):
    a, b = pair
    with trio.fail_after(10):
        ours, theirs = await open_channel(a, b, "closing")
        closing, other = (ours, theirs) if closer == "opener" else (theirs, ours)
        await closing.send("last words")
        await closing.aclose()
        assert await other.receive() == "last words"  # data before the reset arrives first
        with pytest.raises(trio.EndOfChannel):
            await other.receive()
        with pytest.raises(trio.BrokenResourceError):
            await other.send("too late")
        with pytest.raises(trio.ClosedResourceError):
            await closing.send("after close")
        await closing.wait_closed()
        await other.wait_closed()
        assert closing.state == other.state == "closed"
        assert a.statistics().data_channels == b.statistics().data_channels == 0
        # The stream id is free again and a new channel works.
        again, again_theirs = await open_channel(a, b, "again")
        await again.send("ok")
        assert await again_theirs.receive() == "ok"


async def test_backpressure_blocks_the_sender_not_memory():
    config = PeerConnectionConfig(
        host_addresses=["127.0.0.1"], ice_pacing=0.005,
        high_water_mark=64 * 1024, receive_buffer_size=64 * 1024,
    )
    message = b"m" * 16384
    total = 400  # 6.5 MiB: far more than every buffer on the way together
    with trio.fail_after(15):
        async with open_peer_connection(config) as a, open_peer_connection(config) as b:
            await connect(a, b)
            ours, theirs = await open_channel(a, b, "flood")
            sent = 0

            async def sender() -> None:
                nonlocal sent
                for _ in range(total):
                    await ours.send(message)
                    sent += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                await trio.testing.wait_all_tasks_blocked(cushion=0.1)
                # Stalled: our channel buffer is full, SCTP's 1 MiB window closed, the
                # peer's buffered amount is above its high-water mark.
                assert 0 < sent < total // 2
                assert ours.buffered_amount > 64 * 1024
                waiting = theirs.statistics().received_buffered
                assert 1 <= waiting <= 64 * 1024 // len(message) + 1
                for _ in range(total):
                    assert await theirs.receive() == message
            assert sent == total


async def test_cancelling_one_side_closes_promptly_and_the_peer_sees_it():
    with trio.fail_after(10):
        async with open_peer_connection(LOOPBACK) as b:
            with trio.CancelScope() as scope:
                async with open_peer_connection(LOOPBACK) as a:
                    await connect(a, b)
                    ours, theirs = await open_channel(a, b, "doomed")
                    await ours.send("x")
                    assert await theirs.receive() == "x"
                    scope.cancel()
                    await trio.sleep_forever()
            assert a.connection_state == "closed"
            with pytest.raises(trio.BrokenResourceError):
                await theirs.receive()  # the ABORT reached b
            assert b.connection_state == "disconnected"
            with pytest.raises(trio.BrokenResourceError):
                await b.accept_data_channel()


async def test_signaling_misuse_and_bad_input():
    with trio.fail_after(10):
        async with open_peer_connection(LOOPBACK) as a, open_peer_connection(LOOPBACK) as b:
            with pytest.raises(SignalingStateError):
                await a.create_answer()
            with pytest.raises(SdpParseError):
                await a.set_remote_description("v=0\r\nnot sdp", "offer")
            offer = await a.create_offer()
            with pytest.raises(SignalingStateError):
                await a.set_remote_description(offer, "offer")
            with pytest.raises(SdpParseError):
                b.add_ice_candidate("candidate:garbage")
            b.add_ice_candidate("candidate:1 1 udp 1 abc.local 9 typ host")  # mDNS: ignored
            await b.set_remote_description(offer, "offer")
            await a.set_remote_description(await b.create_answer(), "answer")
            await a.wait_connected()
            with pytest.raises(ValueError):
                await a.create_data_channel("x", max_retransmits=1, max_packet_life_time=1)
