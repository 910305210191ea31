"""The SDK relay path against a real relay: the guide's tests plus faults.

Every test starts a real `serve_relay` on loopback and talks to it with the real SDK.
Timing is never asserted; each test is bounded with fail_after.
"""

import socket

import pytest
import trio

from darkswap_trio import (
    CircuitClosedError,
    CircuitCreated,
    CircuitEnded,
    CircuitRefused,
    Config,
    DataReceived,
    Keypair,
    NoRelayAvailable,
    NotStarted,
    P2PConfig,
    P2PNetwork,
    PeerConnected,
    PeerDisconnected,
    PeerNotFound,
    RelayManager,
    RelayManagerConfig,
    RelayServerStatus,
    ServerConnected,
    ServerDisconnected,
    ServerFailed,
)
from darkswap_trio.testing import running_relay

FAST = RelayManagerConfig(
    connection_timeout=5,
    ping_interval=1,
    reconnect_interval=0.05,
    max_reconnect_attempts=3,
    max_reconnect_interval=0.2,
)


async def next_event(events, kind, predicate=lambda e: True):
    async for event in events:
        if isinstance(event, kind) and predicate(event):
            return event
    raise AssertionError(f"events ended before a {kind.__name__}")


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def test_relay_manager_creation(relay_server):
    with trio.fail_after(10):
        manager = RelayManager(Keypair.generate(), [relay_server.multiaddr], FAST)
        (server,) = manager.servers
        assert server.status is RelayServerStatus.UNKNOWN
        assert server.id == str(relay_server.peer_id)
        assert server.url == f"ws://127.0.0.1:{relay_server.signaling_port}/signaling"
        with pytest.raises(NotStarted):
            await manager.connect_to_peer(str(Keypair.generate().peer_id))
        async with manager:
            await next_event(manager.events, ServerConnected)
            assert server.status is RelayServerStatus.CONNECTED
            assert server.latency_ms is not None and server.latency_ms > 0


async def test_connect_to_peer(relay_server):
    with trio.fail_after(10):
        async with (
            RelayManager(Keypair.generate(), [relay_server.multiaddr], FAST) as a,
            RelayManager(Keypair.generate(), [relay_server.multiaddr], FAST) as b,
        ):
            await a.wait_connected()
            await b.wait_connected()
            relay_id = await a.connect_to_peer(b.local_peer_id)
            created = await next_event(b.events, CircuitCreated)
            assert created.relay_id == relay_id
            assert created.peer_id == a.local_peer_id and not created.initiator
            with pytest.raises(PeerNotFound):
                await a.connect_to_peer(str(Keypair.generate().peer_id))


async def test_send_data(relay_server):
    with trio.fail_after(10):
        async with (
            RelayManager(Keypair.generate(), [relay_server.multiaddr], FAST) as a,
            RelayManager(Keypair.generate(), [relay_server.multiaddr], FAST) as b,
        ):
            await a.wait_connected()
            await b.wait_connected()
            relay_id = await a.connect_to_peer(b.local_peer_id)
            for i in range(50):
                await a.send_data(b.local_peer_id, relay_id, b"to b %d" % i)
            for i in range(50):
                event = await next_event(b.events, DataReceived)
                assert (event.from_, event.relay_id, event.data) == (
                    a.local_peer_id,
                    relay_id,
                    b"to b %d" % i,
                )
            await b.send_data(a.local_peer_id, relay_id, b"back to a")
            event = await next_event(a.events, DataReceived)
            assert event.data == b"back to a" and event.from_ == b.local_peer_id


async def test_close_relay(relay_server):
    with trio.fail_after(10):
        async with (
            RelayManager(Keypair.generate(), [relay_server.multiaddr], FAST) as a,
            RelayManager(Keypair.generate(), [relay_server.multiaddr], FAST) as b,
        ):
            await a.wait_connected()
            await b.wait_connected()
            relay_id = await a.connect_to_peer(b.local_peer_id)
            await next_event(b.events, CircuitCreated)
            circuit_at_b = b.circuit(relay_id)
            await a.close_relay(relay_id)
            closed = await next_event(b.events, CircuitEnded)
            assert (closed.relay_id, closed.reason) == (relay_id, "closed_by_peer")
            with pytest.raises(CircuitClosedError) as info:
                await circuit_at_b.send(b"too late")
            assert info.value.reason == "closed_by_peer"
            with pytest.raises(KeyError):
                await a.send_data(b.local_peer_id, relay_id, b"gone")


