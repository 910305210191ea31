"""The PeerConnectionConfig of a network's direct attempts, from its P2PConfig."""

from __future__ import annotations

from dataclasses import replace

from .._config import P2PConfig, stun_host_port
from ..webrtc._peer_connection import PeerConnectionConfig

__all__ = ["direct_path_config"]


def direct_path_config(p2p: P2PConfig, given: PeerConnectionConfig | None) -> PeerConnectionConfig:
    """``p2p.stun_servers``, ``p2p.turn_servers`` and ``p2p.ice_transport_policy`` apply
    unless the given peer connection config names its own servers."""
    config = given or PeerConnectionConfig()
    stun_servers = [stun_host_port(s) for s in p2p.stun_servers]
    if not config.stun_servers and stun_servers:
        config = replace(config, stun_servers=stun_servers)
    turn_servers = p2p.turn_server_configs()
    if not config.turn_servers and turn_servers:
        config = replace(
            config, turn_servers=turn_servers, ice_transport_policy=p2p.ice_transport_policy
        )
    return config
