"""aioice's TURN client (a third-party implementation) against our TURN service, over
real loopback sockets: allocate over UDP and TCP, relay to a plain UDP peer and back."""

from functools import partial

import pytest
import trio
from turn_helpers import aioice_exchange, credentials, echo_peer, running_turn

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_aioice_client_relays_through_our_server(transport: str) -> None:
    with trio.fail_after(20):
        async with running_turn() as (service, metrics), trio.open_nursery() as nursery:
            peer = await nursery.start(echo_peer)
            username, password = credentials()
            payloads = [b"hello", b"x" * 1200, b"last"]
            relayed, got = await trio.to_thread.run_sync(
                partial(
                    aioice_exchange, service.port, peer, username, password, transport, payloads
                )
            )
            assert relayed[0] == "127.0.0.1" and relayed[1] != service.port
            assert got == [b"echo:" + p for p in payloads]
            counters = service.core.counters
            assert counters["bytes_to_peer"] == sum(map(len, payloads))
            assert counters["bytes_to_client"] == sum(len(p) + 5 for p in payloads)
            assert metrics.value("darkswap_relay_turn_allocations_total") == 1
            # aioice deletes its allocation on close (Refresh with LIFETIME 0).
            with trio.fail_after(5):
                while service.core.statistics().allocations:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


async def test_loopback_peer_refused_without_the_switch() -> None:
    with trio.fail_after(20):
        async with (
            running_turn(allow_loopback_peers=False) as (service, _),
            trio.open_nursery() as nursery,
        ):
            # 127.0.0.2: the relay's own address 127.0.0.1 is a permitted peer (its
            # allocations reach each other), though only its allocations' ports.
            peer = await nursery.start(echo_peer, b"echo:", "127.0.0.2")
            username, password = credentials()
            relayed, got = await trio.to_thread.run_sync(
                partial(aioice_exchange, service.port, peer, username, password, "udp", [b"hi"])
            )
            assert got and got[0].startswith(b"ERROR")
            assert "403" in got[0].decode()
            assert service.core.counters["response_403"] >= 1
            assert service.core.counters["bytes_to_peer"] == 0
            nursery.cancel_scope.cancel()
