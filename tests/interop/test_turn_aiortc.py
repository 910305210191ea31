"""Two aiortc peers with ``iceTransportPolicy="relay"`` open a data channel through OUR
TURN server (the relay, credentials from its signaling), data both ways.

Both peers run in one asyncio loop on a worker thread (aiortc's own loop), their SDP
exchanged in process. With the relay policy aioice gathers no host candidates and pairs
only its relay candidates, so every packet goes client -> our TURN server -> the other
allocation's relayed socket -> its client; the server's counters prove it. Loopback
only: the TURN server is on 127.0.0.1 and ``allow_loopback_peers`` lets the two
relayed addresses (127.0.0.1) reach each other.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import trio
from turn_relay import ice_server, relay_with_turn

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
MESSAGES = [b"x" * 1000, "text", b"last"]


async def two_relay_peers(server: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Connect two aiortc peers through ``server``; echo MESSAGES both ways."""
    from aiortc import (
        RTCConfiguration,
        RTCIceServer,
        RTCIceTransportPolicy,
        RTCPeerConnection,
    )

    config = RTCConfiguration(
        iceServers=[RTCIceServer(**server)], iceTransportPolicy=RTCIceTransportPolicy.RELAY
    )
    offerer, answerer = RTCPeerConnection(config), RTCPeerConnection(config)
    got: dict[str, list[Any]] = {"offerer": [], "answerer": []}
    done = asyncio.Event()
    opened = asyncio.Event()

    channel = offerer.createDataChannel("turn")

    @answerer.on("datachannel")
    def on_channel(remote) -> None:
        @remote.on("message")
        def on_message(message) -> None:
            got["answerer"].append(message)
            remote.send(message)  # echo

    @channel.on("open")
    def on_open() -> None:
        opened.set()

    @channel.on("message")
    def on_echo(message) -> None:
        got["offerer"].append(message)
        if len(got["offerer"]) == len(MESSAGES):
            done.set()

    async def run() -> dict[str, Any]:
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        await opened.wait()
        for message in MESSAGES:
            channel.send(message)
        await done.wait()
        candidates = [
            line
            for pc in (offerer, answerer)
            for line in pc.localDescription.sdp.splitlines()
            if line.startswith("a=candidate")
        ]
        pair = next(iter(offerer.sctp.transport.transport._connection._nominated.values()))
        return {
            "got": got,
            "candidates": candidates,
            "local": (pair.local_candidate.type, pair.local_addr),
            "remote": (pair.remote_candidate.type, pair.remote_addr),
        }

    try:
        return await asyncio.wait_for(run(), timeout)
    finally:
        await offerer.close()
        await answerer.close()


@pytest.mark.parametrize(
    ("scheme", "allow_loopback"),
    [("udp", True), ("tcp", True), ("tls", True), ("udp", False)],
    ids=["udp", "tcp", "tls", "udp-no-loopback-peers"],
)
async def test_aiortc_relay_policy_through_our_turn_server(
    tmp_path, monkeypatch, scheme, allow_loopback
) -> None:
    """Without ``allow_loopback_peers`` too: relay candidates of one server reach each
    other (in process, the hairpin counter says so), as in production."""
    with trio.fail_after(60):
        async with relay_with_turn(
            tmp_path, tls=scheme == "tls", allow_loopback=allow_loopback
        ) as (server, creds, cert):
            if cert is not None:  # aioice's turns: uses the default verify paths
                monkeypatch.setenv("SSL_CERT_FILE", cert)
            entry = ice_server(creds, scheme)
            result = await trio.to_thread.run_sync(
                asyncio.run, two_relay_peers(entry, 40.0), abandon_on_cancel=True
            )
            counters = server.turn.core.counters
    assert result["got"]["answerer"] == MESSAGES
    assert result["got"]["offerer"] == MESSAGES
    assert result["candidates"] and all(" typ relay" in c for c in result["candidates"])
    assert all(" 127.0.0.1 " in c for c in result["candidates"])
    assert result["local"][0] == "relay" and result["remote"][0] == "relay"
    assert result["remote"][1][0] == "127.0.0.1"
    # Both directions went through the server: DTLS + SCTP + the messages, twice.
    payload = sum(len(m) for m in MESSAGES)
    assert counters["bytes_to_peer"] > 2 * payload
    assert counters["bytes_to_client"] > 2 * payload
    assert counters["allocations_created"] == 2
    assert counters["hairpin_datagrams"] > 4  # allocation to allocation, no kernel hop
