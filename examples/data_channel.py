"""A data channel between two processes, both sides shown, with a ready signaling helper.

    python examples/data_channel.py answer 127.0.0.1 0        # prints: answerer listening on PORT
    python examples/data_channel.py offer  127.0.0.1 PORT

``open_tcp_signaling`` carries the offer, the answer and the trickled candidates as JSON
lines over one TCP connection. A candidate is the SDP attribute value without ``a=``,
e.g. ``candidate:1 1 udp 2130706431 127.0.0.1 50123 typ host``; None ends them. No relay
is involved: this is the PeerConnection layer. Host candidates are pinned to 127.0.0.1.
"""

import sys

import trio

from darkswap_trio.webrtc import (
    PeerConnection,
    PeerConnectionConfig,
    TcpSignaling,
    open_peer_connection,
    open_tcp_signaling,
)

LOOPBACK = PeerConnectionConfig(host_addresses=["127.0.0.1"], include_loopback=True)


async def trickle(pc: PeerConnection, signaling: TcpSignaling) -> None:
    """Send our candidates as they are gathered, then None."""
    async for candidate in pc.local_candidates():
        await signaling.send_candidate(candidate)


async def receive_candidates(pc: PeerConnection, signaling: TcpSignaling) -> None:
    while True:
        message = await signaling.receive()
        if message.type == "candidate":
            pc.add_ice_candidate(message.candidate)  # None: no more candidates
            if message.candidate is None:
                return


async def offer(host: str, port: int) -> None:
    async with open_peer_connection(LOOPBACK) as pc, open_tcp_signaling(host, port) as signaling:
        await signaling.send_description("offer", await pc.create_offer())
        answer = await signaling.receive()
        assert answer.type == "answer"
        await pc.set_remote_description(answer.sdp, "answer")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle, pc, signaling)
            nursery.start_soon(receive_candidates, pc, signaling)
        channel = await pc.create_data_channel("chat")
        await channel.send("hello from the offerer")
        print(f"offerer received {await channel.receive()!r}")
        await channel.aclose()


async def answer(host: str, port: int) -> None:
    def listening(port: int) -> None:
        print(f"answerer listening on {port}", flush=True)

    async with (
        open_peer_connection(LOOPBACK) as pc,
        open_tcp_signaling(host, port, listen=True, on_listening=listening) as signaling,
    ):
        offer = await signaling.receive()
        assert offer.type == "offer"
        await pc.set_remote_description(offer.sdp, "offer")
        await signaling.send_description("answer", await pc.create_answer())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle, pc, signaling)
            nursery.start_soon(receive_candidates, pc, signaling)
        channel = await pc.accept_data_channel()
        message = await channel.receive()
        print(f"answerer received {message!r} on channel {channel.label!r}", flush=True)
        await channel.send(f"echo: {message}")
        try:
            await channel.receive()  # until the offerer closes the channel
        except (trio.EndOfChannel, trio.BrokenResourceError):
            pass


if __name__ == "__main__":
    role, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    trio.run(offer if role == "offer" else answer, host, port)
