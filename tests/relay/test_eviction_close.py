"""A pending connection evicted by admission (the pending table is full) ends its session
through the session's own close path, whatever its reader is doing at that moment.

Seen in a restart benchmark: evicting closed the socket while the session's reader was
not parked on it, and its next read waited on fd -1 (``ValueError``, logged as a session
crash at ERROR). Here the reader is held in the per-peer byte throttle when the eviction
comes; a clock that runs at real speed but can be jumped ends the throttle on demand.
"""

from __future__ import annotations

import logging
import os

import pytest
import trio
import trio.testing
from relayclient import make_config
from test_abuse import limit_hits
from test_abuse_flood import open_raw

from darkswap_trio.proto.signaling import Pong, encode_message
from darkswap_trio.proto.websocket._connection import Opcode, encode_frame
from relay import serve_relay

BURST = 64
THROTTLE = 8.0  # seconds a full burst waits for its tokens


@pytest.fixture
def steady_clock():
    return trio.testing.MockClock(rate=1.0)  # real time, plus test-driven jumps


def binary_frame(size: int) -> bytes:
    return encode_frame(Opcode.BINARY, b"x" * size, mask_key=os.urandom(4))


PONG = encode_frame(Opcode.TEXT, encode_message(Pong()).encode(), mask_key=os.urandom(4))


def sessions_active(server) -> float:
    return server.metrics.value("darkswap_relay_sessions_active") or 0.0


async def test_an_evicted_session_busy_elsewhere_closes_cleanly(nursery, steady_clock, caplog):
    caplog.set_level(logging.INFO)
    with trio.fail_after(30):
        config = make_config(
            max_pending_connections=2,
            max_pending_per_ip=0,
            bytes_per_peer_rate=BURST / THROTTLE,
            bytes_per_peer_burst=BURST,
            handshake_timeout=10 * THROTTLE,
        )
        server = await nursery.start(serve_relay, config)
        port = server.signaling_port
        victim = await open_raw("127.0.0.2", port)
        other = await open_raw("127.0.0.2", port)
        # A full burst, then a Pong (answered with nothing): the Pong holds the reader
        # in the throttle, not in a read of its socket.
        await victim.stream.send_all(binary_frame(BURST) + PONG)
        await trio.testing.wait_all_tasks_blocked()
        assert limit_hits(server, "bytes_per_peer") == 1
        assert sessions_active(server) == 2
        # The pending table is full: a newcomer from another address evicts the oldest
        # connection of 127.0.0.2, the throttled one.
        newcomer = await open_raw("127.0.0.3", port)
        await trio.testing.wait_all_tasks_blocked()
        assert limit_hits(server, "pending_evicted") == 1
        assert server.admission.pending_total == 2
        # Its session ended at once (it did not wait out its throttle).
        assert sessions_active(server) == 2
        # The peer goes away; the throttle would have ended by now.
        await victim.stream.aclose()
        steady_clock.jump(THROTTLE + 1)
        await trio.testing.wait_all_tasks_blocked()
        assert sessions_active(server) == 2
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]
        closed = [r for r in caplog.records if r.getMessage() == "session closed"]
        assert len(closed) == 1 and "evicted" in closed[0].reason
        for client in (other, newcomer):
            await client.stream.aclose()
        await server.shutdown(1)
