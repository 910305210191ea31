"""Our IceTransport + DtlsTransport against aiortc's ORTC stack, in every role pairing.

aiortc's ``RTCIceGatherer`` / ``RTCIceTransport`` / ``RTCDtlsTransport`` run in an
asyncio loop on a worker thread of the test. Signaling (ICE parameters, candidates,
DTLS fingerprints) crosses the thread boundary through two queues: asyncio -> trio
with ``trio.from_thread.run_sync`` into a bounded memory channel, trio -> asyncio
with ``loop.call_soon_threadsafe`` into an ``asyncio.Queue``.

Loopback only: aiortc gathers with ``iceServers=[]`` (no STUN server), aioice's
interface enumeration is pointed at 127.0.0.1, and candidates are filtered to
127.0.0.1 on both sides anyway.

Application data uses aiortc's DTLS data hooks, as its SCTP transport does:
``_register_data_receiver`` (``_handle_data`` per decrypted record) and ``_send_data``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aioice.ice
import pytest
import trio
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
)
from aiortc.rtcicetransport import RTCIceGatherer, RTCIceParameters, RTCIceTransport
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp
from asyncio_peer import AsyncioPeerThread

from darkswap_trio.proto.ice._checklist import parse_candidate_untrusted
from darkswap_trio.webrtc import DtlsError, DtlsTransport, IceTransport, generate_dtls_certificate

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
    """aiortc's side: gather, signal, ICE, DTLS, then echo our messages back."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    to_trio(("inbox", lambda item: loop.call_soon_threadsafe(inbox.put_nowait, item)))
    gatherer = RTCIceGatherer(iceServers=[])  # never Google's default STUN server
    ice = RTCIceTransport(gatherer)
    dtls = RTCDtlsTransport(ice, [certificate])
    messages: asyncio.Queue[bytes] = asyncio.Queue()

    class DataReceiver:  # what RTCSctpTransport registers to get decrypted records
        async def _handle_data(self, data: bytes) -> None:
            messages.put_nowait(data)

    dtls._register_data_receiver(DataReceiver())
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
                await dtls._send_data(b"hello from aiortc")
                for _ in range(MESSAGES):
                    await dtls._send_data(b"echo:" + await messages.get())
                await closed.wait()  # our close_notify ends aiortc's receive loop
                to_trio(("closed", dtls.state))
            await inbox.get()  # ("stop",): the trio side is done with us
    except Exception as exc:  # reported to the trio side, which fails the test
        to_trio(("error", repr(exc)))
    finally:
        await dtls.stop()
        await ice.stop()


def AiortcThread(nursery: trio.Nursery, **peer_args: Any) -> AsyncioPeerThread:
    """:func:`aiortc_peer` on a worker thread."""
    return AsyncioPeerThread(nursery, aiortc_peer, **peer_args)


async def connect_ice(ice: IceTransport, aiortc: AsyncioPeerThread, our_fingerprint: str) -> list:
    """Signal both ways, connect ICE; returns aiortc's DTLS fingerprints."""
    _, ufrag, pwd, candidates, fingerprints = await aiortc.receive()
    ice.set_remote_credentials(ufrag, pwd)
    for sdp in candidates:
        candidate = parse_candidate_untrusted(sdp)
        assert candidate.host == LOOPBACK
        ice.add_remote_candidate(candidate)
    ice.add_remote_candidate(None)
    ours = [c.to_sdp() async for c in ice.local_candidates() if c.host == LOOPBACK]
    aiortc.send(
        ("parameters", ice.local_ufrag, ice.local_pwd, ours, [("sha-256", our_fingerprint)])
    )
    await ice.connect()
    return fingerprints


@pytest.fixture
def loopback_only(monkeypatch):
    """aioice binds (and announces) 127.0.0.1 only, which it normally skips."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda **_: [LOOPBACK])


@pytest.mark.parametrize("we_control", [True, False], ids=["we-control-ice", "aiortc-controls-ice"])
@pytest.mark.parametrize(
    "our_dtls_role", ["client", "server"], ids=["we-dtls-client", "we-dtls-server"]
)
async def test_ice_and_dtls_with_aiortc(loopback_only, we_control, our_dtls_role):
    aiortc_certificate = RTCCertificate.generateCertificate()
    our_certificate = generate_dtls_certificate()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            aiortc = AiortcThread(
                nursery,
                controlling=not we_control,
                dtls_role="server" if our_dtls_role == "client" else "client",
                certificate=aiortc_certificate,
            )
            async with IceTransport(we_control, host_addresses=[LOOPBACK]) as ice:
                fingerprints = await connect_ice(ice, aiortc, our_certificate.fingerprint())
                (sha256,) = [value for algorithm, value in fingerprints if algorithm == "sha-256"]
                async with DtlsTransport(
                    ice, our_dtls_role, our_certificate, [("sha-256", sha256)]
                ) as dtls:
                    # We checked aiortc's certificate; "connected" says aiortc checked ours.
                    assert dtls.remote_fingerprint == f"sha-256 {sha256}"
                    _, ice_state, aiortc_ice_role, aiortc_dtls_state = await aiortc.receive()
                    assert (ice_state, aiortc_dtls_state) == ("completed", "connected")
                    assert aiortc_ice_role == ("controlled" if we_control else "controlling")
                    assert ice.agent.controlling is we_control
                    assert await dtls.receive() == b"hello from aiortc"
                    for i in range(MESSAGES):
                        await dtls.send(b"message %d" % i)
                        assert await dtls.receive() == b"echo:message %d" % i
                selected = ice.statistics().ice
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
            async with IceTransport(True, host_addresses=[LOOPBACK]) as ice:
                fingerprints = await connect_ice(ice, aiortc, WRONG_FINGERPRINT)
                async with trio.open_nursery() as dtls_nursery:
                    # Our side may finish its handshake before aiortc checks; either way
                    # aiortc's verdict is what this test is about.
                    dtls_nursery.start_soon(
                        _handshake_and_wait, ice, generate_dtls_certificate(), fingerprints
                    )
                    assert await aiortc.receive() == (
                        "started",
                        "completed",
                        "controlled",
                        "failed",
                    )
                    dtls_nursery.cancel_scope.cancel()
                aiortc.send(("stop",))


async def _handshake_and_wait(ice, certificate, fingerprints) -> None:
    async with DtlsTransport(ice, "client", certificate, fingerprints):
        await trio.sleep_forever()


async def test_we_reject_a_wrong_fingerprint_for_aiortc(loopback_only):
    """We are told a fingerprint that is not aiortc's certificate's: BrokenResourceError."""
    our_certificate = generate_dtls_certificate()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            aiortc = AiortcThread(
                nursery,
                controlling=True,
                dtls_role="server",
                certificate=RTCCertificate.generateCertificate(),
                exchange_data=False,
            )
            async with IceTransport(False, host_addresses=[LOOPBACK]) as ice:
                await connect_ice(ice, aiortc, our_certificate.fingerprint())
                with pytest.raises(trio.BrokenResourceError) as info:
                    async with DtlsTransport(
                        ice, "client", our_certificate, [("sha-256", WRONG_FINGERPRINT)]
                    ):
                        pass
                assert isinstance(info.value.__cause__, DtlsError)
                assert "fingerprint" in str(info.value.__cause__).lower()
                item = await aiortc.receive()
                assert item[:3] == ("started", "completed", "controlling")
                aiortc.send(("stop",))
