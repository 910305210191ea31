"""Our PeerConnection against aiortc's RTCPeerConnection, us offering and us answering.

aiortc runs under asyncio on a worker thread. It is scripted as an echo peer: every
channel (opened by it or by us) echoes each message back unchanged, except the text
"close-please", which makes aiortc close that channel; a ("close", label) item from the
trio side does the same without going through the channel. It reports what it sees
("channel" with the negotiated options, "closed") to the trio side, which asserts.

Partially reliable channels (RFC 3758) may lose messages, and loopback does drop UDP:
every channel echoes at once, about 1 MB, into aiortc's default 208 KiB socket buffer.
For them the tests assert what RFC 8831 section 6.6 and RFC 3758 promise -- what
arrives is intact and arrives once, in order on an ordered channel, and the channel
still carries messages afterwards -- not that everything arrives.

Loopback only: ``RTCConfiguration(iceServers=[])``, aioice's interface enumeration is
pointed at 127.0.0.1 and candidate lines are filtered to 127.0.0.1 both ways.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aioice.ice
import pytest
import trio
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from asyncio_peer import AsyncioPeerThread

from darkswap_trio.proto.datachannel import MessageTooLarge
from darkswap_trio.webrtc import PeerConnectionConfig, open_peer_connection

LOOPBACK = "127.0.0.1"
CONFIG = PeerConnectionConfig(host_addresses=[LOOPBACK], ice_pacing=0.005)
MESSAGES = ["text", b"binary", "", b"", "\u00e9t\u00e9", bytes(range(256)) * 200]
CHANNEL_OPTIONS = [
    ("reliable", {}),
    ("unordered", {"ordered": False}),
    ("rexmit", {"ordered": False, "max_retransmits": 0}),
    ("lifetime", {"max_packet_life_time": 1000}),
]


def loopback_candidates_only(sdp: str) -> str:
    lines = sdp.split("\r\n")
    return "\r\n".join(
        line for line in lines if not line.startswith("a=candidate") or f" {LOOPBACK} " in line
    )


async def aiortc_peer(offer: bool, labels: list[tuple[str, dict]], to_trio: Callable) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    to_trio(("inbox", lambda item: loop.call_soon_threadsafe(inbox.put_nowait, item)))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # never Google's STUN server

    served = {}

    def serve(channel) -> None:
        served[channel.label] = channel

        def on_message(message) -> None:
            if message == "close-please":
                channel.close()
            else:
                channel.send(message)

        channel.on("message", on_message)
        channel.on("close", lambda: to_trio(("closed", channel.label)))

    def announce(channel) -> None:
        to_trio(
            (
                "channel",
                channel.label,
                channel.id,
                channel.ordered,
                channel.maxRetransmits,
                channel.maxPacketLifeTime,
                channel.protocol,
            )
        )

    pc.on("datachannel", lambda channel: (serve(channel), announce(channel)))
    try:
        async with asyncio.timeout(20):
            if offer:
                for label, options in labels:
                    channel = pc.createDataChannel(
                        label,
                        ordered=options.get("ordered", True),
                        maxRetransmits=options.get("max_retransmits"),
                        maxPacketLifeTime=options.get("max_packet_life_time"),
                        protocol="p-" + label,
                    )
                    serve(channel)
                    channel.on("open", lambda channel=channel: announce(channel))
                await pc.setLocalDescription(await pc.createOffer())
                to_trio(("sdp", loopback_candidates_only(pc.localDescription.sdp)))
                _, answer = await inbox.get()
                await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            else:
                _, offer_sdp = await inbox.get()
                await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
                await pc.setLocalDescription(await pc.createAnswer())
                to_trio(("sdp", loopback_candidates_only(pc.localDescription.sdp)))
            while (command := await inbox.get())[0] != "stop":
                assert command[0] == "close", command
                served[command[1]].close()
    except Exception as exc:  # reported to the trio side, which fails the test
        to_trio(("error", repr(exc)))
    finally:
        await pc.close()


def AiortcThread(nursery: trio.Nursery, **peer_args: Any) -> AsyncioPeerThread:
    """:func:`aiortc_peer` on a worker thread."""
    return AsyncioPeerThread(nursery, aiortc_peer, **peer_args)


@pytest.fixture
def loopback_only(monkeypatch):
    """aioice binds (and announces) 127.0.0.1 only, which it normally skips."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda **_: [LOOPBACK])


async def exchange_and_check(channel, lossy: dict | None = None) -> None:
    """Every message echoed; partially reliable channels see :func:`echo_lossy`, whose
    (sent, received) lists go to ``lossy[label]``."""
    if channel.max_retransmits is not None or channel.max_packet_life_time is not None:
        record = await echo_lossy(channel)
        if lossy is not None:
            lossy[channel.label] = record
        return
    for message in MESSAGES:
        await channel.send(message)
    received = [await channel.receive() for _ in MESSAGES]
    if channel.ordered:
        assert received == MESSAGES
    else:  # a reliable channel loses nothing, but unordered delivery may reorder
        assert sorted(map(repr, received)) == sorted(map(repr, MESSAGES))


MARKER_ATTEMPTS = 40
MARKER_WAIT = 0.5  # seconds before another marker goes out (one could have been lost)


