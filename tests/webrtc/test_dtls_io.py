"""DtlsTransport over real loopback UDP, and over memory channels in virtual time."""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager

import pytest
import trio

from darkswap_trio.testing import VirtualNet
from darkswap_trio.webrtc import DtlsError, DtlsTransport, generate_dtls_certificate
from darkswap_trio.webrtc._srtp import export_srtp_keys

CLIENT_CERT = generate_dtls_certificate()
SERVER_CERT = generate_dtls_certificate()
OTHER_CERT = generate_dtls_certificate()


def expect(cert):
    return [("sha-256", cert.fingerprint())]


class UdpDatagramTransport:
    """A UDP socket with a fixed peer, in the DatagramTransport shape."""

    def __init__(self, sock: trio.socket.SocketType, peer) -> None:
        self.sock, self.peer = sock, peer

    async def send(self, datagram: bytes) -> None:
        await self.sock.sendto(datagram, self.peer)

    async def receive(self) -> bytes:
        data, _ = await self.sock.recvfrom(65536)
        return data


@asynccontextmanager
async def udp_pair():
    a = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b:
        await a.bind(("127.0.0.1", 0))
        await b.bind(("127.0.0.1", 0))
        yield UdpDatagramTransport(a, b.getsockname()), UdpDatagramTransport(b, a.getsockname())


class MemoryDatagramTransport:
    """One end of an in-memory datagram link; ``silent`` ends never deliver anything."""

    def __init__(self, send_channel, receive_channel) -> None:
        self.send_channel, self.receive_channel = send_channel, receive_channel

    async def send(self, datagram: bytes) -> None:
        await self.send_channel.send(datagram)

    async def receive(self) -> bytes:
        return await self.receive_channel.receive()


def memory_pair():
    a_send, b_receive = trio.open_memory_channel[bytes](64)
    b_send, a_receive = trio.open_memory_channel[bytes](64)
    return MemoryDatagramTransport(a_send, a_receive), MemoryDatagramTransport(b_send, b_receive)


async def test_handshake_and_data_over_loopback_udp():
    with trio.fail_after(10):
        async with udp_pair() as (a, b):
            client = DtlsTransport(a, "client", CLIENT_CERT, expect(SERVER_CERT))
            server = DtlsTransport(b, "server", SERVER_CERT, expect(CLIENT_CERT))
            async with trio.open_nursery() as nursery:
                server_ready = trio.Event()

                async def run_server():
                    async with server:
                        server_ready.set()
                        assert await server.receive() == b"hello from client"
                        await server.send(b"hello from server")
                        big = await server.receive()
                        await server.send(big[::-1])
                        with pytest.raises(trio.EndOfChannel):
                            await server.receive()

                nursery.start_soon(run_server)
                async with client:
                    assert client.remote_fingerprint == SERVER_CERT.sdp_fingerprint
                    assert client.srtp_profile == "SRTP_AES128_CM_SHA1_80"
                    await client.send(b"hello from client")
                    assert await client.receive() == b"hello from server"
                    big = bytes(range(256)) * 4
                    await client.send(big)
                    assert await client.receive() == big[::-1]
                    with pytest.raises(ValueError):
                        await client.send(b"x" * (client.max_message_size + 1))
                    await server_ready.wait()
                    assert server.remote_fingerprint == CLIENT_CERT.sdp_fingerprint
                    client_keys = export_srtp_keys(client.endpoint)
                    server_keys = export_srtp_keys(server.endpoint)
                    assert client_keys.local_key_salt == server_keys.remote_key_salt
                    assert client_keys.remote_key_salt == server_keys.local_key_salt
                    stats = client.statistics()
                    assert stats.dtls.application_bytes_sent == 17 + len(big)
                    assert stats.received_dropped == 0
                with pytest.raises(trio.ClosedResourceError):
                    await client.send(b"after close")
                with pytest.raises(trio.ClosedResourceError):
                    await client.receive()


async def test_fingerprint_mismatch_breaks_the_client_and_closes_the_server():
    with trio.fail_after(10):
        async with udp_pair() as (a, b):
            client = DtlsTransport(a, "client", CLIENT_CERT, expect(OTHER_CERT))
            server = DtlsTransport(b, "server", SERVER_CERT, expect(CLIENT_CERT))
            async with trio.open_nursery() as nursery:

                async def run_server():
                    async with server:
                        with pytest.raises(trio.BrokenResourceError):
                            # close_notify arrives; the first receive ends the channel.
                            try:
                                await server.receive()
                            except trio.EndOfChannel:
                                await server.send(b"too late")

                nursery.start_soon(run_server)
                with pytest.raises(trio.BrokenResourceError) as info:
                    async with client:
                        pytest.fail("handshake must not succeed")
                cause = info.value.__cause__
                assert isinstance(cause, DtlsError)
                assert SERVER_CERT.fingerprint() in str(cause)
                assert OTHER_CERT.fingerprint() in str(cause)


