"""Two PeerCores end to end in simulated time: ICE, DTLS, SCTP and DCEP together over
a lossy, duplicating, reordering network, with and without a NAT (see peer_pair.py)."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from peer_pair import ENDED, PeerPair

from darkswap_trio.proto.ice import IceState
from darkswap_trio.testing import VirtualNet

NATS = [None, "endpoint-independent", "address-dependent", "address-and-port-dependent"]


def simulate(scenario, seed: int = 0, **net_options: float) -> None:
    """Run ``scenario(net)`` in trio with a clock that jumps to the next deadline."""

    async def main() -> None:
        with trio.fail_after(3600):  # simulated seconds: the scenario bounds itself
            await scenario(VirtualNet(seed, **net_options))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def numbered(index: int, size: int) -> bytes:
    return index.to_bytes(4, "big") + bytes([index % 251]) * size


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.sampled_from([0.0, 0.05, 0.15]),
    duplicate=st.sampled_from([0.0, 0.1]),
    jitter=st.sampled_from([0.0, 0.02]),
    nat=st.sampled_from(NATS),
    sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=40),
)
def test_every_reliable_message_once_and_in_order(seed, loss, duplicate, jitter, nat, sizes):
    """Connect through whatever the network does, open a channel, send both ways (empty,
    small and fragmented messages), close the channel, then shut the connection down."""

    async def scenario(net: VirtualNet) -> None:
        pair = await PeerPair.create(net, nat=nat, seed=seed)
        a, b = pair.a, pair.b
        await pair.run_until(pair.connected, max_time=60)
        now = trio.current_time()
        stream = a.core.open_channel("chat", now).stream_id
        sent_ab = [numbered(i, size) for i, size in enumerate(sizes)]
        sent_ba = [f"reply {i}" * (size % 7) for i, size in enumerate(sizes)]
        for message in sent_ab:
            a.core.send(stream, message, now)
        pair.pump(a)
        await pair.run_until(lambda: stream in b.opened, max_time=120)
        for message in sent_ba:
            b.core.send(stream, message, trio.current_time())
        pair.pump(b)
        await pair.run_until(
            lambda: (
                len(b.received.get(stream, ())) == len(sent_ab)
                and len(a.received.get(stream, ())) == len(sent_ba)
            ),
            max_time=300,
        )
        assert b.received[stream] == sent_ab
        assert a.received[stream] == sent_ba

        a.core.close_channel(stream, trio.current_time())
        pair.pump(a)
        await pair.run_until(lambda: stream in a.closed and stream in b.closed, max_time=400)
        await pair.run_until(lambda: a.core.buffered_amount(stream) == 0, max_time=400)

        a.core.close(trio.current_time())
        pair.pump(a)
        assert a.core.state == "closed"
        # The ABORT may be lost: then b notices when consent freshness expires.
        await pair.run_until(pair.ended, max_time=600)
        assert b.core.state in ("disconnected", "failed")
        await pair.run_until_idle()
        assert net.statistics().delivered > 0

    simulate(scenario, seed, loss=loss, duplicate=duplicate, jitter=jitter, delay=0.01)


def test_channels_open_both_ways_and_close_from_either_end():
    async def scenario(net: VirtualNet) -> None:
        pair = await PeerPair.create(net, nat="address-and-port-dependent")
        a, b = pair.a, pair.b
        await pair.run_until(pair.connected)
        now = trio.current_time()
        from_a = [a.core.open_channel(f"a{i}", now).stream_id for i in range(3)]
        from_b = [b.core.open_channel(f"b{i}", now).stream_id for i in range(3)]
        assert not set(from_a) & set(from_b)  # stream-id parity from the DTLS role
        pair.pump(a)
        pair.pump(b)
        await pair.run_until(lambda: set(b.opened) == set(from_a) and set(a.opened) == set(from_b))
        for stream in from_a:
            b.core.close_channel(stream, trio.current_time())  # closed by the other end
        pair.pump(b)
        await pair.run_until(lambda: set(a.closed) >= set(from_a) and set(b.closed) >= set(from_a))
        # A closed channel's id is reused; the new channel carries data.
        stream = a.core.open_channel("again", trio.current_time()).stream_id
        assert stream in from_a
        a.core.send(stream, b"after reuse", trio.current_time())
        pair.pump(a)
        await pair.run_until(lambda: b.received.get(stream) == [b"after reuse"])

    simulate(scenario, loss=0.05, jitter=0.01)


def test_a_reader_that_stops_holds_the_sender_back():
    """Backpressure end to end: b stops reading, a's buffered amount stays up; once b
    reads again everything arrives, once and in order."""

    async def scenario(net: VirtualNet) -> None:
        pair = await PeerPair.create(net, receive_buffer_size=64 << 10)
        a, b = pair.a, pair.b
        await pair.run_until(pair.connected)
        stream = a.core.open_channel("bulk", trio.current_time()).stream_id
        b.reading = False
        messages = [numbered(i, 16 << 10) for i in range(200)]  # ~3 MiB
        for message in messages:
            a.core.send(stream, message, trio.current_time())
        pair.pump(a)
        await pair.run_until(lambda: trio.current_time() > 20)
        assert 0 < len(b.unread) < len(messages)
        assert a.core.buffered_amount(stream) > 1 << 20  # the windows are closed
        b.reading = True
        b.read_all()
        pair.pump(b)
        await pair.run_until(lambda: len(b.received.get(stream, ())) == len(messages))
        assert b.received[stream] == messages

    simulate(scenario)


def test_consent_lost_when_the_path_dies():
    async def scenario(net: VirtualNet) -> None:
        pair = await PeerPair.create(net, nat="endpoint-independent")
        # Consent freshness runs on the selected pair: wait for the nomination (the
        # controlled side may be connected over a valid pair before it).
        await pair.run_until(
            lambda: all(s.core.ice.state is IceState.CONNECTED for s in pair.sides)
        )
        net.link.loss = 1.0  # the path goes silent both ways
        started = trio.current_time()
        await pair.run_until(pair.ended, max_time=started + 40)
        assert all(side.states[-1] == "failed" for side in pair.sides)
        # ICE reports consent loss as its FAILED state, which comes first.
        assert all("ICE" in (side.core.failure or "") for side in pair.sides)
        for side in pair.sides:
            side.core.close(trio.current_time())
            pair.pump(side)
        await pair.run_until_idle()

    simulate(scenario)


def test_an_unreachable_peer_fails_and_goes_quiet():
    async def scenario(net: VirtualNet) -> None:
        net.link.loss = 1.0
        pair = await PeerPair.create(net)
        await pair.run_until(pair.ended, max_time=120)
        assert all(state in ENDED for state in (pair.a.core.state, pair.b.core.state))
        for side in pair.sides:
            side.core.close(trio.current_time())
            pair.pump(side)
        await pair.run_until_idle()

    simulate(scenario)
