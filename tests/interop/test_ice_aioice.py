"""Our ICE agent (IceTransport) against aioice.Connection, in both roles.

aioice runs under asyncio in a thread of the test; signaling goes through two
thread-safe queues. Only loopback is used: aioice's interface enumeration is pointed
at 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import queue
import threading

import aioice
import aioice.ice
import pytest
import trio
from aioice import Candidate

from darkswap_trio.proto.ice._checklist import parse_candidate_untrusted
from darkswap_trio.webrtc import IceTransport

MESSAGES = 10


def run_aioice_peer(controlling: bool, inbox: queue.Queue, outbox: queue.Queue) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = aioice.Connection(ice_controlling=controlling, use_ipv6=False)
        try:
            await conn.gather_candidates()
            outbox.put(("credentials", conn.local_username, conn.local_password))
            for candidate in conn.local_candidates:
                outbox.put(("candidate", candidate.to_sdp()))
            outbox.put(("end",))
            _, ufrag, pwd = await loop.run_in_executor(None, inbox.get, True, 10)
            conn.remote_username, conn.remote_password = ufrag, pwd
            while True:
                item = await loop.run_in_executor(None, inbox.get, True, 10)
                if item[0] == "end":
                    await conn.add_remote_candidate(None)
                    break
                await conn.add_remote_candidate(Candidate.from_sdp(item[1]))
            await asyncio.wait_for(conn.connect(), 10)
            outbox.put(("connected", conn.ice_controlling))
            for _ in range(MESSAGES):
                data = await asyncio.wait_for(conn.recv(), 10)
                await conn.send(b"\x17echo:" + data[1:])
            outbox.put(("done",))
        except Exception as exc:  # reported to the trio side, which fails the test
            outbox.put(("error", repr(exc)))
        finally:
            await conn.close()

    asyncio.run(main())


async def get(q: queue.Queue):
    item = await trio.to_thread.run_sync(q.get, True, 10)
    assert item[0] != "error", item
    return item


@pytest.mark.parametrize(
    ("ours_controlling", "aioice_controlling"),
    [(False, True), (True, False), (True, True), (False, False)],
    ids=["aioice-controls", "we-control", "conflict-both-controlling", "conflict-both-controlled"],
)
async def test_data_with_aioice(monkeypatch, ours_controlling, aioice_controlling):
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda **_: ["127.0.0.1"])
    to_aioice: queue.Queue = queue.Queue()
    from_aioice: queue.Queue = queue.Queue()
    thread = threading.Thread(
        target=run_aioice_peer, args=(aioice_controlling, to_aioice, from_aioice), daemon=True
    )
    thread.start()
    try:
        with trio.fail_after(15):
            async with IceTransport(ours_controlling, host_addresses=["127.0.0.1"]) as ice:
                _, ufrag, pwd = await get(from_aioice)
                to_aioice.put(("credentials", ice.local_ufrag, ice.local_pwd))
                ice.set_remote_credentials(ufrag, pwd)
                async for candidate in ice.local_candidates():
                    to_aioice.put(("candidate", candidate.to_sdp()))
                to_aioice.put(("end",))
                while (item := await get(from_aioice))[0] == "candidate":
                    ice.add_remote_candidate(parse_candidate_untrusted(item[1]))
                ice.add_remote_candidate(None)
                await ice.connect()
                _, aioice_controlling_now = await get(from_aioice)
                # Exactly one side controls, whoever won a tie-break (RFC 8445 7.3.1.1).
                assert ice.agent.controlling is not aioice_controlling_now
                if ours_controlling != aioice_controlling:
                    assert ice.agent.controlling is ours_controlling
                for i in range(MESSAGES):
                    await ice.send(b"\x17msg%d" % i)
                    assert await ice.receive() == b"\x17echo:msg%d" % i
                assert await get(from_aioice) == ("done",)
    finally:
        await trio.to_thread.run_sync(thread.join, 10)
    assert not thread.is_alive()
