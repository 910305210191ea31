"""The data-channel SDP subset: real-world samples, aiortc interop, hostile input."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress

import pytest
from aioice.candidate import Candidate
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio.proto.errors import SdpParseError
from darkswap_trio.proto.sdp._description import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DtlsFingerprint,
    DtlsRole,
    DtlsSetup,
    IceCandidate,
    LocalTransport,
    answer_setup_for,
    dtls_role_from_answer,
    generate_ice_credentials,
    parse_candidate_untrusted,
    parse_sdp_untrusted,
    render_answer,
    render_candidate,
    render_offer,
)

CHROME_FINGERPRINT = (
    "A1:B2:C3:D4:E5:F6:07:18:29:3A:4B:5C:6D:7E:8F:90:"
    "01:12:23:34:45:56:67:78:89:9A:AB:BC:CD:DE:EF:F0"
)

# Shape of a Chrome 120 data-channel-only offer (after ICE gathering), addresses
# replaced by documentation ranges.
CHROME_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 7595485065470125284 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS",
        "m=application 50512 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 203.0.113.7",
        "a=candidate:3170414339 1 udp 2122260223 192.168.1.23 50512 typ host generation 0 "
        "network-id 1 network-cost 10",
        "a=candidate:1784286479 1 udp 2122197247 2001:db8::1c2 50513 typ host generation 0 "
        "network-id 2 network-cost 10",
        "a=candidate:4123386723 1 tcp 1518280447 192.168.1.23 9 typ host tcptype active "
        "generation 0 network-id 1 network-cost 10",
        "a=candidate:842163049 1 udp 1686052607 203.0.113.7 50512 typ srflx raddr 192.168.1.23 "
        "rport 50512 generation 0 network-id 1 network-cost 10",
        "a=candidate:2963875989 1 udp 2113937151 4b2b3b5c-7d91-4a3f-9a0e-6c6d2f9c7c5e.local "
        "50514 typ host generation 0 network-cost 999",
        "a=ice-ufrag:sXaH",
        "a=ice-pwd:3WqdZ2Qh0hV7bGQ4yT6m8R+F",
        "a=ice-options:trickle",
        f"a=fingerprint:sha-256 {CHROME_FINGERPRINT}",
        "a=setup:actpass",
        "a=mid:0",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
        "",
    ]
)

# Firefox puts the fingerprint and ice-options at session level.
FIREFOX_OFFER = "\r\n".join(
    [
        "v=0",
        "o=mozilla...THIS_IS_SDPARTA-99.0 5016185235466435447 0 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        f"a=fingerprint:sha-256 {CHROME_FINGERPRINT}",
        "a=group:BUNDLE 0",
        "a=ice-options:trickle",
        "a=msid-semantic:WMS *",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=sendrecv",
        "a=ice-pwd:d0d5d1cc5e1ad8f1b47d4aa6dd4e8f5c",
        "a=ice-ufrag:8d2a6ff4",
        "a=mid:0",
        "a=setup:actpass",
        "a=sctp-port:5000",
        "a=max-message-size:1073741823",
        "",
    ]
)

# Pre-2017 browsers: SCTP port as the m-line format, a=sctpmap, no max-message-size.
LEGACY_OFFER = "\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=application 9 DTLS/SCTP 5000",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuv",
        f"a=fingerprint:sha-256 {CHROME_FINGERPRINT}",
        "a=setup:active",
        "a=mid:data",
        "a=sctpmap:5000 webrtc-datachannel 1024",
    ]
)

# Audio first, then the data channel; we must reject the audio m-line.
AUDIO_AND_DATA_OFFER = CHROME_OFFER.replace(
    "a=group:BUNDLE 0\r\n", "a=group:BUNDLE 0 1\r\n"
).replace(
    "m=application",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=rtcp-mux\r\n"
    "a=ice-ufrag:sXaH\r\na=ice-pwd:3WqdZ2Qh0hV7bGQ4yT6m8R+F\r\na=setup:actpass\r\n"
    "a=mid:1\r\na=rtpmap:111 opus/48000/2\r\na=sendrecv\r\nm=application",
)

FINGERPRINT = DtlsFingerprint.of_certificate(b"a DER certificate stands here")


def local_transport(**overrides: object) -> LocalTransport:
    candidates = (
        parse_candidate_untrusted("candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host"),
        parse_candidate_untrusted(
            "candidate:2 1 udp 1694498815 198.51.100.9 41000 typ srflx "
            "raddr 127.0.0.1 rport 40000 generation 0"
        ),
    )
    fields: dict[str, object] = dict(
        ice_ufrag="Uf+r/AG0",
        ice_pwd="abcdefghijklmnopqrstuvwxyz012345",
        fingerprints=(FINGERPRINT,),
        candidates=candidates,
        end_of_candidates=True,
        max_message_size=131072,
    )
    fields.update(overrides)
    return LocalTransport(**fields)  # type: ignore[arg-type]


def no_stun() -> RTCConfiguration:
    # aiortc's default ICE server is a public STUN server: tests stay off the network.
    return RTCConfiguration(iceServers=[])


async def aiortc_offer() -> str:
    pc = RTCPeerConnection(no_stun())
    try:
        pc.createDataChannel("chat")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


def test_parse_chrome_offer() -> None:
    offer = parse_sdp_untrusted(CHROME_OFFER)
    media = offer.data_channel
    assert offer.session_id == "7595485065470125284" and offer.session_version == 2
    assert offer.bundle_mids == ("0",) and not offer.ice_lite
    assert (media.kind, media.port, media.protocol) == ("application", 50512, "UDP/DTLS/SCTP")
    assert (media.ice_ufrag, media.ice_pwd) == ("sXaH", "3WqdZ2Qh0hV7bGQ4yT6m8R+F")
    assert media.ice_options == ("trickle",)
    assert media.fingerprints == (
        DtlsFingerprint("sha-256", bytes.fromhex(CHROME_FINGERPRINT.replace(":", ""))),
    )
    assert media.setup is DtlsSetup.ACTPASS and media.mid == "0"
    assert (media.sctp_port, media.max_message_size) == (5000, 262144)
    assert [c.host for c in media.candidates] == [
        "192.168.1.23",
        "2001:db8::1c2",
        "192.168.1.23",
        "203.0.113.7",
    ]
    tcp, srflx = media.candidates[2], media.candidates[3]
    assert (tcp.transport, tcp.tcptype, tcp.port) == ("tcp", "active", 9)
    assert (srflx.type, srflx.related_address, srflx.related_port) == (
        "srflx",
        "192.168.1.23",
        50512,
    )
    assert srflx.priority == 1686052607 and srflx.generation == 0
    # mDNS candidates are reported as unresolved, not handed to ICE.
    assert [c.port for c in media.unresolved_mdns_candidates] == [50514]
    assert media.unresolved_mdns_candidates[0].is_mdns
    assert media.skipped_candidates == () and not media.end_of_candidates


def test_parse_firefox_offer_inherits_session_level_attributes() -> None:
    media = parse_sdp_untrusted(FIREFOX_OFFER).data_channel
    assert media.fingerprints[0].algorithm == "sha-256"
    assert media.ice_options == ("trickle",)
    assert media.ice_ufrag == "8d2a6ff4" and media.max_message_size == 1073741823


def test_legacy_offer_is_answered_in_legacy_form() -> None:
    offer = parse_sdp_untrusted(LEGACY_OFFER)
    media = offer.data_channel
    assert media.is_legacy_data_channel and media.sctp_port == 5000
    assert media.effective_max_message_size == DEFAULT_MAX_MESSAGE_SIZE
    answer_text = render_answer(offer, local_transport(), session_id=7)
    assert "m=application 9 DTLS/SCTP 5000\r\n" in answer_text
    assert "a=sctpmap:5000 webrtc-datachannel 1024\r\n" in answer_text
    answer = parse_sdp_untrusted(answer_text).data_channel
    # The offer said active, so the answer must be passive.
    assert answer.setup is DtlsSetup.PASSIVE and answer.mid == "data"
    assert answer.sctp_port == 5000 and answer.is_legacy_data_channel


def test_answer_mirrors_tcp_protocol() -> None:
    offer = parse_sdp_untrusted(CHROME_OFFER.replace("UDP/DTLS/SCTP", "TCP/DTLS/SCTP"))
    text = render_answer(offer, local_transport(), session_id=8)
    assert "m=application 9 TCP/DTLS/SCTP webrtc-datachannel\r\n" in text
    assert parse_sdp_untrusted(text).data_channel.protocol == "TCP/DTLS/SCTP"


def test_answer_rejects_audio_and_keeps_mline_order() -> None:
    offer = parse_sdp_untrusted(AUDIO_AND_DATA_OFFER)
    assert [m.kind for m in offer.media] == ["audio", "application"]
    assert offer.data_channel_index == 1
    text = render_answer(offer, local_transport(), session_id=9)
    assert "m=audio 0 UDP/TLS/RTP/SAVPF 111 0\r\n" in text
    assert "a=group:BUNDLE 0\r\n" in text  # the rejected audio mid "1" left the bundle
    answer = parse_sdp_untrusted(text)
    assert [(m.kind, m.port) for m in answer.media] == [("audio", 0), ("application", 9)]
    assert answer.data_channel.mid == "0" and answer.data_channel.setup is DtlsSetup.ACTIVE


def test_parse_aiortc_offer() -> None:
    offer = parse_sdp_untrusted(asyncio.run(aiortc_offer()))
    media = offer.data_channel
    assert media.setup is DtlsSetup.ACTPASS and media.sctp_port == 5000
    assert {f.algorithm for f in media.fingerprints} >= {"sha-256"}
    assert media.max_message_size == 262144 and media.end_of_candidates
    assert media.candidates, "aiortc gathers at least one host candidate"
    for candidate in media.candidates:
        ipaddress.ip_address(candidate.host)


def test_our_offer_through_aiortc_parser() -> None:
    local = local_transport()
    parsed = aiortc_sdp.SessionDescription.parse(render_offer(local, session_id=42))
    [media] = parsed.media
    assert (media.kind, media.port, media.profile, media.fmt) == (
        "application",
        9,
        "UDP/DTLS/SCTP",
        ["webrtc-datachannel"],
    )
    assert media.ice.usernameFragment == local.ice_ufrag
    assert media.ice.password == local.ice_pwd
    assert media.dtls.role == "auto"  # actpass
    [fingerprint] = media.dtls.fingerprints
    assert fingerprint.algorithm == "sha-256"
    assert fingerprint.value == FINGERPRINT.digest.hex(":").upper()
    assert media.sctp_port == 5000 and media.sctpCapabilities.maxMessageSize == 131072
    assert [(c.ip, c.port, c.type) for c in media.ice_candidates] == [
        ("127.0.0.1", 40000, "host"),
        ("198.51.100.9", 41000, "srflx"),
    ]
    assert media.ice_candidates_complete and media.rtp.muxId == "0"
    assert [(g.semantic, g.items) for g in parsed.group] == [("BUNDLE", ["0"])]


def test_interop_aiortc_answers_our_offer() -> None:
    local = local_transport()

    async def exchange() -> str:
        pc = RTCPeerConnection(no_stun())
        try:
            offer = render_offer(local, session_id=42)
            await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            return pc.localDescription.sdp
        finally:
            await pc.close()  # before its connect task runs: no ICE checks are sent

    answer = parse_sdp_untrusted(asyncio.run(exchange()))
    media = answer.data_channel
    assert media.setup in (DtlsSetup.ACTIVE, DtlsSetup.PASSIVE)
    assert dtls_role_from_answer(media.setup, we_are_offerer=True) is (
        DtlsRole.SERVER if media.setup is DtlsSetup.ACTIVE else DtlsRole.CLIENT
    )
    assert media.fingerprints and all(len(f.digest) >= 32 for f in media.fingerprints)
    assert media.ice_ufrag and media.ice_pwd and media.ice_ufrag != local.ice_ufrag
    assert media.sctp_port == 5000 and media.max_message_size == 262144
    assert media.mid == "0" and answer.bundle_mids == ("0",)


def test_interop_aiortc_accepts_our_answer() -> None:
    local = local_transport()

    async def exchange() -> tuple[str, str, str]:
        pc = RTCPeerConnection(no_stun())
        try:
            pc.createDataChannel("chat")
            await pc.setLocalDescription(await pc.createOffer())
            offer = parse_sdp_untrusted(pc.localDescription.sdp)
            answer = render_answer(offer, local, session_id=43)
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            # Our answer says active (we are the DTLS client), so aiortc must be server.
            return pc.signalingState, pc.sctp.transport._role, answer
        finally:
            await pc.close()  # before its connect task runs: no ICE checks are sent

    state, aiortc_role, answer_text = asyncio.run(exchange())
    assert state == "stable" and aiortc_role == "server"
    media = parse_sdp_untrusted(answer_text).data_channel
    assert media.setup is DtlsSetup.ACTIVE and media.candidates == local.candidates


def test_setup_rules() -> None:
    assert answer_setup_for(DtlsSetup.ACTPASS) is DtlsSetup.ACTIVE
    assert answer_setup_for(DtlsSetup.ACTPASS, DtlsSetup.PASSIVE) is DtlsSetup.PASSIVE
    assert answer_setup_for(DtlsSetup.ACTIVE) is DtlsSetup.PASSIVE
    assert answer_setup_for(DtlsSetup.PASSIVE) is DtlsSetup.ACTIVE
    with pytest.raises(ValueError, match="must be passive"):
        answer_setup_for(DtlsSetup.ACTIVE, DtlsSetup.ACTIVE)
    with pytest.raises(ValueError, match="actpass"):
        answer_setup_for(DtlsSetup.ACTPASS, DtlsSetup.ACTPASS)
    assert dtls_role_from_answer(DtlsSetup.ACTIVE, we_are_offerer=False) is DtlsRole.CLIENT
    assert dtls_role_from_answer(DtlsSetup.PASSIVE, we_are_offerer=False) is DtlsRole.SERVER
    assert dtls_role_from_answer(DtlsSetup.PASSIVE, we_are_offerer=True) is DtlsRole.CLIENT
    with pytest.raises(SdpParseError, match="active or passive"):
        dtls_role_from_answer(DtlsSetup.ACTPASS, we_are_offerer=True)


def test_local_transport_checks_credentials() -> None:
    ufrag, pwd = generate_ice_credentials()
    assert len(ufrag) == 8 and len(pwd) == 24
    LocalTransport(ufrag, pwd, (FINGERPRINT,))
    with pytest.raises(ValueError, match="ice-ufrag"):
        LocalTransport("abc", pwd, (FINGERPRINT,))
    with pytest.raises(ValueError, match="ice-pwd"):
        LocalTransport(ufrag, "x" * 21, (FINGERPRINT,))
    with pytest.raises(ValueError, match="ice-pwd"):
        LocalTransport(ufrag, "x" * 21 + "!", (FINGERPRINT,))
    with pytest.raises(ValueError, match="fingerprint"):
        LocalTransport(ufrag, pwd, ())


def test_fingerprint_of_certificate() -> None:
    der = b"\x30\x82certificate"
    fingerprint = DtlsFingerprint.of_certificate(der)
    assert fingerprint.digest == hashlib.sha256(der).digest()
    assert fingerprint.to_sdp().startswith("sha-256 ") and ":" in fingerprint.to_sdp()


def _mutate(line_prefix: str, replacement: str) -> str:
    lines = CHROME_OFFER.split("\r\n")
    index = next(i for i, line in enumerate(lines) if line.startswith(line_prefix))
    lines[index] = replacement
    return "\r\n".join(lines)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "start with 'v=0'"),
        ("hello", "start with 'v=0'"),
        (CHROME_OFFER.replace("o=- ", "x"), "<type>=<value>"),
        (CHROME_OFFER.replace("o=- 7595485065470125284 2 IN IP4 127.0.0.1\r\n", ""), "no o="),
        (_mutate("a=ice-ufrag", "a=ice-ufrag:abc"), "ice-ufrag must be 4..256"),
        (_mutate("a=ice-pwd", "a=ice-pwd:tooshort"), "ice-pwd must be 22..256"),
        (_mutate("a=ice-pwd", "a=ice-pwd:bad-char-in-password-xyz"), "ice-pwd"),
        (_mutate("a=ice-ufrag", "a=extmap-allow-mixed"), "no a=ice-ufrag"),
        (_mutate("a=fingerprint", "a=fingerprint:sha-256 AB:CD"), "needs 32 bytes"),
        (_mutate("a=fingerprint", "a=fingerprint:sha-256 nothex"), "a=fingerprint must be"),
        (_mutate("a=fingerprint", "a=rtcp-mux"), "no a=fingerprint"),
        (_mutate("a=setup", "a=setup:holdconn"), "a=setup must be"),
        (_mutate("a=setup", "a=rtcp-mux"), "no a=setup"),
        (_mutate("a=sctp-port", "a=sctp-port:70000"), "a=sctp-port"),
        (_mutate("a=max-message-size", "a=max-message-size:-1"), "max-message-size"),
        (_mutate("a=mid", "a=mid:"), "a=mid must be a token"),
        (_mutate("a=sctp-port", "a=mid:1"), "duplicate attribute"),
        (_mutate("m=application", "m=application 99999 UDP/DTLS/SCTP x"), "m-line port"),
        (_mutate("m=application", "m=application 9"), "m-line needs"),
        (_mutate("m=application", "m=application 0 UDP/DTLS/SCTP webrtc-datachannel"), "usable"),
        (_mutate("m=application", "m=audio 9 UDP/TLS/RTP/SAVPF 111"), "usable"),
        (CHROME_OFFER + "a=x:" + "y" * 200_000, "longer than"),
        (b"v=0\r\n\xff", "UTF-8"),
    ],
)
def test_malformed_sdp_has_a_clear_error(text: str | bytes, message: str) -> None:
    with pytest.raises(SdpParseError, match=message):
        parse_sdp_untrusted(text)


def test_bad_candidate_lines_are_skipped_in_whole_sdp() -> None:
    bad = "a=candidate:1 1 udp 99 not-an-ip 1 typ host"
    text = CHROME_OFFER.replace("a=ice-ufrag", bad + "\r\na=ice-ufrag")
    media = parse_sdp_untrusted(text).data_channel
    assert media.skipped_candidates == (bad,)
    assert len(media.candidates) == 4


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        ("", "must start with 'candidate:'"),
        ("candidate:1 1 udp 2130706431 127.0.0.1 4000 typ", "at least 8 fields"),
        ("candidate:1 1 sctp 2130706431 127.0.0.1 4000 typ host", "udp or tcp"),
        ("candidate:1 0 udp 2130706431 127.0.0.1 4000 typ host", "component"),
        ("candidate:1 1 udp 0 127.0.0.1 4000 typ host", "priority"),
        ("candidate:1 1 udp +5 127.0.0.1 4000 typ host", "priority"),
        ("candidate:1 1 udp 5 example.com 4000 typ host", "not an IP or mDNS"),
        ("candidate:1 1 udp 5 127.0.0.1 65536 typ host", "port"),
        ("candidate:1 1 udp 5 127.0.0.1 4000 type host", "'typ'"),
        ("candidate:1 1 udp 5 127.0.0.1 4000 typ bogus", "host/srflx/prflx/relay"),
        ("candidate:1 1 udp 5 127.0.0.1 4000 typ host rport x", "rport"),
        ("candidate:1 1 udp 5 127.0.0.1 4000 typ host raddr", "pairs"),
        ("candidate:1 1 udp 5 127.0.0.1 4000 typ host\tgeneration 0", "whitespace"),
        ("candidate:1 1 tcp 5 127.0.0.1 4000 typ host", "tcptype"),
        ("candidate:1 1 udp 5 127.0.0.1 4000 typ host generation ١", "generation"),
        ("candidate:" + "x" * 2000, "longer than 1024"),
    ],
)
def test_malformed_candidate(candidate: str, message: str) -> None:
    with pytest.raises(SdpParseError, match=message):
        parse_candidate_untrusted(candidate)


def test_trickled_chrome_candidates() -> None:
    srflx = parse_candidate_untrusted(
        "candidate:842163049 1 udp 1677729535 203.0.113.7 60769 typ srflx raddr 0.0.0.0 "
        "rport 0 generation 0 ufrag sXaH network-cost 999"
    )
    assert (srflx.host, srflx.port, srflx.related_address, srflx.related_port) == (
        "203.0.113.7",
        60769,
        "0.0.0.0",
        0,
    )
    mdns = parse_candidate_untrusted(
        "a=candidate:2963875989 1 udp 2113937151 "
        "4b2b3b5c-7d91-4a3f-9a0e-6c6d2f9c7c5e.local 54400 typ host generation 0"
    )
    assert mdns.is_mdns and not srflx.is_mdns
    rendered = render_candidate(srflx)
    assert rendered.startswith("candidate:842163049 1 udp 1677729535 203.0.113.7 60769 typ srflx")
    assert parse_candidate_untrusted(rendered) == srflx


ICE_CHARS = st.sampled_from("ABCXYZabcxyz0189+/")


@st.composite
def candidates(draw: st.DrawFn) -> IceCandidate:
    transport = draw(st.sampled_from(["udp", "tcp"]))
    related = draw(st.none() | st.ip_addresses().map(str))
    return IceCandidate(
        foundation=draw(st.text(ICE_CHARS, min_size=1, max_size=32)),
        component=draw(st.integers(1, 256)),
        transport=transport,
        priority=draw(st.integers(1, 2**32 - 1)),
        host=str(draw(st.ip_addresses())),
        port=draw(st.integers(0, 65535)),
        type=draw(st.sampled_from(["host", "srflx", "prflx", "relay"])),
        related_address=related,
        related_port=None if related is None else draw(st.integers(0, 65535)),
        tcptype=draw(st.sampled_from(["active", "passive", "so"])) if transport == "tcp" else None,
        generation=draw(st.none() | st.integers(0, 2**32 - 1)),
    )


@given(candidates())
def test_candidate_round_trip(candidate: IceCandidate) -> None:
    assert parse_candidate_untrusted(render_candidate(candidate)) == candidate
    aioice = Candidate.from_sdp(candidate.to_sdp())
    assert IceCandidate.from_aioice(aioice) == candidate
    assert candidate.to_aioice().to_sdp() == candidate.to_sdp()


@given(st.lists(candidates(), max_size=4))
def test_offer_round_trip(cands: list[IceCandidate]) -> None:
    local = local_transport(candidates=tuple(cands), end_of_candidates=False)
    media = parse_sdp_untrusted(render_offer(local, session_id=5)).data_channel
    assert media.candidates == tuple(cands) and not media.end_of_candidates
    assert (media.ice_ufrag, media.ice_pwd) == (local.ice_ufrag, local.ice_pwd)
    assert media.fingerprints == (FINGERPRINT,) and media.max_message_size == 131072


@given(st.text())
def test_any_text_raises_only_sdp_parse_error(text: str) -> None:
    try:
        parse_sdp_untrusted(text)
    except SdpParseError:
        pass


@given(st.binary())
def test_any_bytes_raise_only_sdp_parse_error(data: bytes) -> None:
    try:
        parse_sdp_untrusted(data)
    except SdpParseError:
        pass


@given(st.text())
def test_any_candidate_text_raises_only_sdp_parse_error(text: str) -> None:
    for candidate in (text, "candidate:" + text, "candidate:1 1 udp 5 127.0.0.1 9 typ " + text):
        try:
            parse_candidate_untrusted(candidate)
        except SdpParseError:
            pass


OFFER_LINES = CHROME_OFFER.split("\r\n")[1:-1]
PREFIXES = [
    "a=candidate:",
    "a=fingerprint:",
    "a=setup:",
    "a=ice-ufrag:",
    "a=ice-pwd:",
    "a=sctp-port:",
    "a=max-message-size:",
    "a=mid:",
    "a=group:BUNDLE",
    "m=application ",
    "m=",
    "o=",
    "a=",
]


@given(
    st.lists(
        st.one_of(
            st.sampled_from(OFFER_LINES),
            st.builds(str.__add__, st.sampled_from(PREFIXES), st.text(max_size=40)),
            st.text(max_size=20),
        ),
        max_size=30,
    )
)
def test_mutated_offers_raise_only_sdp_parse_error(lines: list[str]) -> None:
    try:
        offer = parse_sdp_untrusted("\r\n".join(["v=0", *lines]))
    except SdpParseError:
        return
    # Whatever parses is answerable.
    render_answer(offer, local_transport(), session_id=1)


def test_ice_pacing_is_rendered_at_session_level_and_parsed_back() -> None:
    offer = render_offer(local_transport(ice_pacing=5), session_id=7)
    session, _, media = offer.partition("\r\nm=")
    assert "\r\na=ice-pacing:5\r\n" in session + "\r\n" and "ice-pacing" not in media
    assert parse_sdp_untrusted(offer).ice_pacing == 5
    answer = render_answer(parse_sdp_untrusted(offer), local_transport(ice_pacing=20), session_id=8)
    assert parse_sdp_untrusted(answer).ice_pacing == 20
    # Not announced: absent from the text, None once parsed (the RFC default then applies).
    plain = render_offer(local_transport(), session_id=9)
    assert "ice-pacing" not in plain and parse_sdp_untrusted(plain).ice_pacing is None
    with pytest.raises(ValueError, match="ice_pacing"):
        local_transport(ice_pacing=0)


@pytest.mark.parametrize("value", ["", "-5", "5ms", "12345678901", " 5"])
def test_bad_ice_pacing_is_a_parse_error(value: str) -> None:
    head, _, tail = render_offer(local_transport(), session_id=7).partition("m=")
    with pytest.raises(SdpParseError, match="ice-pacing"):
        parse_sdp_untrusted(f"{head}a=ice-pacing:{value}\r\nm={tail}")


def test_duplicate_ice_pacing_is_a_parse_error() -> None:
    head, _, tail = render_offer(local_transport(ice_pacing=5), session_id=7).partition("m=")
    with pytest.raises(SdpParseError, match="ice-pacing"):
        parse_sdp_untrusted(f"{head}a=ice-pacing:6\r\nm={tail}")
