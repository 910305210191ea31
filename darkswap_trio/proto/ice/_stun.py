"""The STUN side of ICE connectivity checks (RFC 8445 sections 7.2 and 7.3), pure functions.

Building a check request, authenticating an incoming one, and the role-conflict rule,
kept apart from the agent's state so each reads on its own; :class:`IceCredentials`
holds what they need (both sides' ufrag/pwd, our tie-breaker, the random source).
"""

from __future__ import annotations

import enum
import random
import string

from aioice.candidate import Candidate, candidate_priority

from ..stun import Message, Method, binding_request
from ._checklist import COMPONENT, canonical_addr, with_address

__all__ = [
    "ICE_CHARS",
    "IceCredentials",
    "RoleDecision",
    "authenticate_check",
    "build_check_request",
    "copy_candidate",
    "ip_family",
    "resolve_role_conflict",
]

ICE_CHARS = string.ascii_letters + string.digits + "+/"


def build_check_request(
    transaction_id: bytes,
    *,
    remote_ufrag: str,
    local_ufrag: str,
    remote_pwd: str,
    controlling: bool,
    tie_breaker: int,
    nominate: bool,
) -> Message:
    """A signed connectivity check (also used for consent, without USE-CANDIDATE)."""
    request = binding_request(transaction_id)
    request.attributes["USERNAME"] = f"{remote_ufrag}:{local_ufrag}"
    request.attributes["PRIORITY"] = candidate_priority(COMPONENT, "prflx")
    if controlling:
        request.attributes["ICE-CONTROLLING"] = tie_breaker
        if nominate:
            request.attributes["USE-CANDIDATE"] = None
    else:
        request.attributes["ICE-CONTROLLED"] = tie_breaker
    request.add_message_integrity(remote_pwd.encode())
    return request


def authenticate_check(
    message: Message, *, local_ufrag: str, local_pwd: str, remote_ufrag: str | None
) -> int | None:
    """None if ``message`` is an acceptable check, else the STUN error code to answer.

    400 for a malformed request, 401 for bad credentials (RFC 8489 section 9.1.3).
    The remote half of USERNAME is only checked once the remote ufrag is known.
    """
    username = message.attributes.get("USERNAME")
    if (
        message.message_method != Method.BINDING
        or "MESSAGE-INTEGRITY" not in message.attributes
        or not isinstance(username, str)
        or not isinstance(message.attributes.get("PRIORITY"), int)
    ):
        return 400
    ours, colon, theirs = username.partition(":")
    if (
        colon != ":"
        or ours != local_ufrag
        or remote_ufrag not in (None, theirs)
        or not message.check_message_integrity(local_pwd.encode())
    ):
        return 401
    return None


class RoleDecision(enum.Enum):
    KEEP = "keep"  # no conflict
    SWITCH = "switch"  # we lose the tie-break: take the other role
    REJECT = "reject"  # we win: answer 487 Role Conflict


def resolve_role_conflict(message: Message, controlling: bool, tie_breaker: int) -> RoleDecision:
    """RFC 8445 section 7.3.1.1, as seen by the agent receiving ``message``."""
    if controlling and "ICE-CONTROLLING" in message.attributes:
        if tie_breaker >= message.attributes["ICE-CONTROLLING"]:
            return RoleDecision.REJECT
        return RoleDecision.SWITCH
    if not controlling and "ICE-CONTROLLED" in message.attributes:
        if tie_breaker < message.attributes["ICE-CONTROLLED"]:
            return RoleDecision.REJECT
        return RoleDecision.SWITCH
    return RoleDecision.KEEP


def ip_family(host: str) -> int:
    return 6 if ":" in host else 4


def copy_candidate(candidate: Candidate) -> Candidate:
    """Our own canonical copy, so the caller's object is never mutated."""
    host, port = canonical_addr((candidate.host, candidate.port))
    return with_address(candidate, host, port)


class IceCredentials:
    """Both sides' ICE credentials and our tie-breaker; builds and checks STUN checks.

    ``rng`` also draws transaction ids and peer-reflexive foundations, in the order
    the agent asks for them.
    """

    def __init__(
        self,
        rng: random.Random,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
        tie_breaker: int | None = None,
    ) -> None:
        self.rng = rng
        self.tie_breaker = tie_breaker if tie_breaker is not None else rng.getrandbits(64)
        self.local_ufrag = local_ufrag or self.random_string(8)
        self.local_pwd = local_pwd or self.random_string(24)
        if len(self.local_ufrag) < 4 or len(self.local_pwd) < 22:
            raise ValueError("ice-ufrag needs 4+ characters and ice-pwd 22+")
        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None

    def restart(self, ufrag: str | None, pwd: str | None) -> None:
        """New local credentials (drawn unless given); the remote ones are forgotten."""
        self.local_ufrag = ufrag or self.random_string(8)
        self.local_pwd = pwd or self.random_string(24)
        self.remote_ufrag = self.remote_pwd = None

    def transaction_id(self) -> bytes:
        return self.rng.getrandbits(96).to_bytes(12, "big")

    def random_string(self, length: int) -> str:
        return "".join(self.rng.choice(ICE_CHARS) for _ in range(length))

    def check_request(self, controlling: bool, nominate: bool) -> Message:
        """A signed check (or consent check) to the peer; remote credentials must be set."""
        assert self.remote_ufrag is not None and self.remote_pwd is not None
        return build_check_request(
            self.transaction_id(),
            remote_ufrag=self.remote_ufrag,
            local_ufrag=self.local_ufrag,
            remote_pwd=self.remote_pwd,
            controlling=controlling,
            tie_breaker=self.tie_breaker,
            nominate=nominate,
        )

    def authenticate(self, message: Message) -> int | None:
        """None for an acceptable check, else the STUN error code to answer."""
        return authenticate_check(
            message,
            local_ufrag=self.local_ufrag,
            local_pwd=self.local_pwd,
            remote_ufrag=self.remote_ufrag,
        )