async def test_peer_close_ends_the_channel_and_breaks_sending(autojump_clock):
    a, b = memory_pair()
    client = DtlsTransport(a, "client", CLIENT_CERT, expect(SERVER_CERT))
    server = DtlsTransport(b, "server", SERVER_CERT, expect(CLIENT_CERT))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def run_client():
                async with client:
                    await client.send(b"bye")

            nursery.start_soon(run_client)
            async with server:
                assert await server.receive() == b"bye"
                with pytest.raises(trio.EndOfChannel):
                    await server.receive()
                with pytest.raises(trio.BrokenResourceError):
                    await server.send(b"anyone?")


async def test_handshake_times_out_against_a_silent_peer(autojump_clock):
    a, _silent = memory_pair()
    client = DtlsTransport(a, "client", CLIENT_CERT, expect(SERVER_CERT), handshake_timeout=20)
    start = trio.current_time()
    with pytest.raises(trio.BrokenResourceError) as info:
        async with client:
            pass
    assert trio.current_time() - start == pytest.approx(20)
    assert "did not complete" in str(info.value.__cause__)
    # 1 + 2 + 4 + 8 s of backoff fit in 20 s: the ClientHello went out 5 times.
    assert client.statistics().dtls.retransmissions == 4


async def test_cancel_during_handshake_is_prompt(autojump_clock):
    a, _silent = memory_pair()
    start = trio.current_time()
    with trio.move_on_after(2.5) as scope:
        async with DtlsTransport(a, "client", CLIENT_CERT, expect(SERVER_CERT)):
            pytest.fail("no handshake is possible")
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(2.5)


async def test_cancelled_owner_still_sends_close_notify(autojump_clock):
    a, b = memory_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            client_scope = trio.CancelScope()
            client_connected = trio.Event()

            async def run_client():
                with client_scope:
                    async with DtlsTransport(a, "client", CLIENT_CERT, expect(SERVER_CERT)):
                        client_connected.set()
                        await trio.sleep_forever()

            nursery.start_soon(run_client)
            async with DtlsTransport(b, "server", SERVER_CERT, expect(CLIENT_CERT)) as server:
                await client_connected.wait()
                client_scope.cancel()
                with pytest.raises(trio.EndOfChannel):
                    await server.receive()


async def test_broken_transport_breaks_receive(autojump_clock):
    a, b = memory_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_and_wait, b)
            async with DtlsTransport(a, "client", CLIENT_CERT, expect(SERVER_CERT)) as client:
                await a.receive_channel.aclose()  # the transport under DTLS goes away
                with pytest.raises(trio.BrokenResourceError) as info:
                    await client.receive()
                assert isinstance(info.value.__cause__, trio.ClosedResourceError)
            nursery.cancel_scope.cancel()


async def _serve_and_wait(transport):
    async with DtlsTransport(transport, "server", SERVER_CERT, expect(CLIENT_CERT)):
        await trio.sleep_forever()


async def test_slow_reader_drops_instead_of_buffering_without_bound(autojump_clock):
    a, b = memory_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server_holder = []
            server_ready = trio.Event()

            async def run_server():
                async with DtlsTransport(b, "server", SERVER_CERT, expect(CLIENT_CERT)) as server:
                    server_holder.append(server)
                    server_ready.set()
                    await trio.sleep_forever()

            nursery.start_soon(run_server)
            async with DtlsTransport(
                a, "client", CLIENT_CERT, expect(SERVER_CERT), receive_buffer_size=4
            ) as client:
                await server_ready.wait()
                for i in range(10):
                    await server_holder[0].send(b"message %d" % i)
                await trio.testing.wait_all_tasks_blocked()
                stats = client.statistics()
                assert stats.received_buffered == 4
                assert stats.received_dropped == 6
                assert [await client.receive() for _ in range(4)] == [
                    b"message %d" % i for i in range(4)
                ]
            nursery.cancel_scope.cancel()


async def test_handshakes_over_lossy_virtual_net_in_virtual_time(autojump_clock):
    lost = retransmissions = 0
    for seed in range(8):
        net = VirtualNet(seed, loss=0.2, duplicate=0.1, delay=0.02, jitter=0.05)
        a = await net.bind(("10.0.0.1", 5000))
        b = await net.bind(("10.0.0.2", 5000))
        client = DtlsTransport(
            UdpDatagramTransport(a, b.getsockname()), "client", CLIENT_CERT, expect(SERVER_CERT)
        )
        server = DtlsTransport(
            UdpDatagramTransport(b, a.getsockname()), "server", SERVER_CERT, expect(CLIENT_CERT)
        )
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_enter_and_wait, server)
                async with client:
                    assert client.remote_fingerprint == SERVER_CERT.sdp_fingerprint
                    retransmissions += client.statistics().dtls.retransmissions
                    retransmissions += server.statistics().dtls.retransmissions
                nursery.cancel_scope.cancel()
        lost += net.statistics().lost
    assert lost > 0 and retransmissions > 0


async def _enter_and_wait(transport):
    async with transport:
        await trio.sleep_forever()