def check_lossy_delivery(received: list, sent: list, ordered: bool) -> None:
    """RFC 3758 / RFC 8831 on a partially reliable channel: every message that arrives
    is one that was sent, intact, at most once, and in sending order if ordered."""
    positions = [sent.index(message) for message in received]  # ValueError: corrupted
    assert all(type(m) is type(sent[i]) for m, i in zip(received, positions, strict=True))
    assert len(set(positions)) == len(positions), f"duplicated: {received!r:.300}"
    if ordered:
        assert positions == sorted(positions), f"reordered: {received!r:.300}"


async def echo_lossy(channel) -> tuple[list, list]:
    """Send MESSAGES through aiortc's echo, then markers until one comes back: proof the
    channel still works after a loss. Returns (sent, received), markers included."""
    sent: list = list(MESSAGES)
    received: list = []
    for message in MESSAGES:
        await channel.send(message)
    for attempt in range(MARKER_ATTEMPTS):
        marker = f"marker-{attempt}"
        sent.append(marker)
        await channel.send(marker)
        with trio.move_on_after(MARKER_WAIT):
            while True:
                received.append(await channel.receive())
                if str(received[-1]).startswith("marker-"):
                    break
            break
    else:
        raise AssertionError(f"no marker came back on {channel.label}: {received!r:.300}")
    check_lossy_delivery(received, sent, channel.ordered)
    return sent, received


def expected_report(label: str, channel_id: int, options: dict, protocol: str) -> tuple:
    return (
        "channel",
        label,
        channel_id,
        options.get("ordered", True),
        options.get("max_retransmits"),
        options.get("max_packet_life_time"),
        protocol,
    )


async def test_we_offer_aiortc_answers(loopback_only):
    many = [(f"many-{i}", {}) for i in range(16)]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            aiortc = AiortcThread(nursery, offer=False, labels=[])
            await aiortc.ready()
            async with open_peer_connection(CONFIG) as pc:
                aiortc.send(("offer", await pc.create_offer()))
                _, answer = await aiortc.receive()
                assert f" {LOOPBACK} " in answer
                await pc.set_remote_description(answer, "answer")
                await pc.wait_connected()
                channels = {}
                for label, options in CHANNEL_OPTIONS + many:
                    channel = await pc.create_data_channel(label, protocol="x", **options)
                    channels[label] = channel
                    report = await aiortc.receive()
                    assert report == expected_report(label, channel.id, options, "x")
                async with trio.open_nursery() as talkers:
                    for channel in channels.values():
                        talkers.start_soon(exchange_and_check, channel)
                # We close: aiortc sees it and resets its side; we see both ends closed.
                await channels["reliable"].aclose()
                assert await aiortc.receive() == ("closed", "reliable")
                await channels["reliable"].wait_closed()
                # aiortc closes: we see the end of the channel.
                await channels["unordered"].send("close-please")
                with pytest.raises(trio.EndOfChannel):
                    await channels["unordered"].receive()
                assert await aiortc.receive() == ("closed", "unordered")
                # aiortc announces a=max-message-size:262144.
                assert "a=max-message-size:262144" in answer
                await channels["many-3"].send(bytes(262144))
                assert await channels["many-3"].receive() == bytes(262144)
                with pytest.raises(MessageTooLarge):
                    await channels["many-3"].send(bytes(262145))
                await channels["many-3"].send("still here")
                assert await channels["many-3"].receive() == "still here"
                assert pc.statistics().ice.selected_remote[0] == LOOPBACK
            aiortc.send(("stop",))


async def test_aiortc_offers_we_answer(loopback_only):
    labels = CHANNEL_OPTIONS + [(f"many-{i}", {}) for i in range(16)]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            aiortc = AiortcThread(nursery, offer=True, labels=labels)
            await aiortc.ready()
            async with open_peer_connection(CONFIG) as pc:
                _, offer = await aiortc.receive()
                await pc.set_remote_description(offer, "offer")
                answer = await pc.create_answer()
                assert "a=setup:active" in answer
                aiortc.send(("answer", answer))
                await pc.wait_connected()
                channels = {}
                for _ in labels:
                    channel = await pc.accept_data_channel()
                    channels[channel.label] = channel
                reports = {}
                for _ in labels:
                    report = await aiortc.receive()
                    reports[report[1]] = report
                for label, options in labels:
                    channel = channels[label]
                    assert reports[label] == expected_report(
                        label, channel.id, options, "p-" + label
                    )
                    assert channel.protocol == "p-" + label
                lossy: dict[str, tuple[list, list]] = {}
                async with trio.open_nursery() as talkers:
                    for channel in channels.values():
                        talkers.start_soon(exchange_and_check, channel, lossy)
                await channels["lifetime"].aclose()
                assert await aiortc.receive() == ("closed", "lifetime")
                # aiortc closes a partially reliable channel (told over the reliable
                # harness, as "close-please" on the channel itself could be lost): echoes
                # still on their way may come first, then the end of the channel.
                sent, received = lossy["rexmit"]
                aiortc.send(("close", "rexmit"))
                with pytest.raises(trio.EndOfChannel):
                    for _ in range(len(sent) + 1):
                        received.append(await channels["rexmit"].receive())
                check_lossy_delivery(received, sent, ordered=False)
                assert await aiortc.receive() == ("closed", "rexmit")
                await channels["many-0"].send(b"still here")
                assert await channels["many-0"].receive() == b"still here"
            aiortc.send(("stop",))
