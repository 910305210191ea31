"""What a process of ``darkswap-relay --workers N`` needs to know about its slot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._config import RelayConfig
    from ._turn_credentials import TurnCredentialIssuer


@dataclass(frozen=True)
class WorkerSlot:
    """This process is worker ``index`` (0-based) of a relay running N workers.

    Workers bind the signaling port together (SO_REUSEPORT): a mesh link dialed to it
    would reach any of them, so each serves mesh links on a private ``mesh_port``
    (0: any free port), which its liveness record advertises to the cluster.
    """

    index: int
    mesh_port: int

    def turn_issuer(self, config: RelayConfig, multiaddr: str) -> TurnCredentialIssuer | None:
        """TURN credentials for the peers of a worker that does not serve TURN: the
        same secret, naming worker 0's ports (None if a port is only known there: 0)."""
        from ._turn import read_turn_secret
        from ._turn_credentials import TurnCredentialIssuer, turn_uris

        turn = config.turn
        if turn.secret_file is None or not config.stun_port or turn.tls_port == 0:
            return None
        uris = tuple(turn.uris) or turn_uris(multiaddr, config.stun_port, turn.tls_port)
        return TurnCredentialIssuer(read_turn_secret(turn.secret_file), turn.credentials_ttl, uris)
