"""Relay cluster nodes for tests: N in-process relays meshed through a static directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio
from relayclient import make_config

from relay import serve_relay
from relay.cluster._mesh_locator import StaticPeerLocator
from relay.cluster._types import NodeAddress

SECRET = b"cluster secret for tests"


def node_address(server: Any, node_id: str) -> NodeAddress:
    return NodeAddress(node_id, f"127.0.0.1:{server.signaling_port}", server.peer_id)


@asynccontextmanager
async def running_cluster(
    tmp_path: Path, count: int, *, secret: bytes = SECRET, **limits: Any
) -> AsyncIterator[tuple[list[Any], StaticPeerLocator]]:
    """``count`` relays (open auth, loopback) sharing one StaticPeerLocator; place
    peers with ``locator.place(peer_id, "node0")``."""
    secret_file = tmp_path / "mesh.secret"
    secret_file.write_bytes(secret)
    locator = StaticPeerLocator()
    async with trio.open_nursery() as nursery:
        servers = []
        for i in range(count):
            config = make_config(**limits)
            config.mesh.secret_file = str(secret_file)
            config.mesh.link_timeout = 3.0
            config.mesh.open_timeout = 5.0
            server = await nursery.start(partial(serve_relay, config, locator=locator))
            locator.add_node(node_address(server, f"node{i}"))
            servers.append(server)
        try:
            yield servers, locator
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                for server in servers:
                    await server.shutdown(0.2)
            nursery.cancel_scope.cancel()
