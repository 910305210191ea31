"""Two of our PeerConnections on loopback: signaling, channels, close, backpressure."""

from __future__ import annotations

import dataclasses

import pytest
import trio
import trio.testing

from darkswap_trio.proto.datachannel import MessageTooLarge
from darkswap_trio.proto.errors import SdpParseError
from darkswap_trio.webrtc import (
    PeerConnection,
    PeerConnectionConfig,
    SignalingStateError,
    open_peer_connection,
)

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


@pytest.mark.parametrize("offload", [True, False], ids=["udp-offload", "one-syscall-each"])
async def test_bulk_transfer_with_and_without_udp_offload(offload):
    """2 MiB in 16 KiB messages: batched sends (GSO) and reads (GRO) on Linux, one
    syscall per datagram otherwise; the same bytes arrive, in order, either way."""
    config = dataclasses.replace(LOOPBACK, udp_offload=offload)
    with trio.fail_after(10):
        async with open_peer_connection(config) as a, open_peer_connection(config) as b:
            await connect(a, b)
            ours, theirs = await open_channel(a, b, "bulk")
            messages = [bytes([i]) * 16384 for i in range(128)]
            async with trio.open_nursery() as nursery:

                async def send_all() -> None:
                    for message in messages:
                        await ours.send(message)

                nursery.start_soon(send_all)
                assert [await theirs.receive() for _ in messages] == messages
            stats = a.statistics()
            assert stats.datagrams_sent > len(messages) * 14  # ~1200-byte datagrams
            assert stats.send_errors == 0


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
        host_addresses=["127.0.0.1"],
        ice_pacing=0.005,
        high_water_mark=64 * 1024,
        receive_buffer_size=64 * 1024,
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
                # Stalled: b's channel buffer is full, b's SCTP window (1 MiB) closed, and
                # a's sender waits for its buffered amount to fall to half the mark.
                assert 0 < sent < total // 2
                assert ours.buffered_amount > 32 * 1024
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


async def test_closing_a_full_channel_does_not_stall_the_others():
    config = PeerConnectionConfig(
        host_addresses=["127.0.0.1"], ice_pacing=0.005, receive_buffer_size=16 * 1024
    )
    with trio.fail_after(10):
        async with open_peer_connection(config) as a, open_peer_connection(config) as b:
            await connect(a, b)
            full, full_theirs = await open_channel(a, b, "full")
            other, other_theirs = await open_channel(a, b, "other")
            for _ in range(8):
                await full.send(bytes(8192))  # b never reads these
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # all at b's SCTP
            await other.send("behind them")  # b's SCTP hands messages over in arrival order
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert full_theirs.statistics().received_buffered == 2  # 16 KiB: full
            assert other_theirs.statistics().received_buffered == 0  # stalled behind
            await full_theirs.aclose()
            assert await other_theirs.receive() == "behind them"
            with pytest.raises(trio.EndOfChannel):
                await full.receive()


