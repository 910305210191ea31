"""ICE candidates in SDP (RFC 8839 section 5.1): :class:`IceCandidate`, its strict
parser :func:`parse_candidate_untrusted` and :func:`render_candidate`.

Part of :mod:`darkswap_trio.proto.sdp._description` (which re-exports all of it), kept apart
because trickled candidates travel on their own, outside any description.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass

from aioice.candidate import Candidate

from ..errors import SdpParseError

__all__ = ["IceCandidate", "parse_candidate_untrusted", "render_candidate"]

_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+\Z")
_DIGITS = re.compile(r"[0-9]{1,20}\Z")
_MDNS_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*\.local\Z")
_CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")
_TCP_TYPES = ("active", "passive", "so")


@dataclass(frozen=True)
class IceCandidate:
    """One ICE candidate (RFC 8839 section 5.1), immutable.

    ``host`` is an IP literal, or an mDNS name when :attr:`is_mdns` is true.
    """

    foundation: str
    component: int
    transport: str  # "udp" or "tcp", lower case
    priority: int
    host: str
    port: int
    type: str  # host / srflx / prflx / relay
    related_address: str | None = None
    related_port: int | None = None
    tcptype: str | None = None
    generation: int | None = None

    @property
    def is_mdns(self) -> bool:
        """True for a ``.local`` name that would need mDNS resolution."""
        return self.host.lower().endswith(".local")

    def to_aioice(self) -> Candidate:
        """The equivalent :class:`aioice.candidate.Candidate` (same field order)."""
        return Candidate(*dataclasses.astuple(self))

    @classmethod
    def from_aioice(cls, candidate: Candidate) -> IceCandidate:
        """Copy of an aioice candidate (e.g. one our ICE agent gathered)."""
        values = {f.name: getattr(candidate, f.name) for f in dataclasses.fields(cls)}
        return cls(**{**values, "transport": candidate.transport.lower()})

    def to_sdp(self) -> str:
        """The ``a=candidate:`` attribute value (without the ``candidate:`` prefix)."""
        return self.to_aioice().to_sdp()


def _check_address(text: str, what: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not _MDNS_NAME.match(text):
            raise SdpParseError(
                f"candidate {what} is not an IP or mDNS name: {text[:60]!r}"
            ) from None


def _small_int(text: str, what: str, low: int, high: int) -> int:
    if not _DIGITS.match(text) or not low <= int(text) <= high:
        raise SdpParseError(f"candidate {what} must be an integer {low}..{high}, got {text[:30]!r}")
    return int(text)


def _parse_candidate_value(value: str) -> IceCandidate:
    # aioice splits on any whitespace; allow only plain spaces so both see the same fields.
    if any(ch.isspace() and ch != " " for ch in value):
        raise SdpParseError("candidate contains whitespace other than single spaces")
    bits = value.split(" ")
    if len(bits) < 8:
        raise SdpParseError(f"candidate needs at least 8 fields, got {len(bits)}")
    foundation, component, transport, priority, host, port, typ, ctype = bits[:8]
    if not 1 <= len(foundation) <= 32 or not _ICE_CHARS.match(foundation):
        raise SdpParseError(f"candidate foundation must be 1..32 ice-chars: {foundation[:40]!r}")
    _small_int(component, "component", 1, 256)
    if transport.lower() not in ("udp", "tcp"):
        raise SdpParseError(f"candidate transport must be udp or tcp, got {transport[:20]!r}")
    _small_int(priority, "priority", 1, 2**32 - 1)
    _check_address(host, "address")
    _small_int(port, "port", 0, 65535)
    if typ != "typ":
        raise SdpParseError(f"candidate field 7 must be 'typ', got {typ[:20]!r}")
    if ctype not in _CANDIDATE_TYPES:
        raise SdpParseError(f"candidate type must be host/srflx/prflx/relay, got {ctype[:20]!r}")
    extensions = bits[8:]
    if len(extensions) % 2:
        raise SdpParseError("candidate extension attributes must come in name/value pairs")
    for name, ext_value in zip(extensions[::2], extensions[1::2], strict=True):
        if not name or not ext_value:
            raise SdpParseError("candidate has an empty extension attribute")
        if name == "raddr":
            _check_address(ext_value, "raddr")
        elif name == "rport":
            _small_int(ext_value, "rport", 0, 65535)
        elif name == "generation":
            _small_int(ext_value, "generation", 0, 2**32 - 1)
        elif name == "tcptype" and ext_value not in _TCP_TYPES:
            raise SdpParseError(f"candidate tcptype must be active/passive/so: {ext_value[:20]!r}")
    # The fields are validated, so aioice's lenient parser now reads them faithfully.
    candidate = IceCandidate.from_aioice(Candidate.from_sdp(value))
    if candidate.transport == "tcp" and candidate.tcptype is None:
        raise SdpParseError("tcp candidate without tcptype")
    return candidate


def parse_candidate_untrusted(text: str) -> IceCandidate:
    """Parse a trickled candidate in the W3C shape (``candidate:...``).

    Also accepts the ``a=candidate:`` line form. Raises only :class:`SdpParseError`;
    the W3C end-of-candidates marker (the empty string) is an error here, so
    callers check for it first. mDNS candidates are returned with ``is_mdns`` set.
    """
    if not isinstance(text, str):
        raise SdpParseError("candidate must be a str")
    line = text.strip("\r\n")
    if line.startswith("a="):
        line = line[2:]
    if not line.startswith("candidate:"):
        raise SdpParseError("a candidate must start with 'candidate:'")
    if len(line) > 1024:
        raise SdpParseError("candidate line is longer than 1024 characters")
    return _parse_candidate_value(line[len("candidate:") :])


def render_candidate(candidate: IceCandidate) -> str:
    """The W3C ``RTCIceCandidateInit.candidate`` string: ``candidate:...``."""
    return "candidate:" + candidate.to_sdp()
