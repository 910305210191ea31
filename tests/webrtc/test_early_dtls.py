"""A peer that starts DTLS before our ICE agent selects a pair, as Chromium does.

Chromium, answering our offer, is the controlled ICE agent and the DTLS client: it
sends its ClientHello as soon as its own check succeeded, before our nomination
selects a pair, sometimes even before its answer reached us. :class:`EarlyPeer`
does the same with our own sans-IO cores on a loopback socket, deterministically: it
withholds our nominations (so we cannot select a pair while it handshakes) and can
start DTLS before we have its answer. Our replies must reach it at once: the tests
assert that neither side needed a DTLS retransmission (the first one comes after
1 s) and that nothing was dropped for want of a pair.
"""

from __future__ import annotations

import datetime

import pytest
import trio

from darkswap_trio.proto import dtls as dtls_mod
from darkswap_trio.proto.dtls._certificate import DtlsCertificate
from darkswap_trio.proto.dtls._endpoint import DtlsEndpoint
from darkswap_trio.proto.errors import StunParseError
from darkswap_trio.proto.ice._agent import IceAgent
from darkswap_trio.proto.ice._checklist import PairState
from darkswap_trio.proto.ice._events import DataReceived
from darkswap_trio.proto.sdp._description import (
    DtlsFingerprint,
    IceCandidate,
    LocalTransport,
    generate_ice_credentials,
    parse_sdp_untrusted,
    render_answer,
)
from darkswap_trio.proto.stun import parse_stun_untrusted
from darkswap_trio.webrtc import PeerConnectionConfig, open_peer_connection

LOOPBACK = "127.0.0.1"
CONFIG = PeerConnectionConfig(host_addresses=[LOOPBACK], ice_pacing=0.005)


def is_nomination(data: bytes) -> bool:
    if not data or data[0] > 3:
        return False
    try:
        return "USE-CANDIDATE" in parse_stun_untrusted(data).attributes
    except StunParseError:
        return False