async def test_a_channel_requested_before_signaling_opens_once_connected():
    with trio.fail_after(10):
        async with open_peer_connection(LOOPBACK) as a, open_peer_connection(LOOPBACK) as b:
            opened: list = []

            async def early() -> None:
                opened.append(await a.create_data_channel("early"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(early)
                await trio.testing.wait_all_tasks_blocked()
                assert not opened and a.connection_state == "new"
                await connect(a, b)
            theirs = await b.accept_data_channel()
            await opened[0].send("made it")
            assert await theirs.receive() == "made it"


async def test_concurrent_receives_are_busy(pair):
    a, b = pair
    with trio.fail_after(10):
        ours, theirs = await open_channel(a, b, "busy")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(theirs.receive)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await theirs.receive()
            nursery.cancel_scope.cancel()


async def test_a_wrong_fingerprint_fails_the_connection():
    other = PeerConnectionConfig(host_addresses=["127.0.0.1"], ice_pacing=0.005)
    with trio.fail_after(10):
        async with (
            open_peer_connection(LOOPBACK) as a,
            open_peer_connection(LOOPBACK) as b,
            open_peer_connection(other) as impostor,
        ):
            offer = await a.create_offer()
            await b.set_remote_description(offer, "offer")
            answer = await b.create_answer()
            # Swap in the impostor's certificate fingerprint: b's real one won't match.
            fake = [
                ln
                for ln in (await impostor.create_offer()).split("\r\n")
                if ln.startswith("a=fingerprint:")
            ][0]
            lines = [fake if ln.startswith("a=fingerprint:") else ln for ln in answer.split("\r\n")]
            await a.set_remote_description("\r\n".join(lines), "answer")
            with pytest.raises(trio.BrokenResourceError) as info:
                await a.wait_connected()
            assert "fingerprint" in str(info.value.__cause__).lower()
            assert a.connection_state == "failed"
            with pytest.raises(trio.BrokenResourceError):
                await a.create_data_channel("never")


async def test_hostile_candidates_do_not_break_the_connection():
    with trio.fail_after(10):
        async with open_peer_connection(LOOPBACK) as a, open_peer_connection(LOOPBACK) as b:
            await b.set_remote_description(await a.create_offer(), "offer")
            answer = without_candidates(await b.create_answer())
            await a.set_remote_description(answer, "answer")
            for candidate in (
                "candidate:1 1 udp 2130706431 255.255.255.255 9 typ host",  # EACCES
                "candidate:2 1 udp 2130706431 127.0.0.1 0 typ host",  # port 0: EINVAL
                "candidate:3 1 udp 2130706431 ::1 9 typ host",  # other family: never paired
            ):
                a.add_ice_candidate(candidate)
            while a.statistics().send_errors < 2:  # a's checks to both bad addresses failed
                await trio.sleep(0.005)
            async for candidate in b.local_candidates():
                a.add_ice_candidate(candidate)
            await a.wait_connected()
            ours, theirs = await open_channel(a, b, "still")
            await ours.send("fine")
            assert await theirs.receive() == "fine"


class LossyRelay:
    """UDP relay between two peers on loopback that drops every n-th DTLS datagram.

    ``port_for_a`` stands for b (a sends there), ``port_for_b`` stands for a.
    """

    def __init__(self, a_addr: tuple[str, int], b_addr: tuple[str, int], drop_every: int):
        self.addrs = {"a": a_addr, "b": b_addr}
        self.drop_every = drop_every
        self.lossy = False
        self.forwarded = self.dropped = 0

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        facing_a = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        facing_b = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        with facing_a, facing_b:
            await facing_a.bind(("127.0.0.1", 0))
            await facing_b.bind(("127.0.0.1", 0))
            self.port_for_a = facing_a.getsockname()[1]
            self.port_for_b = facing_b.getsockname()[1]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, facing_a, facing_b, "b")
                nursery.start_soon(self._pump, facing_b, facing_a, "a")
                task_status.started()

    async def _pump(self, source, out, to: str) -> None:
        while True:
            data, _ = await source.recvfrom(65536)
            if self.lossy and 20 <= data[0] <= 63:
                self.forwarded += 1
                if self.forwarded % self.drop_every == 0:
                    self.dropped += 1
                    continue
            await out.sendto(data, self.addrs[to])


def relay_candidate(port: int) -> str:
    return f"candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host"


async def test_reliable_and_partial_channels_over_a_lossy_path():
    with trio.fail_after(15):
        async with (
            open_peer_connection(LOOPBACK) as a,
            open_peer_connection(LOOPBACK) as b,
            trio.open_nursery() as nursery,
        ):
            relay = LossyRelay(a.local_address, b.local_address, drop_every=13)
            await nursery.start(relay.run)
            await b.set_remote_description(without_candidates(await a.create_offer()), "offer")
            await a.set_remote_description(without_candidates(await b.create_answer()), "answer")
            for pc, port in ((a, relay.port_for_a), (b, relay.port_for_b)):
                pc.add_ice_candidate(relay_candidate(port))
                pc.add_ice_candidate(None)
            reliable, reliable_theirs = await open_channel(a, b, "reliable")
            partial, partial_theirs = await open_channel(
                a, b, "partial", ordered=False, max_retransmits=0
            )
            relay.lossy = True
            sent = [b"%04d" % i + bytes(1996) for i in range(200)]  # 2 packets each
            got_partial: list[bytes] = []

            async def read_partial() -> None:
                while True:
                    got_partial.append(await partial_theirs.receive())

            nursery.start_soon(read_partial)
            for message in sent:
                await partial.send(message)
                await reliable.send(message)
            await reliable.send(b"done")
            assert [await reliable_theirs.receive() for _ in sent] == sent  # all, in order
            assert await reliable_theirs.receive() == b"done"
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert relay.dropped > 15
            assert 0 < len(got_partial) < len(sent)  # losses were not repaired
            assert set(got_partial) <= set(sent)
            assert a.statistics().sctp.abandoned_messages > 0
            relay.lossy = False
            await partial.send(b"after")  # FORWARD-TSN kept the channel going
            while got_partial[-1] != b"after":
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            nursery.cancel_scope.cancel()


async def test_the_dtls_context_is_made_with_the_connection_not_with_the_offer(monkeypatch):
    """Loading our key into OpenSSL (first in a process: OpenSSL itself) happens when the
    connection is made, so it is not paid between an offer's arrival and the answer."""
    from darkswap_trio.webrtc import _peer_connection

    made: list[object] = []
    real = _peer_connection.dtls_context
    monkeypatch.setattr(
        _peer_connection, "dtls_context", lambda cert: made.append(cert) or real(cert)
    )
    async with open_peer_connection(LOOPBACK) as a, open_peer_connection(LOOPBACK) as b:
        assert len(made) == 2
        with trio.fail_after(10):
            await connect(a, b)
        assert len(made) == 2  # the remote descriptions made none
        ours, theirs = await open_channel(a, b, "ctx")
        await ours.send(b"ping")
        assert await theirs.receive() == b"ping"
