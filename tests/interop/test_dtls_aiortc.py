"""Our DtlsTransport against aiortc's RTCDtlsTransport over loopback UDP.

aiortc runs in its own asyncio loop in a worker thread. Its RTCDtlsTransport only
uses ``role``, ``_send`` and ``_recv`` of the RTCIceTransport it is given, so the
ICE layer is replaced on both sides by a plain connected UDP socket pair: what is
under test here is DTLS (handshake both roles, fingerprint checks, application
data, DTLS-SRTP keys, close_notify), not ICE.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
import trio
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
)

from darkswap_trio.proto.dtls._records import is_dtls
from darkswap_trio.webrtc import DtlsTransport, generate_dtls_certificate
from darkswap_trio.webrtc._srtp import create_srtp_sessions, export_srtp_keys

RTP_FROM_AIORTC = struct.pack("!BBHII", 0x80, 96, 7, 1000, 0x11111111) + b"from aiortc"
RTP_FROM_US = struct.pack("!BBHII", 0x80, 96, 9, 2000, 0x22222222) + b"from darkswap"


class DemuxingUdpTransport:
    """Our side of the socket: DTLS datagrams go up, SRTP ones are set aside (RFC 7983)."""

    def __init__(self, sock, peer) -> None:
        self.sock, self.peer = sock, peer
        self.srtp_send, self.srtp_receive = trio.open_memory_channel[bytes](8)

    async def send(self, datagram: bytes) -> None:
        await self.sock.sendto(datagram, self.peer)

    async def receive(self) -> bytes:
        while True:
            data, _ = await self.sock.recvfrom(65536)
            if is_dtls(data):
                return data
            if 128 <= data[0] <= 191:
                self.srtp_send.send_nowait(data)


async def run_aiortc_peer(
    sock, peer, role, certificate, our_fingerprint, result, notify_rtp_received
) -> None:
    """The asyncio side: handshake, echo one message, exchange one SRTP packet each way."""
    loop = asyncio.get_running_loop()
    datagrams: asyncio.Queue[bytes] = asyncio.Queue()

    class Protocol(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            datagrams.put_nowait(data)

    udp, _ = await loop.create_datagram_endpoint(Protocol, sock=sock)

    class UdpInsteadOfIce:
        role = "controlled"

        async def _recv(self):
            return await datagrams.get()

        async def _send(self, data):
            udp.sendto(data, peer)

    messages: asyncio.Queue[bytes] = asyncio.Queue()
    rtp_received: asyncio.Queue[bytes] = asyncio.Queue()

    class DataReceiver:
        async def _handle_data(self, data):
            messages.put_nowait(data)

    dtls = RTCDtlsTransport(UdpInsteadOfIce(), [certificate])
    dtls._set_role(role)
    dtls._register_data_receiver(DataReceiver())

    async def capture_rtp(data, arrival_time_ms):  # after aiortc's own SRTP unprotect
        rtp_received.put_nowait(data)

    dtls._handle_rtp_data = capture_rtp
    closed = asyncio.Event()
    dtls.on("statechange", lambda: closed.set() if dtls.state == "closed" else None)
    try:
        async with asyncio.timeout(10):
            await dtls.start(
                RTCDtlsParameters(fingerprints=[RTCDtlsFingerprint("sha-256", our_fingerprint)])
            )
            result["state_after_handshake"] = dtls.state
            message = await messages.get()
            await dtls._send_data(b"echo:" + message)
            await dtls._send_rtp(RTP_FROM_AIORTC)
            result["rtp_from_us"] = await rtp_received.get()
            notify_rtp_received()
            await closed.wait()  # our close_notify ends aiortc's receive loop
            result["final_state"] = dtls.state
    finally:
        await dtls.stop()
        udp.close()


@pytest.mark.parametrize("aiortc_role", ["client", "server"])
async def test_dtls_with_aiortc(aiortc_role):
    our_role = "server" if aiortc_role == "client" else "client"
    aiortc_certificate = RTCCertificate.generateCertificate()
    (aiortc_fingerprint,) = [
        f for f in aiortc_certificate.getFingerprints() if f.algorithm == "sha-256"
    ]
    our_certificate = generate_dtls_certificate()
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    theirs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ours.bind(("127.0.0.1", 0))
    theirs.bind(("127.0.0.1", 0))
    result: dict = {}
    rtp_delivered = trio.Event()
    token = trio.lowlevel.current_trio_token()
    with trio.fail_after(15), trio.socket.from_stdlib_socket(ours) as our_socket:
        transport = DemuxingUdpTransport(our_socket, theirs.getsockname())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: trio.to_thread.run_sync(
                    asyncio.run,
                    run_aiortc_peer(
                        theirs,
                        ours.getsockname(),
                        aiortc_role,
                        aiortc_certificate,
                        our_certificate.fingerprint(),
                        result,
                        lambda: trio.from_thread.run_sync(rtp_delivered.set, trio_token=token),
                    ),
                    abandon_on_cancel=True,
                )
            )
            async with DtlsTransport(
                transport,
                our_role,
                our_certificate,
                [("sha-256", aiortc_fingerprint.value)],
            ) as dtls:
                assert dtls.remote_fingerprint == f"sha-256 {aiortc_fingerprint.value}"
                assert dtls.srtp_profile is not None
                await dtls.send(b"hello aiortc")
                assert await dtls.receive() == b"echo:hello aiortc"
                srtp = create_srtp_sessions(export_srtp_keys(dtls.endpoint))
                protected = await transport.srtp_receive.receive()
                assert srtp.inbound.unprotect(protected) == RTP_FROM_AIORTC
                await transport.send(srtp.outbound.protect(RTP_FROM_US))
                # Once aiortc has unprotected it, close (close_notify).
                await rtp_delivered.wait()
    assert result == {
        "state_after_handshake": "connected",
        "rtp_from_us": RTP_FROM_US,
        "final_state": "closed",
    }