class EarlyPeer:
    """Controlled ICE agent + DTLS client that starts DTLS on its first valid pair."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.local = sock.getsockname()
        ufrag, pwd = generate_ice_credentials()
        self.ice = IceAgent(False, local_ufrag=ufrag, local_pwd=pwd, pacing=0.005)
        self.certificate = DtlsCertificate.generate(datetime.datetime.now(datetime.UTC))
        self.dtls: DtlsEndpoint | None = None
        self.withhold_nominations = True
        self.nominations_withheld = 0
        self.dtls_started = trio.Event()
        self.handshake_complete = trio.Event()

    def answer(self, offer_sdp: str) -> str:
        """Take our offer (remote credentials, candidates, fingerprint); answer active."""
        offer = parse_sdp_untrusted(offer_sdp)
        media = offer.data_channel
        assert media.ice_ufrag and media.ice_pwd
        host = self.ice.add_local_candidate(self.local)
        self.ice.set_remote_credentials(media.ice_ufrag, media.ice_pwd, trio.current_time())
        for candidate in media.candidates:
            self.ice.add_remote_candidate(candidate.to_aioice(), trio.current_time())
        self.ice.add_remote_candidate(None)
        self.dtls = DtlsEndpoint(
            "client", self.certificate, [(f.algorithm, f.value) for f in media.fingerprints]
        )
        local = LocalTransport(
            ice_ufrag=self.ice.local_ufrag, ice_pwd=self.ice.local_pwd,
            fingerprints=(DtlsFingerprint.of_certificate(self.certificate.der),),
            candidates=(IceCandidate.from_aioice(host),), end_of_candidates=True,
        )  # fmt: skip
        return render_answer(offer, local, session_id=1)

    def _valid_remote(self) -> tuple[str, int] | None:
        valid = [p for p in self.ice.pairs if p.state is PairState.SUCCEEDED]
        return valid[0].remote_addr if valid else None

    async def run(self) -> None:
        ice, dtls = self.ice, self.dtls
        assert dtls is not None
        for _ in range(100_000):  # bounded; the test cancels it
            now = trio.current_time()
            deadlines = [d for d in (ice.poll_timeout(), dtls.poll_timeout()) if d is not None]
            with trio.move_on_at(min(deadlines, default=now + 1)):
                data, addr = await self.sock.recvfrom(65536)
                if self.withhold_nominations and is_nomination(data):
                    self.nominations_withheld += 1
                else:
                    ice.receive(data, addr, trio.current_time(), self.local)
            now = trio.current_time()
            for core in (ice, dtls):
                deadline = core.poll_timeout()
                if deadline is not None and deadline <= now:
                    core.handle_timeout(now)
            while (event := ice.poll_event()) is not None:
                if type(event) is DataReceived:
                    dtls.receive(event.data, now)
            remote = self._valid_remote()
            if remote is not None and dtls.state is dtls_mod.DtlsState.NEW:
                dtls.start(now)  # what Chromium does: no waiting for a selected pair
                self.dtls_started.set()
            while (event := dtls.poll_event()) is not None:
                if type(event) is dtls_mod.HandshakeComplete:
                    self.handshake_complete.set()
            while (transmit := ice.poll_transmit()) is not None:
                await self.sock.sendto(transmit.data, transmit.addr)
            while remote is not None and (datagram := dtls.poll_transmit()) is not None:
                await self.sock.sendto(datagram, remote)


@pytest.mark.parametrize("answer_first", [True, False], ids=["answer-first", "hello-first"])
async def test_dtls_before_we_select_a_pair_needs_no_retransmission(answer_first):
    """answer-first: the ClientHello comes after we applied the answer but before we
    selected a pair. hello-first: it comes before we even have the answer."""
    with trio.fail_after(10):
        async with open_peer_connection(CONFIG) as pc, trio.open_nursery() as nursery:
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            with sock:
                await sock.bind((LOOPBACK, 0))
                peer = EarlyPeer(sock)
                answer = peer.answer(await pc.create_offer())
                if answer_first:
                    await pc.set_remote_description(answer, "answer")
                nursery.start_soon(peer.run)
                await peer.dtls_started.wait()
                if not answer_first:
                    assert pc.statistics().dtls is None  # no DTLS endpoint of ours yet
                    await pc.set_remote_description(answer, "answer")
                await peer.handshake_complete.wait()
                stats = pc.statistics()
                assert stats.ice is not None and stats.ice.selected_remote is None
                assert stats.dtls is not None and stats.dtls.state is dtls_mod.DtlsState.CONNECTED
                assert stats.dtls.retransmissions == 0
                assert peer.dtls is not None and peer.dtls.statistics().retransmissions == 0
                assert stats.datagrams_dropped_no_pair == 0
                # Nominations through now: we select the pair the DTLS went over.
                peer.withhold_nominations = False
                while (ice := pc.statistics().ice) is not None and ice.selected_remote is None:
                    await trio.sleep(0.01)  # our nomination check retransmits; bounded above
                assert ice is not None and ice.selected_remote == peer.local
                nursery.cancel_scope.cancel()


async def test_datagrams_with_no_path_are_counted():
    """Our DTLS with no pair and no validated peer address waits; when ICE then fails
    (here: closed), it is dropped and counted in statistics()."""
    with trio.fail_after(5):
        async with open_peer_connection(CONFIG) as pc:
            offer = parse_sdp_untrusted(await pc.create_offer())
            peer_certificate = DtlsCertificate.generate(datetime.datetime.now(datetime.UTC))
            fingerprint = DtlsFingerprint.of_certificate(peer_certificate.der)
            local = LocalTransport(
                ice_ufrag="peer",
                ice_pwd="p" * 22,
                fingerprints=(fingerprint,),
                end_of_candidates=False,
            )
            # We answer "passive" for the peer, so we are the DTLS client and only
            # start once a pair exists; force the start to have a ClientHello held.
            answer = render_answer(offer, local, session_id=1, setup=None)
            await pc.set_remote_description(
                answer.replace("setup:active", "setup:passive"), "answer"
            )
            core, driver = pc._core, pc._driver
            assert core.dtls is not None and core.dtls.role == "client"
            core.dtls.start(trio.current_time())
            driver.flush()
            assert pc.statistics().datagrams_dropped_no_pair == 0  # held, not dropped
            assert core.ice is not None
            core.ice.close()
            driver.flush()
            assert pc.statistics().datagrams_dropped_no_pair >= 1
