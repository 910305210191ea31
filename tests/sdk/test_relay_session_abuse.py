"""Hardening under abuse and faults, SDK side (issue #10, items 1, 2 and 5).

Real relays and loopback sockets throughout. A slow uplink is a TCP proxy on loopback
that forwards client -> relay at a fixed rate with a small receive buffer, so our bytes
queue in our own socket, as they do behind a real slow link.
"""

import socket
from contextlib import asynccontextmanager

import pytest
import trio
from sdk_peers import relayed_circuit

from darkswap_trio import (
    CircuitEnded,
    Config,
    DataReceived,
    Keypair,
    P2PConfig,
    P2PNetwork,
    RelayManager,
    RelayManagerConfig,
    ServerConnected,
    ServerDisconnected,
    open_relay_session,
)
from darkswap_trio._relay_client import _session_writer
from darkswap_trio.testing import running_relay
from darkswap_trio.webrtc import PeerConnectionConfig

LOOPBACK = PeerConnectionConfig(host_addresses=["127.0.0.1"], include_loopback=True)
# A circuit window (16 MB) larger than the socket buffers: a sender that always has
# credit blocks in the socket, never on credit.
BIG_WINDOW = dict(
    circuit_window=16 << 20, messages_per_peer_rate=100_000, messages_per_peer_burst=100_000
)


