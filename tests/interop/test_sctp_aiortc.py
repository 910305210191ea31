"""Our SCTP association against aiortc's RTCSctpTransport, no DTLS in between."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiortc import RTCDataChannel, RTCDataChannelParameters, RTCSctpTransport

from darkswap_trio.proto.sctp import (
    Closed,
    MessageReceived,
    OutgoingStreamsReset,
    SctpAssociation,
    SctpState,
    StreamsReset,
)
from darkswap_trio.testing._sctp_pair import numbered_payload


class _FakeDtlsTransport:
    """Just enough of aiortc's RTCDtlsTransport for RTCSctpTransport: a datagram pipe."""

    def __init__(self, role: str, outbox):
        self.state = "connected"
        self._role = role
        self._outbox = outbox

    def _register_data_receiver(self, receiver):
        pass

    def _unregister_data_receiver(self, receiver):
        pass

    async def _send_data(self, data: bytes) -> None:
        self._outbox.put_nowait(data)


@pytest.mark.parametrize("we_init", [True, False])
def test_interop_with_aiortc(we_init):
    big = numbered_payload(99, 200_000)

    async def scenario():
        loop = asyncio.get_running_loop()
        to_us: asyncio.Queue[bytes] = asyncio.Queue()
        theirs = RTCSctpTransport(_FakeDtlsTransport("server", to_us))
        ours = SctpAssociation(True, rng=random.Random(5))
        events = []
        if we_init:
            ours.connect(loop.time())
        channel = RTCDataChannel(theirs, RTCDataChannelParameters("x", negotiated=True, id=1))
        received = []
        channel.on("message", received.append)
        await theirs.start(theirs.getCapabilities(), 5000)

        async def pump(until):
            while not until():
                while (packet := ours.poll_transmit()) is not None:
                    await theirs._handle_data(packet)
                deadline = ours.poll_timeout()
                timeout = 0.05 if deadline is None else max(0.0, deadline - loop.time())
                getter = asyncio.ensure_future(to_us.get())
                done, _ = await asyncio.wait({getter}, timeout=min(timeout, 0.05))
                if done:
                    ours.receive(getter.result(), loop.time())
                else:
                    getter.cancel()
                    ours.handle_timeout(loop.time())
                while (event := ours.poll_event()) is not None:
                    events.append(event)

        await pump(lambda: ours.state is SctpState.ESTABLISHED and channel.readyState == "open")
        # aiortc -> us: small and large messages, in order.
        for i in range(20):
            channel.send(numbered_payload(i, 1000))
        channel.send(big)
        await pump(lambda: len([e for e in events if isinstance(e, MessageReceived)]) == 21)
        got = [e for e in events if isinstance(e, MessageReceived)]
        assert [e.data for e in got] == [numbered_payload(i, 1000) for i in range(20)] + [big]
        assert {(e.stream_id, e.ppid) for e in got} == {(1, 53)}
        # us -> aiortc.
        for i in range(20):
            ours.send(1, 53, numbered_payload(i, 3000), loop.time())
        ours.send(1, 53, big, loop.time())
        await pump(lambda: len(received) == 21)
        assert received == [numbered_payload(i, 3000) for i in range(20)] + [big]
        # aiortc closes the channel: a stream reset both ways.
        channel.close()
        await pump(lambda: StreamsReset((1,)) in events)
        ours.reset_streams([1])
        await pump(lambda: OutgoingStreamsReset((1,), True) in events)
        await pump(lambda: channel.readyState == "closed")
        # Heartbeat and graceful shutdown are understood too.
        ours.shutdown()
        await pump(lambda: ours.state is SctpState.TERMINATED)
        assert events[-1] == Closed("shutdown complete", graceful=True)
        await theirs.stop()

    asyncio.run(asyncio.wait_for(scenario(), 20))
