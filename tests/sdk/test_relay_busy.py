"""A busy relay (pending table full, as in a restart storm) is waited for, never Failed.

The relay answers ``503 relay_busy`` with a ``Retry-After``; the manager waits that long
(plus up to 1 s of jitter) and does not count the refusal toward
``max_reconnect_attempts``. A *full* relay stays a failure: test_relay_sdk.py.
"""

from __future__ import annotations

import trio
from sdk_peers import FAST

from darkswap_trio import Keypair, RelayManager, RelayServerStatus
from darkswap_trio.testing import running_relay


async def test_busy_relay_carries_retry_after_and_the_sdk_waits_without_failing():
    with trio.fail_after(20):
        async with running_relay(max_pending_connections=1, max_pending_per_ip=0) as server:
            admission = server.admission
            answers: list[tuple[float, int]] = []
            refused = admission.retry.refused

            def recording(pending: int, now: float) -> int:
                wait = refused(pending, now)
                answers.append((now, wait))
                return wait

            admission.retry.refused = recording
            # An idle connection holds the only pending slot: the relay is busy.
            idle = await trio.open_tcp_stream("127.0.0.1", server.signaling_port)
            async with RelayManager(Keypair.generate(), [server.multiaddr], FAST) as manager:
                state = manager.servers[0]
                # FAST fails a relay after 3 failures 0.05-0.2 s apart; a busy relay is
                # retried at its Retry-After pace and is never Failed.
                while len(answers) < 3:
                    await trio.sleep(0.05)
                    assert state.status is not RelayServerStatus.FAILED
                assert state.failures == 0
                assert "relay_busy" in state.last_error
                for (before, wait), (after, _) in zip(answers, answers[1:], strict=False):
                    assert wait >= 1
                    assert after - before >= wait  # the SDK waited as asked
                await idle.aclose()  # room frees: the next attempt registers
                await manager.wait_connected(timeout=5)
                assert state.status is RelayServerStatus.CONNECTED