async def test_p2p_network_with_relay(relay_server):
    with trio.fail_after(10):
        config = Config(p2p=P2PConfig(relay_servers=[relay_server.multiaddr]), relay_manager=FAST)
        async with P2PNetwork(config) as alice, P2PNetwork(config) as bob:
            await alice.wait_relay_connected()
            await bob.wait_relay_connected()
            relay_id = await alice.connect_via_relay(bob.local_peer_id)
            connected = await next_event(bob.events, PeerConnected)
            assert connected.peer_id == alice.local_peer_id and connected.connection_type == "relay"
            await alice.send_via_relay(bob.local_peer_id, relay_id, b"hello bob")
            received = await next_event(bob.events, DataReceived)
            assert (received.from_, received.data) == (alice.local_peer_id, b"hello bob")
            assert alice.local_peer_id in bob.connected_peers
            await alice.close_relay(relay_id)
            gone = await next_event(bob.events, PeerDisconnected)
            assert gone.peer_id == alice.local_peer_id
            await alice.stop()
            await bob.stop()


async def test_circuit_is_a_trio_channel_with_backpressure(relay_server):
    with trio.fail_after(10):
        async with (
            RelayManager(Keypair.generate(), [relay_server.multiaddr], FAST) as a,
            RelayManager(
                Keypair.generate(), [relay_server.multiaddr], FAST, deliver_incoming=False
            ) as b,
        ):
            await a.wait_connected()
            await b.wait_connected()
            sender = await a.open_circuit(b.local_peer_id)
            receiver = await b.accept_circuit()
            window = sender.limits.window
            chunk = b"z" * sender.limits.max_data_frame
            sent = 0
            # Nobody reads at b: sends stop once the window's credit is used up.
            with trio.move_on_after(1):
                while True:
                    await sender.send(chunk)
                    sent += len(chunk)
            assert window <= sent + len(chunk) and sent <= window
            assert sender.statistics().send_credit < len(chunk)
            got = 0
            while got < sent:
                got += len(await receiver.receive())
            # Credit came back: the sender can go on.
            await sender.send(b"more")
            assert await receiver.receive() == b"more"
            with pytest.raises(ValueError):
                await sender.send(b"x" * (sender.limits.max_data_frame + 1))
            await sender.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await sender.send(b"after close")
            with pytest.raises(trio.EndOfChannel):
                await receiver.receive()


async def test_reconnects_after_relay_restart():
    keypair = Keypair.generate()
    with trio.fail_after(20):
        async with running_relay(keypair=keypair) as server:
            port = server.signaling_port
            address = server.multiaddr
            manager_a = RelayManager(Keypair.generate(), [address], FAST)
            manager_b = RelayManager(Keypair.generate(), [address], FAST)
            async with manager_a as a, manager_b as b:
                await next_event(a.events, ServerConnected)
                await next_event(b.events, ServerConnected)
                await server.shutdown(0.5)
                disconnected = await next_event(a.events, ServerDisconnected)
                assert disconnected.server_id == str(keypair.peer_id)
                assert a.servers[0].status in (
                    RelayServerStatus.DISCONNECTED,
                    RelayServerStatus.CONNECTING,
                )
                async with running_relay(port=port, keypair=keypair):
                    await next_event(a.events, ServerConnected)
                    await b.wait_connected()
                    assert a.servers[0].status is RelayServerStatus.CONNECTED
                    relay_id = await a.connect_to_peer(b.local_peer_id)
                    await a.send_data(b.local_peer_id, relay_id, b"after restart")
                    event = await next_event(b.events, DataReceived)
                    assert event.data == b"after restart"


