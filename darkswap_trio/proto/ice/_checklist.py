"""ICE candidates and the check list (RFC 8445 sections 5 and 6.1.2), sans-IO.

Candidates are :class:`aioice.candidate.Candidate` objects, so SDP encoding and the
priority/foundation formulas are aioice's. This module adds what aioice keeps inside
its asyncio ``Connection``: strict parsing of signalled candidates, candidate pairs
with their states, and the ordered, bounded check list.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import candidate_pair_priority

from ..errors import SdpParseError

__all__ = [
    "COMPONENT",
    "Candidate",
    "CandidatePair",
    "CheckList",
    "PairState",
    "canonical_addr",
    "host_candidate",
    "parse_candidate_untrusted",
    "peer_reflexive_candidate",
    "server_reflexive_candidate",
    "with_address",
]

# Data channels need one component (RTP/RTCP muxing is irrelevant here).
COMPONENT = 1
# RFC 8445 section 6.1.2.5 asks for a limit on the check list; 100 is its example.
MAX_PAIRS = 100
MAX_REMOTE_CANDIDATES = 50
_REMOTE_TYPES = ("host", "srflx", "prflx", "relay")


def canonical_addr(addr: tuple[str, int]) -> tuple[str, int]:
    """Normalise an address so that equal endpoints compare equal.

    IPv4-mapped IPv6 addresses become IPv4, IPv6 is compressed and the scope id
    dropped (sockets report "fe80::1%eth0").
    """
    ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.compressed, int(addr[1]))


def host_candidate(addr: tuple[str, int], local_pref: int = 65535) -> Candidate:
    """A host candidate for a local socket address."""
    host, port = canonical_addr(addr)
    return Candidate(
        foundation=candidate_foundation("host", "udp", host),
        component=COMPONENT,
        transport="udp",
        priority=candidate_priority(COMPONENT, "host", local_pref),
        host=host,
        port=port,
        type="host",
    )


def server_reflexive_candidate(
    mapped: tuple[str, int], base: Candidate, local_pref: int = 65535
) -> Candidate:
    """A server-reflexive candidate learned through ``base`` (RFC 8445 section 5.1.1.2)."""
    host, port = canonical_addr(mapped)
    return Candidate(
        foundation=candidate_foundation("srflx", "udp", base.host),
        component=COMPONENT,
        transport="udp",
        priority=candidate_priority(COMPONENT, "srflx", local_pref),
        host=host,
        port=port,
        type="srflx",
        related_address=base.host,
        related_port=base.port,
    )


def peer_reflexive_candidate(addr: tuple[str, int], priority: int, foundation: str) -> Candidate:
    """A remote candidate learned from the source of a check (RFC 8445 section 7.3.1.3)."""
    host, port = canonical_addr(addr)
    return Candidate(
        foundation=foundation,
        component=COMPONENT,
        transport="udp",
        priority=priority,
        host=host,
        port=port,
        type="prflx",
    )


def parse_candidate_untrusted(sdp: str) -> Candidate:
    """Parse a signalled candidate ("candidate:..." prefix optional).

    Only UDP candidates of component 1 with an IP literal address are accepted (mDNS
    ``.local`` names are not resolved by this core).

    Raises:
        SdpParseError: the only exception raised, whatever the input.
    """
    if not isinstance(sdp, str):
        raise SdpParseError("candidate must be a string")
    text = sdp.strip()
    for prefix in ("a=", "candidate:"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    try:
        candidate = Candidate.from_sdp(text)
        host, port = canonical_addr((candidate.host, candidate.port))
    except (ValueError, IndexError) as exc:
        raise SdpParseError(f"invalid ICE candidate: {exc}") from exc
    if candidate.transport.lower() != "udp":
        raise SdpParseError("only UDP candidates are supported")
    if candidate.component != COMPONENT:
        raise SdpParseError(f"unsupported component {candidate.component}")
    if candidate.type not in _REMOTE_TYPES:
        raise SdpParseError(f"unknown candidate type {candidate.type!r}")
    if not (0 < port < 65536) or not (0 < candidate.priority < 2**32):
        raise SdpParseError("candidate port or priority out of range")
    if not (1 <= len(candidate.foundation) <= 32):
        raise SdpParseError("candidate foundation length out of range")
    return with_address(candidate, host, port)


def with_address(candidate: Candidate, host: str, port: int) -> Candidate:
    """A copy of ``candidate`` at ``host``:``port``, built through the constructor.

    Assigning ``candidate.host`` would leave aioice's private ``_network_host`` (what
    ``can_pair_with`` compares) on the old value; the constructor keeps the two in step.
    """
    return Candidate(
        foundation=candidate.foundation,
        component=candidate.component,
        transport=candidate.transport,
        priority=candidate.priority,
        host=host,
        port=port,
        type=candidate.type,
        related_address=candidate.related_address,
        related_port=candidate.related_port,
        tcptype=candidate.tcptype,
        generation=candidate.generation,
    )


class PairState(enum.Enum):
    """Candidate pair states (RFC 8445 section 6.1.2.6)."""

    FROZEN = "frozen"
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(eq=False)
class CandidatePair:
    """A local base paired with a remote candidate; mutable state owned by the agent."""

    local: Candidate
    remote: Candidate
    priority: int
    state: PairState = PairState.FROZEN
    nominated: bool = False
    # The controlled side saw USE-CANDIDATE before its own check succeeded.
    remote_nominated: bool = False
    # The controlling side is running the nomination check on this pair.
    nominating: bool = False
    check_transaction: bytes | None = field(default=None, repr=False)
    # When the latest check of this pair was first sent (nomination patience).
    check_started_at: float | None = field(default=None, repr=False)

    @property
    def local_addr(self) -> tuple[str, int]:
        return (self.local.host, self.local.port)

    @property
    def remote_addr(self) -> tuple[str, int]:
        return (self.remote.host, self.remote.port)


def _ip_version(host: str) -> int:
    return ipaddress.ip_address(host).version


class CheckList:
    """The ordered, bounded list of candidate pairs of one ICE session."""

    def __init__(self, controlling: bool) -> None:
        self.controlling = controlling
        self.local: list[Candidate] = []  # bases: host candidates only
        self.remote: list[Candidate] = []
        self.pairs: list[CandidatePair] = []

    # -- candidates ------------------------------------------------------------

    def find_local(self, addr: tuple[str, int]) -> Candidate | None:
        for candidate in self.local:
            if (candidate.host, candidate.port) == addr:
                return candidate
        return None

    def find_remote(self, addr: tuple[str, int]) -> Candidate | None:
        for candidate in self.remote:
            if (candidate.host, candidate.port) == addr:
                return candidate
        return None

    def add_local(self, candidate: Candidate) -> list[CandidatePair]:
        """Add a local base and pair it with every remote candidate; returns new pairs."""
        self.local.append(candidate)
        return self._pair(candidate, self.remote)

    def add_remote(self, candidate: Candidate) -> list[CandidatePair]:
        """Add a remote candidate (or upgrade a known prflx one); returns new pairs.

        A candidate with an address already known is redundant (RFC 8838 section 9)
        and ignored, except that it replaces a peer-reflexive guess.
        """
        known = self.find_remote((candidate.host, candidate.port))
        if known is not None:
            if known.type == "prflx" and candidate.type != "prflx":
                # Keep the pair, take the signalled type/priority (RFC 8445 7.3.1.3).
                known.type = candidate.type
                known.foundation = candidate.foundation
                known.priority = candidate.priority
                known.related_address = candidate.related_address
                known.related_port = candidate.related_port
                self.sort()
            return []
        if len(self.remote) >= MAX_REMOTE_CANDIDATES:
            return []
        self.remote.append(candidate)
        return self._pair_remote(candidate)

    def _pair_remote(self, remote: Candidate) -> list[CandidatePair]:
        new: list[CandidatePair] = []
        for local in self.local:
            new.extend(self._pair(local, [remote]))
        return new

    def _pair(self, local: Candidate, remotes: list[Candidate]) -> list[CandidatePair]:
        new = []
        for remote in remotes:
            if len(self.pairs) >= MAX_PAIRS:
                break
            if _ip_version(local.host) != _ip_version(remote.host):
                continue
            if self.find_pair((local.host, local.port), (remote.host, remote.port)) is not None:
                continue
            pair = CandidatePair(
                local=local,
                remote=remote,
                priority=candidate_pair_priority(local, remote, self.controlling),
            )
            self.pairs.append(pair)
            new.append(pair)
        if new:
            self.sort()
            self._unfreeze_new(new)
        return new

    def _unfreeze_new(self, new: list[CandidatePair]) -> None:
        # RFC 8445 6.1.2.6: a pair starts Waiting when no other pair with its
        # foundations is Waiting or In-Progress, so each foundation is probed once
        # before its lower-priority siblings.
        for pair in new:
            if not any(
                other is not pair
                and other.state in (PairState.WAITING, PairState.IN_PROGRESS)
                and self._same_foundation(other, pair)
                for other in self.pairs
            ):
                pair.state = PairState.WAITING

    @staticmethod
    def _same_foundation(a: CandidatePair, b: CandidatePair) -> bool:
        return (
            a.local.foundation == b.local.foundation and a.remote.foundation == b.remote.foundation
        )

    # -- pairs -----------------------------------------------------------------

    def find_pair(
        self, local_addr: tuple[str, int], remote_addr: tuple[str, int]
    ) -> CandidatePair | None:
        for pair in self.pairs:
            if pair.local_addr == local_addr and pair.remote_addr == remote_addr:
                return pair
        return None

    def sort(self) -> None:
        """Re-rank pairs (after a role switch or a priority change), highest first."""
        for pair in self.pairs:
            pair.priority = candidate_pair_priority(pair.local, pair.remote, self.controlling)
        self.pairs.sort(key=lambda p: p.priority, reverse=True)

    def set_controlling(self, controlling: bool) -> None:
        self.controlling = controlling
        self.sort()

    def next_ordinary(self) -> CandidatePair | None:
        """The pair the Ta timer checks next: best Waiting, else best Frozen."""
        for wanted in (PairState.WAITING, PairState.FROZEN):
            for pair in self.pairs:
                if pair.state is wanted:
                    return pair
        return None

    def unfreeze_foundation(self, succeeded: CandidatePair) -> None:
        """RFC 8445 7.2.5.3.3: a success unfreezes the pairs sharing its foundations."""
        for pair in self.pairs:
            if pair.state is PairState.FROZEN and self._same_foundation(pair, succeeded):
                pair.state = PairState.WAITING

    def valid_pairs(self) -> list[CandidatePair]:
        return [p for p in self.pairs if p.state is PairState.SUCCEEDED]

    def all_failed(self) -> bool:
        return all(p.state is PairState.FAILED for p in self.pairs)
