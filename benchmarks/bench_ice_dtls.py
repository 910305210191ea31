"""ICE + DTLS on loopback: establishment time against aiortc, and datagram throughput.

    python benchmarks/bench_ice_dtls.py [--runs 15] [--seconds 2] [--smoke]

Prints a Markdown table. Everything runs on 127.0.0.1 only: our ICE agents gather a
127.0.0.1 host candidate, aiortc gathers with ``iceServers=[]`` and aioice's interface
enumeration is pointed at 127.0.0.1 (both stacks then check one pair). Ours are the
ICE and DTLS cores (``IceAgent``, ``DtlsEndpoint``) run by
``darkswap_trio.testing.CoreLoop``: the layers below SCTP, without the rest of the
peer connection (``bench_datachannel.py`` measures that whole path).

(a) Establishment: two peers in one process (two IceAgent + DtlsEndpoint in one
    trio run; two aiortc RTCIceGatherer/RTCIceTransport/RTCDtlsTransport in one asyncio
    loop), from creating the ICE objects to both DTLS handshakes done, signaling
    in-process. Each peer starts DTLS as soon as its own ICE connects. Runs alternate
    between the stacks so background load hits both alike; certificates are made once.
    Ours runs twice: with the default Ta of 50 ms (RFC 8445 section 14.2) and with
    Ta = 5 ms, which both peers may agree on (a=ice-pacing). aioice paces its checks
    every 20 ms and nominates aggressively (USE-CANDIDATE on the first check), so it
    needs no second check; our agent uses regular nomination, whose USE-CANDIDATE check
    follows the first one's success after MIN_TA (5 ms), whatever Ta (Ta paces only
    ordinary checks, see proto/ice/_connectivity.py).
(b) Throughput: 1000-byte datagrams for --seconds per path, in 4 interleaved slices,
    with at most 64 in flight (a semaphore both ends share, so nothing overflows a
    socket buffer and nothing is lost): DTLS records over ICE, DTLS records on a
    bare UDP socket pair, and a raw trio UDP socket pair (the ceiling). Both ends
    share one trio thread, as in (a).
(c) The DTLS handshake alone over a bare loopback UDP socket pair (ours).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from darkswap_trio.proto.dtls import DtlsCertificate, DtlsEndpoint, DtlsState
from darkswap_trio.proto.ice import CandidateGathered, GatheringComplete, IceAgent, IceState
from darkswap_trio.testing import CoreLoop

LOOPBACK = "127.0.0.1"
DEFAULT_TA = 0.05
AGREED_TA = 0.005
DATAGRAM = 1000
WINDOW = 64
TARGET_RATIO = 0.5
THROUGHPUT_ROUNDS = 4


@dataclass
class Establishment:
    ice: float  # seconds until both peers' ICE connected
    total: float  # seconds until both peers' DTLS handshakes completed


# ---------------------------------------------------------------- ours (trio)


def new_certificate() -> DtlsCertificate:
    return DtlsCertificate.generate(datetime.datetime.now(datetime.UTC))


def loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    return sock


async def ice_pair(nursery: trio.Nursery, pacing: float) -> tuple[CoreLoop, CoreLoop]:
    """Two ICE agents on loopback, gathering, credentials and candidates exchanged."""
    loops = []
    for controlling in (True, False):
        sock = loopback_socket()
        agent = IceAgent(controlling, pacing=pacing)
        agent.add_local_candidate(sock.getsockname())
        loops.append(CoreLoop(sock, ice=agent))
    a, b = loops
    now = trio.current_time()
    for loop, other in ((a, b), (b, a)):
        assert loop.ice is not None and other.ice is not None
        loop.ice.set_remote_credentials(other.ice.local_ufrag, other.ice.local_pwd, now)
        nursery.start_soon(loop.run)
    for loop, other in ((a, b), (b, a)):
        assert loop.ice is not None and other.ice is not None
        loop.ice.gather(now)
        loop.flush()
        for event in loop.events:  # trickle, in process
            if isinstance(event, CandidateGathered):
                other.ice.add_remote_candidate(event.candidate, now)
            elif isinstance(event, GatheringComplete):
                other.ice.add_remote_candidate(None, now)
    a.flush()
    b.flush()
    return a, b


async def ice_connected(loop: CoreLoop) -> None:
    await loop.wait_for(lambda: loop.ice.state is IceState.CONNECTED)  # type: ignore[union-attr]


async def dtls_connected(loop: CoreLoop, role: str, cert, peer_cert) -> None:
    loop.dtls = DtlsEndpoint(role, cert, [("sha-256", peer_cert.fingerprint())])
    loop.dtls.start(trio.current_time())
    loop.flush()
    await loop.wait_for(lambda: loop.dtls.state is not DtlsState.HANDSHAKING)  # type: ignore[union-attr]
    assert loop.dtls.state is DtlsState.CONNECTED


async def ours_establish(
    cert_a: DtlsCertificate, cert_b: DtlsCertificate, pacing: float
) -> Establishment:
    ice_done: list[float] = []
    dtls_done: list[float] = []
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        a, b = await ice_pair(nursery, pacing)

        async def peer(loop: CoreLoop, role, cert: DtlsCertificate, peer_cert) -> None:
            await ice_connected(loop)
            ice_done.append(time.perf_counter())
            await dtls_connected(loop, role, cert, peer_cert)
            dtls_done.append(time.perf_counter())

        async with trio.open_nursery() as peers:
            peers.start_soon(peer, a, "client", cert_a, cert_b)
            peers.start_soon(peer, b, "server", cert_b, cert_a)
        nursery.cancel_scope.cancel()
    for loop in (a, b):
        loop.sock.close()
    return Establishment(max(ice_done) - start, max(dtls_done) - start)


# ---------------------------------------------------------------- aiortc (asyncio)


async def aiortc_establish(cert_a, cert_b) -> Establishment:
    from aiortc.rtcdtlstransport import RTCDtlsTransport
    from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport

    start = time.perf_counter()
    gatherers = [RTCIceGatherer(iceServers=[]), RTCIceGatherer(iceServers=[])]
    await asyncio.gather(*(g.gather() for g in gatherers))
    ices = [RTCIceTransport(g) for g in gatherers]
    ices[0]._connection.ice_controlling = True  # as RTCPeerConnection does for the offerer
    dtlss = [
        RTCDtlsTransport(ice, [cert]) for ice, cert in zip(ices, (cert_a, cert_b), strict=True)
    ]
    dtlss[0]._set_role("client")
    dtlss[1]._set_role("server")
    ice_done: list[float] = []
    dtls_done: list[float] = []

    async def peer(i: int) -> None:
        ice, other = ices[i], 1 - i
        for candidate in gatherers[other].getLocalCandidates():
            if candidate.ip == LOOPBACK:
                await ice.addRemoteCandidate(candidate)
        await ice.addRemoteCandidate(None)
        await ice.start(gatherers[other].getLocalParameters())
        ice_done.append(time.perf_counter())
        await dtlss[i].start(dtlss[other].getLocalParameters())
        dtls_done.append(time.perf_counter())

    try:
        await asyncio.gather(peer(0), peer(1))
        assert [d.state for d in dtlss] == ["connected", "connected"], "aiortc did not connect"
    finally:
        for dtls in dtlss:
            await dtls.stop()
        for ice in ices:
            await ice.stop()
    return Establishment(max(ice_done) - start, max(dtls_done) - start)


# ---------------------------------------------------------------- throughput (trio)


async def pump(
    send: Callable[[bytes], Awaitable[None]],
    receive: Callable[[], Awaitable[bytes]],
    seconds: float,
) -> tuple[int, float]:
    """Send DATAGRAM-byte messages for ``seconds`` (WINDOW in flight); (received, elapsed)."""
    window = trio.Semaphore(WINDOW)
    received = 0
    payload = bytes(DATAGRAM)

    async def sender() -> None:
        while True:
            await window.acquire()
            await send(payload)

    async def receiver() -> None:
        nonlocal received
        while True:
            data = await receive()
            assert len(data) == DATAGRAM
            received += 1
            window.release()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        nursery.start_soon(sender)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return received, time.perf_counter() - start


async def udp_pair():
    a = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await a.bind((LOOPBACK, 0))
    await b.bind((LOOPBACK, 0))
    return a, b


async def throughput_raw_udp(seconds: float) -> tuple[int, float]:
    a, b = await udp_pair()
    with a, b:
        peer = b.getsockname()
        return await pump(lambda d: a.sendto(d, peer), lambda: _recv(b), seconds)


async def _recv(sock) -> bytes:
    data, _ = await sock.recvfrom(65536)
    return data


async def _sync_send(loop: CoreLoop, data: bytes) -> None:
    loop.send(data)
    await trio.lowlevel.checkpoint()


async def _dtls_pump(a: CoreLoop, b: CoreLoop, seconds: float) -> tuple[int, float]:
    cert_a, cert_b = new_certificate(), new_certificate()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dtls_connected, a, "client", cert_a, cert_b)
        nursery.start_soon(dtls_connected, b, "server", cert_b, cert_a)
    return await pump(lambda d: _sync_send(a, d), b.receive, seconds)


async def throughput_dtls_over_udp(seconds: float) -> tuple[int, float]:
    sock_a, sock_b = loopback_socket(), loopback_socket()
    with sock_a, sock_b:
        a = CoreLoop(sock_a, peer=sock_b.getsockname())
        b = CoreLoop(sock_b, peer=sock_a.getsockname())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.run)
            nursery.start_soon(b.run)
            result = await _dtls_pump(a, b, seconds)
            nursery.cancel_scope.cancel()
    return result


async def throughput_dtls_over_ice(seconds: float) -> tuple[int, float]:
    async with trio.open_nursery() as nursery:
        a, b = await ice_pair(nursery, DEFAULT_TA)
        await ice_connected(a)
        await ice_connected(b)
        result = await _dtls_pump(a, b, seconds)
        nursery.cancel_scope.cancel()
    for loop in (a, b):
        loop.sock.close()
    return result


# ---------------------------------------------------------------- DTLS handshake alone


async def dtls_handshake_over_udp(cert_a: DtlsCertificate, cert_b: DtlsCertificate) -> float:
    sock_a, sock_b = loopback_socket(), loopback_socket()
    with sock_a, sock_b:
        a = CoreLoop(sock_a, peer=sock_b.getsockname())
        b = CoreLoop(sock_b, peer=sock_a.getsockname())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.run)
            nursery.start_soon(b.run)
            start = time.perf_counter()
            async with trio.open_nursery() as sides:
                sides.start_soon(dtls_connected, b, "server", cert_b, cert_a)
                sides.start_soon(dtls_connected, a, "client", cert_a, cert_b)
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
    return elapsed


# ---------------------------------------------------------------- report


def summary(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{statistics.median(ms):.1f} [{min(ms):.1f}-{max(ms):.1f}] ms"


def rate(received: int, elapsed: float) -> str:
    per_s = received / elapsed
    return f"{per_s:,.0f} msg/s, {per_s * DATAGRAM / 1e6:.1f} MB/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="establishments per stack (>= 10)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput run")
    parser.add_argument("--smoke", action="store_true", help="3 runs, 0.2 s: does it work")
    args = parser.parse_args()
    runs, seconds = (3, 0.2) if args.smoke else (args.runs, args.seconds)

    import aioice.ice
    from aiortc.rtcdtlstransport import RTCCertificate

    # aioice skips 127.0.0.1 and would check every interface: loopback only, like ours.
    aioice.ice.get_host_addresses = lambda **_: [LOOPBACK]
    aiortc_certs = (RTCCertificate.generateCertificate(), RTCCertificate.generateCertificate())
    our_certs = (new_certificate(), new_certificate())

    def bounded_trio(fn, *fn_args):
        async def run():
            with trio.fail_after(30):
                return await fn(*fn_args)

        return trio.run(run)

    async def bounded_aiortc():
        async with asyncio.timeout(30):
            return await aiortc_establish(*aiortc_certs)

    results: dict[str, list[Establishment]] = {"aiortc": [], "ta50": [], "ta5": []}
    for _ in range(runs):  # interleaved, so drifting background load hits all three
        results["aiortc"].append(asyncio.run(bounded_aiortc()))
        results["ta50"].append(bounded_trio(ours_establish, *our_certs, DEFAULT_TA))
        results["ta5"].append(bounded_trio(ours_establish, *our_certs, AGREED_TA))
    handshakes = [bounded_trio(dtls_handshake_over_udp, *our_certs) for _ in range(runs)]
    moved = {"raw": [0, 0.0], "udp": [0, 0.0], "ice": [0, 0.0]}
    for _ in range(THROUGHPUT_ROUNDS):  # interleaved slices, for the same reason
        for key, fn in (
            ("raw", throughput_raw_udp),
            ("udp", throughput_dtls_over_udp),
            ("ice", throughput_dtls_over_ice),
        ):
            received, elapsed = bounded_trio(fn, seconds / THROUGHPUT_ROUNDS)
            moved[key][0] += received
            moved[key][1] += elapsed
    raw, over_udp, over_ice = (tuple(moved[key]) for key in ("raw", "udp", "ice"))

    def totals(key: str) -> list[float]:
        return [r.total for r in results[key]]

    def ices(key: str) -> list[float]:
        return [r.ice for r in results[key]]

    def dtls_phase(key: str) -> list[float]:
        return [r.total - r.ice for r in results[key]]

    aiortc_median = statistics.median(totals("aiortc"))
    print(
        f"ICE + DTLS on loopback, {runs} establishments per stack, Python {sys.version.split()[0]}"
    )
    print()
    print("| Benchmark | ours | aiortc / baseline | ours / baseline | target | met |")
    print("|---|---|---|---|---|---|")
    for key, label in (("ta5", "Ta 5 ms, agreed"), ("ta50", "Ta 50 ms, default")):
        ratio = statistics.median(totals(key)) / aiortc_median
        met = "yes" if ratio <= TARGET_RATIO else "no"
        print(
            f"| ICE+DTLS establishment ({label}) | {summary(totals(key))} "
            f"| {summary(totals('aiortc'))} | {ratio:.2f}x | <= {TARGET_RATIO}x | {met} |"
        )
    for key, label in (("ta5", "Ta 5 ms"), ("ta50", "Ta 50 ms")):
        ratio = statistics.median(ices(key)) / statistics.median(ices("aiortc"))
        print(
            f"| of which ICE connected ({label}) | {summary(ices(key))} "
            f"| {summary(ices('aiortc'))} | {ratio:.2f}x | | |"
        )
    ours_dtls = dtls_phase("ta5") + dtls_phase("ta50")
    ratio = statistics.median(ours_dtls) / statistics.median(dtls_phase("aiortc"))
    print(
        f"| of which DTLS after ICE | {summary(ours_dtls)} "
        f"| {summary(dtls_phase('aiortc'))} | {ratio:.2f}x | | |"
    )
    print(f"| DTLS handshake alone, bare UDP | {summary(handshakes)} | | | | |")
    for label, result in (("over ICE", over_ice), ("on bare UDP", over_udp)):
        print(
            f"| {DATAGRAM} B datagrams, DTLS core {label} | {rate(*result)} "
            f"| raw UDP: {rate(*raw)} | {result[0] / result[1] / (raw[0] / raw[1]):.2f}x | | |"
        )


if __name__ == "__main__":
    main()
