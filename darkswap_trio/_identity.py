"""The SDK's peer identity: its key file, and the identity codec of
:mod:`darkswap_trio.proto.identity` (Ed25519 keys, libp2p PeerIds) for the SDK's modules."""

from __future__ import annotations

import os
from pathlib import Path

from .proto.identity import Keypair as Keypair
from .proto.identity import PeerId as PeerId
from .proto.identity import parse_peer_id as parse_peer_id
from .proto.identity import peer_id_text as peer_id_text

__all__ = ["Keypair", "PeerId", "load_or_create_keypair", "parse_peer_id", "peer_id_text"]


def load_or_create_keypair(path: str | os.PathLike[str]) -> Keypair:
    """Load the keypair stored at ``path`` or create one there (mode 0600)."""
    p = Path(path)
    if p.exists():
        return Keypair.from_protobuf(p.read_bytes())
    pair = Keypair.generate()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pair.to_protobuf())
    return pair
