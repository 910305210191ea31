"""The production path (PeerCore under its trio driver) against aiortc's ORTC stack,
in every ICE x DTLS role pairing, and DTLS fingerprint checks both ways.

ORTC lets each side pick its ICE role and DTLS role independently (SDP ties them to
offer and answer, so test_peer_connection_aiortc.py reaches only some pairings). Our
side is what ``PeerConnection`` runs without the SDP: an ``IceAgent`` and a
``DtlsEndpoint`` given to a ``PeerCore``, driven by ``PeerDriver`` on one UDP socket.
aiortc's side is ``RTCIceGatherer`` / ``RTCIceTransport`` / ``RTCDtlsTransport`` /
``RTCSctpTransport`` and a negotiated ``RTCDataChannel`` that echoes, in an asyncio loop
on a worker thread (``asyncio_peer.py``).

Loopback only: aiortc gathers with ``iceServers=[]`` (no STUN server), aioice's
interface enumeration is pointed at 127.0.0.1, and candidates are filtered to
127.0.0.1 on both sides anyway.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aioice.ice
import pytest
import trio
from aiortc import RTCDataChannel, RTCDataChannelParameters, RTCSctpTransport
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
)
from aiortc.rtcicetransport import RTCIceGatherer, RTCIceParameters, RTCIceTransport
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp
from asyncio_peer import AsyncioPeerThread

from darkswap_trio.proto.dtls import DtlsCertificate, DtlsEndpoint
from darkswap_trio.proto.ice import IceAgent
from darkswap_trio.proto.ice._checklist import parse_candidate_untrusted
from darkswap_trio.proto.peer import PeerCore
from darkswap_trio.webrtc._driver import PeerDriver
from darkswap_trio.webrtc._udp_offload import UdpBatchSocket

MESSAGES = 10
LOOPBACK = "127.0.0.1"
WRONG_FINGERPRINT = ":".join(["AB"] * 32)


async def aiortc_peer(
    controlling: bool,
    dtls_role: str,
    certificate: RTCCertificate,
    to_trio: Callable[[tuple[Any, ...]], None],
    exchange_data: bool = True,
) -> None:
    """aiortc's side: gather, signal, ICE, DTLS, SCTP, then echo our messages back."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    to_trio(("inbox", lambda item: loop.call_soon_threadsafe(inbox.put_nowait, item)))
    gatherer = RTCIceGatherer(iceServers=[])  # never Google's default STUN server
    ice = RTCIceTransport(gatherer)
    dtls = RTCDtlsTransport(ice, [certificate])
    sctp = RTCSctpTransport(dtls)
    closed = asyncio.Event()
    dtls.on("statechange", lambda: closed.set() if dtls.state == "closed" else None)
    try:
        async with asyncio.timeout(10):
            await gatherer.gather()
            # ORTC would derive these from each other (controlling = DTLS server);
            # set both explicitly so every pairing is exercised.
            ice._connection.ice_controlling = controlling
            ice._role_set = True
            dtls._set_role(dtls_role)
            parameters = gatherer.getLocalParameters()
            to_trio(
                (
                    "parameters",
                    parameters.usernameFragment,
                    parameters.password,
                    [
                        candidate_to_sdp(c)
                        for c in gatherer.getLocalCandidates()
                        if c.ip == LOOPBACK
                    ],
                    [(f.algorithm, f.value) for f in dtls.getLocalParameters().fingerprints],
                )
            )
            _, ufrag, pwd, candidates, fingerprints = await inbox.get()
            for sdp in candidates:
                await ice.addRemoteCandidate(candidate_from_sdp(sdp))
            await ice.addRemoteCandidate(None)
            await ice.start(RTCIceParameters(usernameFragment=ufrag, password=pwd))
            await dtls.start(
                RTCDtlsParameters(fingerprints=[RTCDtlsFingerprint(a, v) for a, v in fingerprints])
            )
            to_trio(("started", ice.state, ice.role, dtls.state))
            if dtls.state == "connected" and exchange_data:
                channel = RTCDataChannel(
                    sctp, RTCDataChannelParameters("echo", negotiated=True, id=1)
                )
                # A negotiated channel exists on both ends only once both made it: we
                # speak first, so nothing arrives at ours before it exists.
                channel.on(
                    "message",
                    lambda message: channel.send(
                        b"hello from aiortc" if message == b"hello" else b"echo:" + message
                    ),
                )
                await sctp.start(sctp.getCapabilities(), 5000)
                await closed.wait()  # our ABORT and close_notify end aiortc's transports
                to_trio(("closed", dtls.state))
            await inbox.get()  # ("stop",): the trio side is done with us
    except Exception as exc:  # reported to the trio side, which fails the test
        to_trio(("error", repr(exc)))
    finally:
        await sctp.stop()
        await dtls.stop()
        await ice.stop()


def AiortcThread(nursery: trio.Nursery, **peer_args: Any) -> AsyncioPeerThread:
    """:func:`aiortc_peer` on a worker thread."""
    return AsyncioPeerThread(nursery, aiortc_peer, **peer_args)


