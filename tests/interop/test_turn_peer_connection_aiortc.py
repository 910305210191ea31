"""Our PeerConnection with ``ice_transport_policy="relay"`` and aiortc through our
relay's TURN server: aiortc offers (host candidates on loopback, ``iceServers=[]``),
we answer with our relay candidate only, data both ways through the allocation.

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
