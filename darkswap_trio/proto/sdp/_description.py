"""The data-channel subset of SDP offer/answer (RFC 8866, 8839, 8841, 8842, JSEP).

We only ever negotiate one thing: ``m=application 9 UDP/DTLS/SCTP webrtc-datachannel``
(and accept the legacy ``m=application 9 DTLS/SCTP 5000`` + ``a=sctpmap`` form of old
peers). Audio/video m-lines are parsed just enough to be carried along and rejected
(port 0) in our answers.

Decisions, written down once:

* :func:`parse_sdp_untrusted` raises only :class:`SdpParseError`. Unknown line types
  and unknown attributes are ignored; known attributes with bad values are errors.
  The description must contain a usable (port != 0) data-channel m-line with ICE
  credentials of legal length (RFC 8839: ufrag 4..256, pwd 22..256 ice-chars), at
  least one fingerprint and an ``a=setup``.
* Bad ``a=candidate`` lines inside a whole SDP are *skipped* (kept verbatim in
  :attr:`MediaSection.skipped_candidates`): one odd candidate (a transport we do not
  know, a future extension) must not fail the whole negotiation. The strict
  single-candidate parser :func:`parse_candidate_untrusted` raises instead.
* mDNS host candidates (``<uuid>.local``) are *reported as unresolved*: we do no
  mDNS, so :func:`parse_sdp_untrusted` moves them into
  :attr:`MediaSection.unresolved_mdns_candidates` and keeps only IP-literal candidates
  in :attr:`MediaSection.candidates`. :func:`parse_candidate_untrusted` returns them
  with :attr:`IceCandidate.is_mdns` set; the caller decides.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
import secrets
import string
from dataclasses import dataclass

from ..errors import SdpParseError
from ._candidates import IceCandidate as IceCandidate  # re-exported: part of this API
from ._candidates import _parse_candidate_value
from ._candidates import parse_candidate_untrusted as parse_candidate_untrusted
from ._candidates import render_candidate as render_candidate

MAX_SDP_LENGTH = 128 * 1024  # longest SDP we parse; a Chrome offer is a few KiB
DEFAULT_SCTP_PORT = 5000
DEFAULT_MAX_MESSAGE_SIZE = 65536  # RFC 8841 section 6: assumed when the attribute is absent
LOCAL_MAX_MESSAGE_SIZE = 262144  # what we announce by default, as Chrome and aiortc do

DATA_CHANNEL_PROTOCOLS = ("UDP/DTLS/SCTP", "TCP/DTLS/SCTP")
LEGACY_DATA_CHANNEL_PROTOCOL = "DTLS/SCTP"

_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+\Z")
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]{1,64}\Z")
_DIGITS = re.compile(r"[0-9]{1,20}\Z")
_FINGERPRINT_HEX = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*\Z")
_HASH_SIZES = {"sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64}


class DtlsSetup(enum.Enum):
    """The ``a=setup`` value (RFC 8842). ``holdconn`` is not supported."""

    ACTPASS = "actpass"
    ACTIVE = "active"
    PASSIVE = "passive"


class DtlsRole(enum.Enum):
    """The negotiated DTLS role: ``active`` is the DTLS client (sends ClientHello)."""

    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True)
class DtlsFingerprint:
    """``a=fingerprint`` (RFC 8122): hash function name (lower case) and digest."""

    algorithm: str
    digest: bytes

    @classmethod
    def of_certificate(cls, der: bytes, algorithm: str = "sha-256") -> DtlsFingerprint:
        """Fingerprint of a DER-encoded certificate."""
        if algorithm not in _HASH_SIZES:
            raise ValueError(f"unsupported fingerprint algorithm {algorithm!r}")
        return cls(algorithm, hashlib.new(algorithm.replace("-", ""), der).digest())

    @property
    def value(self) -> str:
        """The digest as SDP writes it: upper-case hex pairs joined by ':'."""
        return self.digest.hex(":").upper()

    def to_sdp(self) -> str:
        """The attribute value, e.g. ``sha-256 AB:CD:...``."""
        return f"{self.algorithm} {self.value}"


@dataclass(frozen=True)
class MediaSection:
    """One m-line and its attributes (session-level ICE/DTLS attributes inherited)."""

    kind: str
    port: int
    protocol: str
    formats: tuple[str, ...]
    mid: str | None = None
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    ice_options: tuple[str, ...] = ()
    fingerprints: tuple[DtlsFingerprint, ...] = ()
    setup: DtlsSetup | None = None
    sctp_port: int | None = None
    max_message_size: int | None = None
    candidates: tuple[IceCandidate, ...] = ()
    end_of_candidates: bool = False
    unresolved_mdns_candidates: tuple[IceCandidate, ...] = ()
    skipped_candidates: tuple[str, ...] = ()

    @property
    def is_legacy_data_channel(self) -> bool:
        """The pre-RFC 8841 form ``m=application 9 DTLS/SCTP 5000``."""
        legacy = self.kind == "application" and self.protocol == LEGACY_DATA_CHANNEL_PROTOCOL
        return legacy and _DIGITS.match(self.formats[0] if self.formats else "") is not None

    @property
    def is_data_channel(self) -> bool:
        """An SCTP-over-DTLS data-channel m-line (current or legacy form)."""
        if self.kind == "application" and self.protocol in DATA_CHANNEL_PROTOCOLS:
            return "webrtc-datachannel" in self.formats
        return self.is_legacy_data_channel

    @property
    def effective_max_message_size(self) -> int:
        """``a=max-message-size`` or the RFC 8841 default; 0 means "no limit"."""
        size = self.max_message_size
        return DEFAULT_MAX_MESSAGE_SIZE if size is None else size


@dataclass(frozen=True)
class SessionDescription:
    """A parsed SDP; :attr:`data_channel` is the m-line we use."""

    session_id: str
    session_version: int
    media: tuple[MediaSection, ...]
    bundle_mids: tuple[str, ...] = ()
    ice_lite: bool = False
    data_channel_index: int = 0
    #: Session-level ``a=ice-pacing`` (RFC 8839 section 5.5): the peer's proposed Ta in
    #: milliseconds, None if absent (then 50 ms, RFC 8445 section 14.2).
    ice_pacing: int | None = None

    @property
    def data_channel(self) -> MediaSection:
        """The first usable data-channel m-line (the parser guarantees there is one)."""
        return self.media[self.data_channel_index]


@dataclass(frozen=True)
class LocalTransport:
    """What we announce for our end in an offer or answer.

    Checked on construction: illegal ICE credentials, no fingerprint or a bad SCTP
    port raise ValueError (these are local mistakes, not network input).
    """

    ice_ufrag: str
    ice_pwd: str
    fingerprints: tuple[DtlsFingerprint, ...]
    candidates: tuple[IceCandidate, ...] = ()
    end_of_candidates: bool = False
    sctp_port: int = DEFAULT_SCTP_PORT
    max_message_size: int = LOCAL_MAX_MESSAGE_SIZE
    ice_pacing: int | None = None  # proposed Ta in ms (a=ice-pacing); None: not announced

    def __post_init__(self) -> None:
        try:
            check_ice_credentials(self.ice_ufrag, self.ice_pwd)
        except SdpParseError as exc:
            raise ValueError(str(exc)) from None
        if not self.fingerprints:
            raise ValueError("at least one DTLS fingerprint is required")
        if not 0 < self.sctp_port <= 65535 or self.max_message_size < 0:
            raise ValueError("sctp_port must be 1..65535 and max_message_size >= 0")
        if self.ice_pacing is not None and not 0 < self.ice_pacing < 10**10:
            raise ValueError("ice_pacing must be a positive number of milliseconds")


def generate_ice_credentials() -> tuple[str, str]:
    """A fresh (ufrag, pwd) pair of legal RFC 8839 lengths (8 and 24 ice-chars)."""
    alphabet = string.ascii_letters + string.digits + "+/"
    ufrag, pwd = ("".join(secrets.choice(alphabet) for _ in range(n)) for n in (8, 24))
    return ufrag, pwd


def check_ice_credentials(ufrag: str, pwd: str) -> None:
    """Raise :class:`SdpParseError` unless both are legal (RFC 8839 section 5.4)."""
    if not 4 <= len(ufrag) <= 256 or not _ICE_CHARS.match(ufrag):
        raise SdpParseError(f"ice-ufrag must be 4..256 ice-chars, got {ufrag[:40]!r}")
    if not 22 <= len(pwd) <= 256 or not _ICE_CHARS.match(pwd):
        raise SdpParseError(f"ice-pwd must be 22..256 ice-chars, got {len(pwd)} chars")


def answer_setup_for(offer_setup: DtlsSetup, preferred: DtlsSetup | None = None) -> DtlsSetup:
    """The ``a=setup`` an answer must carry (RFC 8842 section 5.3).

    ``actpass`` is answered with ``preferred`` (default ``active``: we send the
    ClientHello, saving a round trip); ``active`` must be answered ``passive`` and
    vice versa. ``preferred`` conflicting with the offer raises ValueError.
    """
    if offer_setup is DtlsSetup.ACTPASS:
        choice = preferred or DtlsSetup.ACTIVE
        if choice is DtlsSetup.ACTPASS:
            raise ValueError("an answer cannot use a=setup:actpass")
        return choice
    required = DtlsSetup.PASSIVE if offer_setup is DtlsSetup.ACTIVE else DtlsSetup.ACTIVE
    if preferred is not None and preferred is not required:
        raise ValueError(f"offer has setup:{offer_setup.value}, answer must be {required.value}")
    return required


def dtls_role_from_answer(answer_setup: DtlsSetup | None, *, we_are_offerer: bool) -> DtlsRole:
    """Our DTLS role once the answer is known; raises SdpParseError on an illegal answer."""
    if answer_setup not in (DtlsSetup.ACTIVE, DtlsSetup.PASSIVE):
        shown = answer_setup.value if answer_setup else "nothing"
        raise SdpParseError(f"answer a=setup must be active or passive, got {shown}")
    we_are_client = (answer_setup is DtlsSetup.ACTIVE) != we_are_offerer
    return DtlsRole.CLIENT if we_are_client else DtlsRole.SERVER


class _SectionBuilder:
    """Mutable accumulator for one section while parsing; frozen at the end."""

    def __init__(self, kind: str, port: int, protocol: str, formats: tuple[str, ...]) -> None:
        self.fields: dict[str, object] = dict(
            kind=kind, port=port, protocol=protocol, formats=formats
        )
        self.fingerprints: list[DtlsFingerprint] = []
        self.candidates: list[IceCandidate] = []
        self.mdns: list[IceCandidate] = []
        self.skipped: list[str] = []

    def set_once(self, name: str, value: object, line: str) -> None:
        if name in self.fields:
            raise SdpParseError(f"duplicate attribute in one section: {line[:80]!r}")
        self.fields[name] = value

    def freeze(self, session: _SectionBuilder) -> MediaSection:
        """The section with session-level ICE/DTLS attributes filled in where absent."""
        fields = dict(self.fields)
        for name in ("ice_ufrag", "ice_pwd", "ice_options", "setup"):
            if name not in fields and name in session.fields:
                fields[name] = session.fields[name]
        fingerprints = self.fingerprints or session.fingerprints
        return MediaSection(
            **fields,  # type: ignore[arg-type]
            fingerprints=tuple(fingerprints),
            candidates=tuple(self.candidates),
            unresolved_mdns_candidates=tuple(self.mdns),
            skipped_candidates=tuple(self.skipped),
        )


def _parse_fingerprint(value: str) -> DtlsFingerprint:
    parts = value.split(" ")
    if len(parts) != 2 or not _FINGERPRINT_HEX.match(parts[1]):
        raise SdpParseError(f"a=fingerprint must be '<hash> XX:XX:...': {value[:80]!r}")
    algorithm = parts[0].lower()
    digest = bytes.fromhex(parts[1].replace(":", ""))
    expected = _HASH_SIZES.get(algorithm)
    if expected is not None and len(digest) != expected:
        raise SdpParseError(f"a=fingerprint {algorithm} needs {expected} bytes, not {len(digest)}")
    return DtlsFingerprint(algorithm, digest)


def _parse_media_line(value: str) -> _SectionBuilder:
    parts = value.split(" ")
    if len(parts) < 4 or not all(parts) or not value.isprintable():
        raise SdpParseError(f"m-line needs '<media> <port> <proto> <fmt>...': {value[:80]!r}")
    kind, port_text, protocol = parts[:3]
    port_text = port_text.split("/", 1)[0]  # "<port>/<number of ports>" form
    if not _DIGITS.match(port_text) or int(port_text) > 65535:
        raise SdpParseError(f"m-line port must be 0..65535: {value[:80]!r}")
    return _SectionBuilder(kind, int(port_text), protocol, tuple(parts[3:]))


def _apply_attribute(section: _SectionBuilder, attr: str, value: str, line: str) -> None:
    """Attributes valid at session and media level (ICE and DTLS parameters)."""
    if attr == "ice-ufrag":
        section.set_once("ice_ufrag", value, line)
    elif attr == "ice-pwd":
        section.set_once("ice_pwd", value, line)
    elif attr == "ice-options":
        section.set_once("ice_options", tuple(value.split()), line)
    elif attr == "fingerprint":
        section.fingerprints.append(_parse_fingerprint(value))
    elif attr == "setup":
        try:
            setup = DtlsSetup(value)
        except ValueError:
            raise SdpParseError(f"a=setup must be actpass/active/passive: {value[:30]!r}") from None
        section.set_once("setup", setup, line)


def _apply_media_attribute(section: _SectionBuilder, attr: str, value: str, line: str) -> None:
    if attr == "mid":
        if not _TOKEN.match(value):
            raise SdpParseError(f"a=mid must be a token of 1..64 chars: {value[:80]!r}")
        section.set_once("mid", value, line)
    elif attr == "sctp-port":
        if not _DIGITS.match(value) or int(value) > 65535:
            raise SdpParseError(f"a=sctp-port must be 0..65535: {value[:30]!r}")
        section.set_once("sctp_port", int(value), line)
    elif attr == "max-message-size":
        if not _DIGITS.match(value):
            raise SdpParseError(f"a=max-message-size must be an integer: {value[:30]!r}")
        section.set_once("max_message_size", int(value), line)
    elif attr == "candidate":
        try:
            candidate = _parse_candidate_value(value)
        except SdpParseError:
            section.skipped.append(line)
            return
        (section.mdns if candidate.is_mdns else section.candidates).append(candidate)
    elif attr == "end-of-candidates":
        section.fields["end_of_candidates"] = True
    else:
        _apply_attribute(section, attr, value, line)


def _parse_origin(value: str) -> tuple[str, int]:
    parts = value.split(" ")
    if len(parts) != 6 or not all(parts):
        raise SdpParseError(f"o= needs 6 fields: {value[:80]!r}")
    if not _DIGITS.match(parts[1]) or not _DIGITS.match(parts[2]):
        raise SdpParseError(f"o= session id and version must be integers: {value[:80]!r}")
    return parts[1], int(parts[2])


def _check_data_channel(media: MediaSection) -> MediaSection:
    """Validate the m-line we will use; fill in the RFC 8841 default SCTP port."""
    if not media.ice_ufrag or not media.ice_pwd:
        raise SdpParseError("data channel m-line has no a=ice-ufrag / a=ice-pwd")
    check_ice_credentials(media.ice_ufrag, media.ice_pwd)
    if not media.fingerprints:
        raise SdpParseError("data channel m-line has no a=fingerprint")
    if media.setup is None:
        raise SdpParseError("data channel m-line has no a=setup")
    if media.sctp_port is not None:
        return media
    legacy_port = int(media.formats[0]) if media.is_legacy_data_channel else DEFAULT_SCTP_PORT
    if legacy_port > 65535:
        raise SdpParseError(f"legacy m-line SCTP port must be 0..65535: {legacy_port}")
    return dataclasses.replace(media, sctp_port=legacy_port)


def parse_sdp_untrusted(text: str | bytes) -> SessionDescription:
    """Parse an offer or answer from the network; raises only :class:`SdpParseError`."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise SdpParseError("SDP is not valid UTF-8") from None
    if not isinstance(text, str):
        raise SdpParseError("SDP must be str or bytes")
    if len(text) > MAX_SDP_LENGTH:
        raise SdpParseError(f"SDP longer than {MAX_SDP_LENGTH} characters")
    lines = [line.rstrip("\r") for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines or lines[0] != "v=0":
        raise SdpParseError("SDP must start with 'v=0'")
    session = _SectionBuilder("", 0, "", ())
    sections: list[_SectionBuilder] = []
    origin: tuple[str, int] | None = None
    bundle: tuple[str, ...] = ()
    ice_lite = False
    pacing: int | None = None
    for line in lines[1:]:
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0].lower() <= "z"):
            raise SdpParseError(f"SDP line is not '<type>=<value>': {line[:80]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            sections.append(_parse_media_line(value))
            continue
        if kind == "o" and not sections:
            if origin is not None:
                raise SdpParseError("duplicate o= line")
            origin = _parse_origin(value)
        if kind != "a":
            continue  # c=, s=, t=, b= ... carry nothing we use
        attr, _, attr_value = value.partition(":")
        if sections:
            _apply_media_attribute(sections[-1], attr, attr_value, line)
        elif attr == "group" and attr_value.startswith("BUNDLE"):
            bundle = tuple(attr_value.split()[1:])
        elif attr == "ice-lite":
            ice_lite = True
        elif attr == "ice-pacing":  # pacing-value = 1*10DIGIT (RFC 8839 section 5.5)
            if pacing is not None or not 1 <= len(attr_value) <= 10 or not attr_value.isdigit():
                raise SdpParseError(f"bad or duplicate a=ice-pacing: {attr_value[:30]!r}")
            pacing = int(attr_value)
        else:
            _apply_attribute(session, attr, attr_value, line)
    if origin is None:
        raise SdpParseError("SDP has no o= line")
    media = [section.freeze(session) for section in sections]
    for index, section in enumerate(media):
        if section.is_data_channel and section.port != 0:
            media[index] = _check_data_channel(section)
            return SessionDescription(
                origin[0], origin[1], tuple(media), bundle, ice_lite, index, pacing
            )
    raise SdpParseError("SDP has no usable m=application ... webrtc-datachannel line")


def _render_data_section(
    local: LocalTransport, mid: str | None, setup: DtlsSetup, protocol: str
) -> list[str]:
    legacy = protocol == LEGACY_DATA_CHANNEL_PROTOCOL
    if legacy:
        lines = [f"m=application 9 {protocol} {local.sctp_port}"]
    else:
        lines = [f"m=application 9 {protocol} webrtc-datachannel"]
    lines.append("c=IN IP4 0.0.0.0")
    lines += [f"a=candidate:{c.to_sdp()}" for c in local.candidates]
    if local.end_of_candidates:
        lines.append("a=end-of-candidates")
    lines += [f"a=ice-ufrag:{local.ice_ufrag}", f"a=ice-pwd:{local.ice_pwd}"]
    lines.append("a=ice-options:trickle")
    lines += [f"a=fingerprint:{f.to_sdp()}" for f in local.fingerprints]
    lines.append(f"a=setup:{setup.value}")
    if mid is not None:
        lines.append(f"a=mid:{mid}")
    if legacy:
        lines.append(f"a=sctpmap:{local.sctp_port} webrtc-datachannel 1024")
    else:
        lines.append(f"a=sctp-port:{local.sctp_port}")
    lines.append(f"a=max-message-size:{local.max_message_size}")
    return lines


def _session_header(
    session_id: int, session_version: int, bundle: str | None, local: LocalTransport
) -> list[str]:
    if not 0 <= session_id < 2**63 or session_version < 0:
        raise ValueError("session_id must be 0..2**63-1 and session_version >= 0")
    lines = ["v=0", f"o=- {session_id} {session_version} IN IP4 127.0.0.1", "s=-", "t=0 0"]
    if bundle is not None:
        lines.append(f"a=group:BUNDLE {bundle}")
    if local.ice_pacing is not None:
        lines.append(f"a=ice-pacing:{local.ice_pacing}")  # session level (RFC 8839 5.5)
    lines.append("a=msid-semantic: WMS")
    return lines


def render_offer(
    local: LocalTransport, *, session_id: int, session_version: int = 2, mid: str = "0"
) -> str:
    """A data-channel offer (JSEP shape, ``a=setup:actpass``) as CRLF-terminated text."""
    lines = _session_header(session_id, session_version, mid, local)
    lines += _render_data_section(local, mid, DtlsSetup.ACTPASS, "UDP/DTLS/SCTP")
    return "\r\n".join(lines) + "\r\n"


def render_answer(
    offer: SessionDescription,
    local: LocalTransport,
    *,
    session_id: int,
    session_version: int = 2,
    setup: DtlsSetup | None = None,
) -> str:
    """An answer accepting the offer's data-channel m-line and rejecting the others.

    One m-line per offered m-line, in order (RFC 3264); rejected ones get port 0.
    ``setup`` defaults per :func:`answer_setup_for` (``active`` for ``actpass``).
    The offered protocol is mirrored: a legacy ``DTLS/SCTP`` offer gets a legacy answer.
    """
    chosen = offer.data_channel
    assert chosen.setup is not None  # guaranteed by parse_sdp_untrusted
    answer_setup = answer_setup_for(chosen.setup, setup)
    bundle = chosen.mid if chosen.mid is not None and chosen.mid in offer.bundle_mids else None
    lines = _session_header(session_id, session_version, bundle, local)
    for index, section in enumerate(offer.media):
        if index == offer.data_channel_index:
            # Mirror the offered protocol (UDP/, TCP/ or legacy DTLS/SCTP).
            lines += _render_data_section(local, section.mid, answer_setup, section.protocol)
            continue
        lines.append(f"m={section.kind} 0 {section.protocol} {' '.join(section.formats)}")
        lines.append("c=IN IP4 0.0.0.0")
        if section.mid is not None:
            lines.append(f"a=mid:{section.mid}")
    return "\r\n".join(lines) + "\r\n"