async def test_relay_that_lies_about_its_peer_id_is_refused(relay_server):
    impostor = relay_server.multiaddr.rsplit("/p2p/", 1)[0] + f"/p2p/{Keypair.generate().peer_id}"
    with trio.fail_after(10):
        async with RelayManager(Keypair.generate(), [impostor], FAST) as manager:
            failed = await next_event(manager.events, ServerFailed)
            assert "relay_id_mismatch" in failed.cause
            assert manager.servers[0].status is RelayServerStatus.FAILED


async def test_one_relay_down_circuits_use_the_other(relay_server):
    down = f"/ip4/127.0.0.1/tcp/{closed_port()}/ws/p2p/{Keypair.generate().peer_id}"
    with trio.fail_after(10):
        async with (
            RelayManager(Keypair.generate(), [down, relay_server.multiaddr], FAST) as a,
            RelayManager(Keypair.generate(), [relay_server.multiaddr], FAST) as b,
        ):
            await a.wait_connected()
            await b.wait_connected()
            relay_id = await a.connect_to_peer(b.local_peer_id)
            assert a.circuit(relay_id) is not None
            await a.send_data(b.local_peer_id, relay_id, b"via the live relay")
            assert (await next_event(b.events, DataReceived)).data == b"via the live relay"
            failed = await next_event(a.events, ServerFailed)
            assert failed.server_id != str(relay_server.peer_id)
            statuses = {s.id: s.status for s in a.servers}
            assert statuses[str(relay_server.peer_id)] is RelayServerStatus.CONNECTED


async def test_full_relay_is_a_clear_status_then_connects_when_room_frees():
    with trio.fail_after(10):
        async with running_relay(max_sessions=1) as server:
            async with RelayManager(Keypair.generate(), [server.multiaddr], FAST) as a:
                await a.wait_connected()
                async with RelayManager(Keypair.generate(), [server.multiaddr], FAST) as b:
                    failed = await next_event(b.events, ServerFailed)
                    assert "too_many_sessions" in failed.cause
                    assert "too_many_sessions" in b.servers[0].last_error
                    await a.stop()
                    b.retry()
                    await next_event(b.events, ServerConnected)
                    assert b.servers[0].status is RelayServerStatus.CONNECTED


async def test_errors_carry_meaning():
    with trio.fail_after(10):
        # Circuit refused by a limit: the error names the limit's code.
        async with running_relay(max_circuits_per_peer=1) as server:
            async with (
                RelayManager(Keypair.generate(), [server.multiaddr], FAST) as a,
                RelayManager(Keypair.generate(), [server.multiaddr], FAST) as b,
            ):
                await a.wait_connected()
                await b.wait_connected()
                await a.connect_to_peer(b.local_peer_id)
                with pytest.raises(CircuitRefused) as info:
                    await a.connect_to_peer(b.local_peer_id)
                assert info.value.code == "too_many_circuits"
                with pytest.raises(ValueError, match="peer id"):
                    await a.connect_to_peer("not-a-peer-id")
        # No relay reachable at all.
        down = f"/ip4/127.0.0.1/tcp/{closed_port()}/ws/p2p/{Keypair.generate().peer_id}"
        async with RelayManager(Keypair.generate(), [down], FAST) as lonely:
            with pytest.raises(NoRelayAvailable):
                await lonely.connect_to_peer(str(Keypair.generate().peer_id))


async def test_unread_events_never_stall_reconnection():
    keypair = Keypair.generate()
    with trio.fail_after(20):
        async with running_relay(keypair=keypair) as server:
            port, address = server.signaling_port, server.multiaddr
            async with RelayManager(Keypair.generate(), [address], FAST, event_buffer=1) as manager:
                await manager.wait_connected()  # ServerConnected now fills the 1-slot queue
                await server.shutdown(0.5)
                async with running_relay(port=port, keypair=keypair):
                    # Nobody has read an event, yet the manager reconnected.
                    while (
                        manager.servers[0].status is not RelayServerStatus.CONNECTED
                        or manager.servers[0].failures
                    ):
                        await trio.sleep(0.01)
                    assert manager.dropped_status_events >= 1