@asynccontextmanager
async def throttled_uplink(relay, rate, *, first_stalls_after=None):
    """A loopback TCP proxy to ``relay``: client->relay at ``rate`` bytes/s; yields a multiaddr.

    ``first_stalls_after``: the first connection stops forwarding (a dead uplink) after
    that many bytes; later connections are served normally.
    """
    connections = 0
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listeners[0].socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    port = listeners[0].socket.getsockname()[1]

    async def forward(source, sink, limit, stall_after=None):
        chunk, forwarded = 8 * 1024, 0
        try:
            while data := await source.receive_some(chunk):
                await sink.send_all(data)
                forwarded += len(data)
                if stall_after is not None and forwarded >= stall_after:
                    await trio.sleep_forever()
                if limit:
                    await trio.sleep(len(data) / limit)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await sink.aclose()

    async def handle(client):
        nonlocal connections
        connections += 1
        stall_after = first_stalls_after if connections == 1 else None
        upstream = await trio.open_tcp_stream("127.0.0.1", relay.signaling_port)
        async with trio.open_nursery() as pipes:
            pipes.start_soon(forward, client, upstream, rate, stall_after)
            pipes.start_soon(forward, upstream, client, 0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        yield relay.multiaddr.replace(f"/tcp/{relay.signaling_port}/", f"/tcp/{port}/")
        nursery.cancel_scope.cancel()


async def drain_incoming(session, nursery):
    while True:
        circuit = await session.accept_circuit()

        async def drain(circuit=circuit):
            async for _ in circuit:
                pass

        nursery.start_soon(drain)


async def hammer(circuit):
    payload = b"x" * 60_000
    try:
        while True:
            await circuit.send(payload)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


# -- item 1: control frames never wait behind bulk data --------------------------------


async def test_pings_are_answered_while_a_circuit_sender_with_unlimited_credit_saturates_the_uplink():
    interval = 0.5
    with trio.fail_after(20):
        async with (
            running_relay(**BIG_WINDOW) as relay,
            throttled_uplink(relay, 2_000_000) as slow,
            open_relay_session(relay.multiaddr, Keypair.generate()) as friend,
            open_relay_session(slow, Keypair.generate(), ping_interval=interval) as sender,
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain_incoming, friend, nursery)
                circuit = await sender.request_circuit(friend.local_peer_id)
                nursery.start_soon(hammer, circuit)
                await trio.sleep(1)  # the socket buffers are full by now
                # Our own pings, and the session's pinger's, are answered in time.
                rtts = []
                for _ in range(6):
                    with trio.fail_after(2 * interval + 2):
                        rtts.append(await sender.ping())
                pongs_seen = sender.last_pong
                await trio.sleep(3 * interval)
                assert sender.last_pong > pongs_seen  # the pinger keeps getting Pongs
                assert not sender.closed
                assert circuit.bytes_sent > 2_000_000, "the sender was not saturating the uplink"
                nursery.cancel_scope.cancel()


async def test_a_session_that_fails_never_takes_the_manager_down_and_the_manager_reconnects(
    monkeypatch,
):
    # The uplink dies in the middle of a bulk send: the session fails with errors in the
    # sender, the pinger (waiting to write its Ping) and the writer at once.
    monkeypatch.setattr(_session_writer, "SEND_TIMEOUT", 1.0)
    config = RelayManagerConfig(
        ping_interval=0.1, reconnect_interval=0.05, max_reconnect_interval=0.2
    )
    with trio.fail_after(30):
        async with (
            running_relay(**BIG_WINDOW) as relay,
            throttled_uplink(relay, 0, first_stalls_after=1_000_000) as slow,
            open_relay_session(relay.multiaddr, Keypair.generate()) as friend,
        ):
            async with (
                RelayManager(Keypair.generate(), [slow], config) as manager,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(drain_incoming, friend, nursery)
                await manager.wait_connected(timeout=5)
                first_session = manager.servers[0].session
                circuit = await manager.open_circuit(friend.local_peer_id)
                nursery.start_soon(hammer, circuit)
                while not isinstance(await manager.events.receive(), ServerDisconnected):
                    pass
                while not isinstance(await manager.events.receive(), ServerConnected):
                    pass
                assert first_session.closed
                assert manager.servers[0].session is not first_session
                await manager.servers[0].session.ping()  # the new session works
                nursery.cancel_scope.cancel()


async def test_the_write_turn_goes_to_control_frames_first_then_data_in_arrival_order(
    autojump_clock,
):
    from darkswap_trio._relay_client._control_first_lock import (
        ControlFirstLock,  # here: benchmarks import this module
    )

    lock, order = ControlFirstLock(), []

    async def write(name, control, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        async with lock.hold(control=control):
            order.append(name)
            await trio.sleep(1)  # a frame being written

    async with trio.open_nursery() as nursery:
        await nursery.start(write, "data-1", False)  # holds the turn
        for name in ("data-2", "data-3"):
            await nursery.start(write, name, False)
        await nursery.start(write, "ping", True)
        await nursery.start(write, "credit", True)
    assert order == ["data-1", "ping", "credit", "data-2", "data-3"]


async def test_a_circuit_send_cancelled_before_its_write_costs_no_credit():
    with trio.fail_after(10):
        async with relayed_circuit() as (circuit, incoming):
            credit = circuit.statistics().send_credit
            with trio.move_on_after(0):
                await circuit.send(b"never sent")
            assert circuit.statistics().send_credit == credit and circuit.messages_sent == 0
            await circuit.send(b"sent")
            assert await incoming.receive() == b"sent"


# -- item 2: an abandoned ping never answers (or blocks) a later one --------------------


async def test_a_ping_cancelled_before_it_was_sent_leaves_the_session_healthy():
    interval = 0.3
    with trio.fail_after(10):
        async with (
            running_relay() as relay,
            open_relay_session(
                relay.multiaddr, Keypair.generate(), ping_interval=interval
            ) as session,
        ):
            with trio.move_on_after(0):
                await session.ping()
            await trio.sleep(4 * interval)  # the pinger's pings must each get their own Pong
            assert not session.closed
            assert await session.ping() >= 0


async def test_a_ping_cancelled_while_waiting_for_its_pong_does_not_take_a_later_pong():
    with trio.fail_after(10):
        async with (
            running_relay() as relay,
            open_relay_session(relay.multiaddr, Keypair.generate(), ping_interval=60) as session,
        ):
            for _ in range(20):
                with trio.move_on_after(0.0001):
                    await session.ping()  # sent; often cancelled before its Pong
            await trio.sleep(0.2)  # late Pongs arrive and are dropped, not matched
            assert not session._pending_pings
            for _ in range(5):
                with trio.fail_after(2):
                    await session.ping()
            assert not session._pending_pings and not session.closed


# -- item 5: unsolicited circuits are idle-closed or refused; honest ones unaffected ---


def victim_network(relay, **p2p):
    config = Config(
        p2p=P2PConfig(relay_servers=[relay.multiaddr], enable_direct=False, **p2p),
        relay_manager=RelayManagerConfig(ping_interval=1),
    )
    return P2PNetwork(config, peer_connection_config=LOOPBACK)


async def test_silent_unsolicited_circuits_are_capped_per_peer_and_idle_closed():
    with trio.fail_after(20):
        async with (
            running_relay() as relay,
            victim_network(
                relay, relay_circuit_idle_timeout=1.0, max_unclaimed_relay_circuits=2
            ) as victim,
            open_relay_session(relay.multiaddr, Keypair.generate()) as attacker,
        ):
            await victim.wait_relay_connected()
            opened = trio.current_time()
            silent = [await attacker.request_circuit(victim.local_peer_id) for _ in range(3)]
            # The third waits beyond the per-peer cap: closed at once.
            with pytest.raises(trio.EndOfChannel):
                with trio.fail_after(0.8):
                    await silent[2].receive()
            assert victim.incoming_circuits.statistics().over_limit == 1
            for circuit in silent[:2]:
                with pytest.raises(trio.EndOfChannel):
                    await circuit.receive()
            assert trio.current_time() - opened >= 1.0
            stats = victim.incoming_circuits.statistics()
            assert (stats.idle_closed, stats.unclaimed) == (2, 0)
            # An honest peer's link is not affected: it outlives the idle timeout.
            async with victim_network(relay) as honest:
                await honest.wait_relay_connected()
                link = await honest.connect_to_peer(victim.local_peer_id)
                incoming = await victim.accept_peer()
                await trio.sleep(1.5)
                await link.send(b"still linked")
                assert await incoming.receive() == b"still linked"


async def test_a_plain_circuit_goes_quiet_and_is_closed_idle_after_it_was_used():
    with trio.fail_after(20):
        async with (
            running_relay() as relay,
            victim_network(relay, relay_circuit_idle_timeout=0.5) as victim,
            open_relay_session(relay.multiaddr, Keypair.generate()) as sender,
        ):
            await victim.wait_relay_connected()
            circuit = await sender.request_circuit(victim.local_peer_id)
            for i in range(4):  # activity every 0.3 s keeps it open past the timeout
                await circuit.send(b"msg %d" % i)
                await trio.sleep(0.3)
            with pytest.raises(trio.EndOfChannel):
                await circuit.receive()  # then 0.5 s of silence closes it
            received = []
            async for event in victim.events:
                if isinstance(event, DataReceived):
                    received.append(event.data)
                if isinstance(event, CircuitEnded) and event.relay_id == circuit.relay_id:
                    assert event.reason == "idle"
                    break
            assert received == [b"msg 0", b"msg 1", b"msg 2", b"msg 3"]


async def test_plain_circuits_are_refused_by_config_or_filter_but_links_still_open():
    friend_key = Keypair.generate()
    friend_id = str(friend_key.peer_id)
    with trio.fail_after(20):
        async with (
            running_relay() as relay,
            victim_network(relay, accept_relay_circuits=lambda peer: peer == friend_id) as victim,
            open_relay_session(relay.multiaddr, Keypair.generate()) as stranger,
            open_relay_session(relay.multiaddr, friend_key) as friend,
        ):
            await victim.wait_relay_connected()
            unwanted = await stranger.request_circuit(victim.local_peer_id)
            await unwanted.send(b"buy my stuff")
            with pytest.raises(trio.EndOfChannel):
                await unwanted.receive()
            assert victim.incoming_circuits.statistics().refused == 1
            welcome = await friend.request_circuit(victim.local_peer_id)
            await welcome.send(b"hello friend")
            async for event in victim.events:
                if isinstance(event, DataReceived):
                    assert (event.peer_id, event.data) == (friend_id, b"hello friend")
                    break
            # Links are not plain circuits: a peer refusing them all still accepts links.
        async with (
            running_relay() as relay,
            victim_network(relay, accept_relay_circuits=False) as victim,
            victim_network(relay) as dialer,
        ):
            await victim.wait_relay_connected()
            await dialer.wait_relay_connected()
            link = await dialer.connect_to_peer(victim.local_peer_id)
            incoming = await victim.accept_peer()
            await link.send(b"link ok")
            assert await incoming.receive() == b"link ok"
