"""DTLS handshake time of two DtlsTransports over loopback UDP (real clock).

Run: python benchmarks/dtls_handshake.py [runs]   -> prints min / median / max in ms.
Each run uses fresh sockets and fresh endpoints; certificates are generated once,
as a peer connection would reuse its certificate.
"""

from __future__ import annotations

import socket
import statistics
import sys

import trio

from darkswap_trio._dtls import DtlsTransport, generate_dtls_certificate


class UdpDatagramTransport:
    def __init__(self, sock, peer):
        self.sock, self.peer = sock, peer

    async def send(self, datagram: bytes) -> None:
        await self.sock.sendto(datagram, self.peer)

    async def receive(self) -> bytes:
        data, _ = await self.sock.recvfrom(65536)
        return data


async def one_handshake(client_cert, server_cert) -> float:
    a = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b:
        await a.bind(("127.0.0.1", 0))
        await b.bind(("127.0.0.1", 0))
        client = DtlsTransport(
            UdpDatagramTransport(a, b.getsockname()),
            "client",
            client_cert,
            [("sha-256", server_cert.fingerprint())],
        )
        server = DtlsTransport(
            UdpDatagramTransport(b, a.getsockname()),
            "server",
            server_cert,
            [("sha-256", client_cert.fingerprint())],
        )
        done = trio.Event()

        async def run_server():
            async with server:
                await done.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_server)
            await trio.sleep(0)  # server task is waiting before the ClientHello leaves
            start = trio.current_time()
            async with client:
                elapsed = trio.current_time() - start
                done.set()
        return elapsed


async def main(runs: int) -> None:
    client_cert, server_cert = generate_dtls_certificate(), generate_dtls_certificate()
    times = []
    with trio.fail_after(60):
        for _ in range(runs):
            times.append(await one_handshake(client_cert, server_cert) * 1000)
    print(
        f"DTLS 1.2 handshake over loopback UDP, {runs} runs (ms): "
        f"min {min(times):.2f}  median {statistics.median(times):.2f}  max {max(times):.2f}"
    )


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 20)