@asynccontextmanager
async def our_side(controlling: bool) -> AsyncIterator[PeerDriver]:
    """A PeerCore with its IceAgent (gathering on loopback) under the trio driver."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((LOOPBACK, 0))
    core = PeerCore(local_addr=sock.getsockname())
    driver = PeerDriver(core, UdpBatchSocket(sock))
    agent = IceAgent(controlling, pacing=0.02)
    agent.add_local_candidate(sock.getsockname())
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(driver.run)
            core.start(agent, trio.current_time())
            driver.flush()
            try:
                yield driver
            finally:
                driver.close()
                nursery.cancel_scope.cancel()
    finally:
        sock.close()


async def signal(
    driver: PeerDriver,
    aiortc: AsyncioPeerThread,
    dtls: DtlsEndpoint,
    our_fingerprint: str,
) -> None:
    """ICE parameters and candidates both ways; our DTLS endpoint with aiortc's."""
    _, ufrag, pwd, candidates, _ = await aiortc.receive()
    core, now = driver.core, trio.current_time()
    core.set_remote(dtls, ufrag, pwd, now)
    for sdp in candidates:
        candidate = parse_candidate_untrusted(sdp)
        assert candidate.host == LOOPBACK
        core.add_remote_candidate(candidate, now)
    core.add_remote_candidate(None, now)
    assert driver.app.candidates[-1] is None  # host candidates only: gathering is done
    ours = [c.to_sdp() for c in driver.app.candidates if c is not None]
    assert core.ice is not None
    aiortc.send(
        (
            "parameters",
            core.ice.local_ufrag,
            core.ice.local_pwd,
            ours,
            [("sha-256", our_fingerprint)],
        )
    )
    driver.flush()
    driver.wake()


async def wait_connected(driver: PeerDriver) -> None:
    app = driver.app
    while driver.core.state != "connected":
        if app.failure is not None:
            raise trio.BrokenResourceError(str(app.failure)) from app.failure
        await app.state_changed.park()


def new_certificate() -> DtlsCertificate:
    return DtlsCertificate.generate(datetime.datetime.now(datetime.UTC))


def sha256_of(fingerprints: list[tuple[str, str]]) -> str:
    (value,) = [value for algorithm, value in fingerprints if algorithm == "sha-256"]
    return value


@pytest.fixture
def loopback_only(monkeypatch):
    """aioice binds (and announces) 127.0.0.1 only, which it normally skips."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda **_: [LOOPBACK])


@pytest.mark.parametrize("we_control", [True, False], ids=["we-control-ice", "aiortc-controls-ice"])
@pytest.mark.parametrize(
    "our_dtls_role", ["client", "server"], ids=["we-dtls-client", "we-dtls-server"]
)
async def test_ice_dtls_sctp_with_aiortc(loopback_only, we_control, our_dtls_role):
    aiortc_certificate = RTCCertificate.generateCertificate()
    aiortc_sha256 = sha256_of(
        [(f.algorithm, f.value) for f in aiortc_certificate.getFingerprints()]
    )
    our_certificate = new_certificate()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            aiortc = AiortcThread(
                nursery,
                controlling=not we_control,
                dtls_role="server" if our_dtls_role == "client" else "client",
                certificate=aiortc_certificate,
            )
            async with our_side(we_control) as driver:
                dtls = DtlsEndpoint(our_dtls_role, our_certificate, [("sha-256", aiortc_sha256)])
                await signal(driver, aiortc, dtls, our_certificate.fingerprint())
                await wait_connected(driver)
                # We checked aiortc's certificate; "connected" says aiortc checked ours.
                assert dtls.remote_fingerprint == f"sha-256 {aiortc_sha256}"
                _, ice_state, aiortc_ice_role, aiortc_dtls_state = await aiortc.receive()
                assert (ice_state, aiortc_dtls_state) == ("completed", "connected")
                assert aiortc_ice_role == ("controlled" if we_control else "controlling")
                assert driver.core.ice is not None
                assert driver.core.ice.controlling is we_control
                channel = driver.app.open_channel("echo", negotiated_id=1)
                await channel.send(b"hello")
                assert await channel.receive() == b"hello from aiortc"
                for i in range(MESSAGES):
                    await channel.send(b"message %d" % i)
                    assert await channel.receive() == b"echo:message %d" % i
                selected = driver.core.ice.statistics()
                assert selected.selected_local[0] == selected.selected_remote[0] == LOOPBACK
            assert await aiortc.receive() == ("closed", "closed")
            aiortc.send(("stop",))


async def test_aiortc_rejects_a_wrong_fingerprint_for_us(loopback_only):
    """aiortc is told a fingerprint that is not our certificate's: it fails the transport."""
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            aiortc = AiortcThread(
                nursery,
                controlling=False,
                dtls_role="server",
                certificate=RTCCertificate.generateCertificate(),
            )
            async with our_side(True) as driver:
                # Our side may finish its handshake before aiortc checks; either way
                # aiortc's verdict is what this test is about.
                dtls = DtlsEndpoint("client", new_certificate())  # accepts any certificate
                await signal(driver, aiortc, dtls, WRONG_FINGERPRINT)
                assert await aiortc.receive() == ("started", "completed", "controlled", "failed")
            aiortc.send(("stop",))


async def test_we_reject_a_wrong_fingerprint_for_aiortc(loopback_only):
    """We are told a fingerprint that is not aiortc's certificate's: the connection
    fails with the reason."""
    our_certificate = new_certificate()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            aiortc = AiortcThread(
                nursery,
                controlling=True,
                dtls_role="server",
                certificate=RTCCertificate.generateCertificate(),
                exchange_data=False,
            )
            async with our_side(False) as driver:
                dtls = DtlsEndpoint("client", our_certificate, [("sha-256", WRONG_FINGERPRINT)])
                await signal(driver, aiortc, dtls, our_certificate.fingerprint())
                with pytest.raises(trio.BrokenResourceError) as info:
                    await wait_connected(driver)
                assert "DTLS failed" in str(info.value.__cause__)
                assert "fingerprint" in str(info.value.__cause__).lower()
                item = await aiortc.receive()
                assert item[:3] == ("started", "completed", "controlling")
            aiortc.send(("stop",))
