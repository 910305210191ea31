"""Our PeerConnection with ``ice_transport_policy="relay"`` and aiortc through our
relay's TURN server (aiortc: host candidates on loopback, ``iceServers=[]``): aiortc
offers and we answer with our relay candidate only (UDP to the server); we offer and
trickle our relay candidate to aiortc (TCP to the server). Data both ways through the
allocation.

aiortc's echo peer is :func:`test_peer_connection_aiortc.aiortc_peer`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from test_peer_connection_aiortc import AiortcThread, loopback_only  # noqa: F401

from darkswap_trio.proto.turn import rest_api_credentials
from darkswap_trio.webrtc import PeerConnectionConfig, TurnServerConfig, open_peer_connection

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SECRET = b"turn-aiortc-test-secret"
REALM = "darkswap.test"


@asynccontextmanager
async def running_our_turn(tmp_path: Any) -> AsyncIterator[Any]:
    from relay import RelayConfig, serve_relay

    secret_file = tmp_path / "turn_secret"
    secret_file.write_bytes(SECRET)
    config = RelayConfig(host="127.0.0.1", port=0, stun_port=0, metrics_port=None)
    config.auth.mode = "open"
    config.turn.enabled = True
    config.turn.realm = REALM
    config.turn.secret_file = str(secret_file)
    config.turn.allow_loopback_peers = True  # aiortc's host candidate is on loopback
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_relay, config.validate())
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


async def test_aiortc_offers_we_answer_through_our_turn_server(loopback_only, tmp_path):  # noqa: F811
    with trio.fail_after(30):
        async with running_our_turn(tmp_path) as server, trio.open_nursery() as nursery:
            username, password = rest_api_credentials(SECRET, "ours", 600, time.time())
            config = PeerConnectionConfig(
                host_addresses=["127.0.0.1"],
                turn_servers=[
                    TurnServerConfig(f"turn:127.0.0.1:{server.stun_port}", username, password)
                ],
                ice_transport_policy="relay",
            )
            aiortc = AiortcThread(nursery, offer=True, labels=[("reliable", {})])
            await aiortc.ready()
            async with open_peer_connection(config) as pc:
                _, offer = await aiortc.receive()
                await pc.set_remote_description(offer, "offer")
                async for _ in pc.local_candidates():
                    pass  # aiortc takes no trickle: answer once the relay candidate is in
                answer = await pc.create_answer()
                candidates = [line for line in answer.split("\r\n") if "a=candidate" in line]
                assert len(candidates) == 1 and " typ relay raddr " in candidates[0], answer
                aiortc.send(("answer", answer))
                await pc.wait_connected()
                channel = await pc.accept_data_channel()
                assert (await aiortc.receive())[:2] == ("channel", "reliable")
                for message in ["text", b"binary", bytes(range(256)) * 200]:
                    await channel.send(message)
                    assert await channel.receive() == message  # aiortc echoes
                ice = pc.statistics().ice
                assert ice is not None and ice.selected_local_type == "relay"
                assert ice.selected_remote_type == "host"
                core = server.turn.core
                assert core.statistics().allocations == 1
                assert core.counters["bytes_to_peer"] > 51200
                assert core.counters["bytes_to_client"] > 51200
                aiortc.send(("stop",))
            nursery.cancel_scope.cancel()


async def aiortc_answerer(to_trio) -> None:
    """aiortc answers our offer and takes our trickled candidates; echoes every message
    of the channels we open."""
    import asyncio

    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.sdp import candidate_from_sdp

    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    to_trio(("inbox", lambda item: loop.call_soon_threadsafe(inbox.put_nowait, item)))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.on("datachannel", lambda channel: channel.on("message", channel.send))
    try:
        async with asyncio.timeout(25):
            _, offer = await inbox.get()
            await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            to_trio(("sdp", pc.localDescription.sdp))
            while (item := await inbox.get())[0] == "candidate":
                if item[1] is None:
                    await pc.addIceCandidate(None)
                    continue
                candidate = candidate_from_sdp(item[1].removeprefix("candidate:"))
                candidate.sdpMid, candidate.sdpMLineIndex = "0", 0
                await pc.addIceCandidate(candidate)
            assert item[0] == "stop", item
    except Exception as exc:  # reported to the trio side, which fails the test
        to_trio(("error", repr(exc)))
    finally:
        await pc.close()


async def test_we_offer_and_trickle_our_relay_candidate_to_aiortc(loopback_only, tmp_path):  # noqa: F811
    from asyncio_peer import AsyncioPeerThread

    with trio.fail_after(30):
        async with running_our_turn(tmp_path) as server, trio.open_nursery() as nursery:
            username, password = rest_api_credentials(SECRET, "ours", 600, time.time())
            config = PeerConnectionConfig(
                host_addresses=["127.0.0.1"],
                turn_servers=[
                    TurnServerConfig(
                        f"turn:127.0.0.1:{server.stun_port}?transport=tcp", username, password
                    )
                ],
                ice_transport_policy="relay",
            )
            aiortc = AsyncioPeerThread(nursery, aiortc_answerer)
            await aiortc.ready()
            async with open_peer_connection(config) as pc:
                offer = await pc.create_offer()
                assert "a=candidate" not in offer  # the allocation is not there yet
                aiortc.send(("offer", offer))
                _, answer = await aiortc.receive()
                await pc.set_remote_description(answer, "answer")
                async for candidate in pc.local_candidates():
                    aiortc.send(("candidate", candidate))
                await pc.wait_connected()
                channel = await pc.create_data_channel("trickled")
                for message in [b"one", "two", bytes(range(256)) * 100]:
                    await channel.send(message)
                    assert await channel.receive() == message
                ice = pc.statistics().ice
                assert ice is not None and ice.selected_local_type == "relay"
                aiortc.send(("stop",))
            nursery.cancel_scope.cancel()
