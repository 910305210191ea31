"""Failures are loud and fast (issue #8): every way a relay or a peer can be out of reach
ends in a clear exception, with the real cause chained, within a bound and never by
taking the network down. Real relays and real loopback sockets throughout.
"""

import logging
import socket
import ssl
import time

import pytest
import trio
import trio.testing
from sdk_peers import FAST, network, peer

from darkswap_trio import (
    Keypair,
    PeerIdError,
    RelayAuthenticationError,
    RelayManager,
    RelayManagerConfig,
)
from darkswap_trio._p2p._network import PeerUnreachable
from darkswap_trio._relay_client._manager import NoRelayAvailable, RelayServerStatus
from darkswap_trio.testing import running_relay


@pytest.fixture
def unused_port():
    """A port nothing listens on (bound, never listening: connects are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def relay_warnings(caplog):
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "darkswap_trio.relay_manager" and r.levelno == logging.WARNING
    ]


# -- wait_relay_connected: raises as soon as no relay can still connect ---------------


async def test_relay_with_a_wrong_peer_id_fails_at_once_with_its_cause(relay_server, caplog):
    impostor = relay_server.multiaddr.rsplit("/p2p/", 1)[0] + f"/p2p/{Keypair.generate().peer_id}"
    with trio.fail_after(10):
        async with network([impostor]) as net:
            with pytest.raises(NoRelayAvailable) as info:
                await net.wait_relay_connected()
    error = info.value
    assert impostor in str(error) and "relay_id_mismatch" in str(error)
    assert isinstance(error.__cause__, RelayAuthenticationError)
    assert error.__cause__.code == "relay_id_mismatch"
    assert error.causes == {impostor: error.__cause__}
    assert any("relay_id_mismatch" in message for message in relay_warnings(caplog))


async def test_relay_demanding_a_jwt_we_lack_is_not_retried(caplog):
    from relay._auth import generate_jwt_keypair

    _, public_pem = generate_jwt_keypair("EdDSA")
    with trio.fail_after(10):
        async with running_relay(auth="jwt", jwt_key=public_pem) as server:
            async with network([server.multiaddr]) as net:
                with pytest.raises(NoRelayAvailable) as info:
                    await net.wait_relay_connected()
                record = net.relay_manager.servers[0]
                assert record.status is RelayServerStatus.FAILED
                assert record.failures == 1  # refused for good: no backoff, no retry
    assert isinstance(info.value.__cause__, RelayAuthenticationError)
    assert info.value.__cause__.code == "token_required"
    assert server.multiaddr in str(info.value)
    assert any("token_required" in message for message in relay_warnings(caplog))


async def test_untrusted_tls_certificate_surfaces_the_ssl_error(tmp_path, nursery, caplog):
    from darkswap_trio.testing._tls import SelfSignedCertificate
    from relay import AuthConfig, RelayConfig, serve_relay

    cert, key = SelfSignedCertificate.generate().write(tmp_path)
    config = RelayConfig(
        host="127.0.0.1",
        port=0,
        stun_port=None,
        metrics_port=None,
        auth=AuthConfig(mode="signature"),
        tls_cert=cert,
        tls_key=key,
    )
    with trio.fail_after(10):
        server = await nursery.start(serve_relay, config)
        assert "/tls/" in server.multiaddr
        # No ssl_context: the system's trust store, which does not know this certificate.
        async with network([server.multiaddr]) as net:
            with pytest.raises(NoRelayAvailable) as info:
                await net.wait_relay_connected()
            record = net.relay_manager.servers[0]
            assert isinstance(record.last_exception, ssl.SSLCertVerificationError)
            assert record.failures == 1
        await server.shutdown(0.5)
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert "certificate verify failed" in str(info.value)
    assert any("SSLCertVerificationError" in message for message in relay_warnings(caplog))


async def test_relay_down_fails_once_its_retries_are_spent(unused_port):
    down = f"/ip4/127.0.0.1/tcp/{unused_port}/ws/p2p/{Keypair.generate().peer_id}"
    with trio.fail_after(10):
        async with network([down]) as net:
            with pytest.raises(NoRelayAvailable) as info:
                await net.wait_relay_connected()
            assert net.relay_manager.servers[0].failures == FAST.max_reconnect_attempts + 1
    assert isinstance(info.value.__cause__, OSError)
    assert down in str(info.value)


async def test_wait_relay_connected_timeout_names_the_relay_and_cause(unused_port):
    down = f"/ip4/127.0.0.1/tcp/{unused_port}/ws/p2p/{Keypair.generate().peer_id}"
    patient = RelayManagerConfig(
        reconnect_interval=0.05, max_reconnect_interval=0.1, max_reconnect_attempts=10**6
    )  # never gives up by itself
    with trio.fail_after(10):
        async with network([down], relay_manager=patient) as net:
            started = trio.current_time()
            with pytest.raises(NoRelayAvailable) as info:
                await net.wait_relay_connected(timeout=0.5)
            assert 0.5 <= trio.current_time() - started < 5
    assert info.value.code == "relay_timeout"
    assert down in str(info.value) and "within 0.5s" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


async def test_one_good_relay_is_enough_and_two_failed_ones_are_named(relay_server, unused_port):
    down = f"/ip4/127.0.0.1/tcp/{unused_port}/ws/p2p/{Keypair.generate().peer_id}"
    impostor = relay_server.multiaddr.rsplit("/p2p/", 1)[0] + f"/p2p/{Keypair.generate().peer_id}"
    with trio.fail_after(10):
        async with network([down, impostor, relay_server.multiaddr]) as net:
            await net.wait_relay_connected()
            with pytest.raises(NoRelayAvailable) as info:
                await net.wait_relay_connected(2)
    assert down in str(info.value) and impostor in str(info.value)
    assert set(info.value.causes) == {down, impostor, relay_server.multiaddr}


async def test_wait_connected_wakes_every_waiter(relay_server):
    with trio.fail_after(10):
        async with RelayManager(Keypair.generate(), [relay_server.multiaddr], FAST) as manager:
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(manager.wait_connected)


# -- connect_to_peer: an unknown peer is known at once --------------------------------


@pytest.mark.parametrize("paths", [{}, {"enable_direct": False}, {"enable_relay": False}])
async def test_unknown_peer_is_unreachable_at_once(relay_server, paths):
    stranger = Keypair.generate().peer_id
    with trio.fail_after(10):
        async with peer(relay_server, **paths) as net:
            started = time.perf_counter()
            with pytest.raises(PeerUnreachable) as info:
                await net.connect_to_peer(stranger)
            elapsed = time.perf_counter() - started
            assert not net.connected_peers and not net._dialing
    assert info.value.code == "unknown_peer"
    assert str(stranger) in str(info.value)
    # The direct timeout is 30 s; the relay's answer takes about a millisecond.
    assert elapsed < 5, elapsed


# -- arguments: PeerId | str, anything else a TypeError, never a crash ---------------


async def test_peer_id_objects_are_accepted_and_bad_arguments_refused(relay_server):
    with trio.fail_after(20):
        async with peer(relay_server) as a, peer(relay_server, enable_direct=False) as b:
            b_id = b.keypair.peer_id  # a PeerId, not a str
            for bad in (12345, b"12D3KooW", None, ["x"]):
                with pytest.raises(TypeError, match="PeerId or str"):
                    await a.connect_to_peer(bad)
            with pytest.raises(PeerIdError):
                await a.connect_to_peer("not-a-peer-id")
            with pytest.raises(ValueError, match="own id"):
                await a.connect_to_peer(a.keypair.peer_id)
            link = await a.connect_to_peer(b_id)
            incoming = await b.accept_peer()
            assert link.peer_id == str(b_id) and incoming.peer_id == a.local_peer_id
            assert a.link(b_id) is link and a.metrics(b_id) is not None
            await a.send_to_peer(b_id, b"by PeerId")
            assert await incoming.receive() == b"by PeerId"
            with pytest.raises(TypeError, match="bytes"):
                await a.send_to_peer(b_id, "not bytes")
            # The CIDv1 form names the same peer.
            assert a.link(b_id.to_cid()) is link
            relay_id = await a.connect_via_relay(b_id)
            await a.send_via_relay(b_id, relay_id, b"plain circuit")
            with pytest.raises(TypeError):
                await a.send_via_relay(object(), relay_id, b"x")
            # Nothing above hurt the network or the link.
            await link.send(b"still here")
            assert await incoming.receive() == b"still here"
            assert a.relay_manager.servers[0].status is RelayServerStatus.CONNECTED


# -- unread events never cost an accept ----------------------------------------------


@pytest.mark.parametrize("enable_direct", [False, True])
async def test_eight_dialers_all_accepted_by_a_peer_that_never_reads_events(
    relay_server, enable_direct
):
    dialers = 8
    with trio.fail_after(60):
        async with peer(relay_server, event_buffer=4, enable_direct=enable_direct) as acceptor:
            accepted, dialed = {}, {}
            all_accepted, all_welcomed, finished = trio.Event(), trio.Event(), trio.Event()

            async def accept_all() -> None:
                while len(accepted) < dialers:
                    link = await acceptor.accept_peer()
                    accepted[link.peer_id] = link
                all_accepted.set()

            async def dial(index: int) -> None:
                async with peer(relay_server, event_buffer=4, enable_direct=enable_direct) as net:
                    link = await net.connect_to_peer(acceptor.local_peer_id)
                    await link.send(b"hello %d" % index)
                    assert await link.receive() == b"welcome"
                    dialed[net.local_peer_id] = link
                    if len(dialed) == dialers:
                        all_welcomed.set()
                    await finished.wait()  # keep this peer up until every check is done

            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept_all)
                for index in range(dialers):
                    nursery.start_soon(dial, index)
                await all_accepted.wait()
                for link in accepted.values():
                    assert (await link.receive()).startswith(b"hello ")
                    await link.send(b"welcome")
                await all_welcomed.wait()
                finished.set()
            assert set(accepted) == set(dialed)
            assert acceptor.dropped_incoming_links == 0
            assert acceptor.dropped_events > 0  # offered and dropped, never waited on


async def test_unread_data_events_hold_back_only_event_delivery(relay_server):
    # b never reads events: a's plain circuit fills them with DataReceived. Links to b,
    # new and old, and b's accepts go on regardless.
    with trio.fail_after(30):
        # Relay only at b: the direct path never touches events, the relay path did.
        async with (
            peer(relay_server, event_buffer=2, enable_direct=False) as b,
            peer(relay_server) as a,
            peer(relay_server) as c,
        ):
            first = await c.connect_to_peer(b.local_peer_id)
            first_in = await b.accept_peer()
            relay_id = await a.connect_via_relay(b.local_peer_id)
            for index in range(20):
                await a.send_via_relay(b.local_peer_id, relay_id, b"unread %d" % index)
            # All 20 at b and its pump blocked on the full queue before the next circuit
            # arrives: otherwise, on a busy machine, that circuit's CircuitCreated could
            # be queued before the pump ran and nothing would be dropped.
            while not (
                b.relay_manager.circuit_server(relay_id) is not None
                and b.relay_manager.circuit(relay_id).statistics().messages_received == 20
            ):
                await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked()
            link = await a.connect_to_peer(b.local_peer_id)
            incoming = await b.accept_peer()
            assert incoming.peer_id == a.local_peer_id
            await link.send(b"through")
            assert await incoming.receive() == b"through"
            await first.send(b"old link")
            assert await first_in.receive() == b"old link"
            assert b.relay_manager.dropped_status_events > 0  # the queue was full all along
