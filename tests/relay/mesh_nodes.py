"""Relay cluster nodes for tests: N in-process relays meshed through a static directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from relayclient import make_config

from darkswap_trio import Keypair
from relay import RelayConfig, serve_relay
from relay.cluster._mesh_locator import StaticPeerLocator
from relay.cluster._types import NodeAddress

SECRET = b"cluster secret for tests"


def node_address(server: Any, node_id: str) -> NodeAddress:
    port = server.mesh_port or server.signaling_port  # its own listener with [mesh] tls
    return NodeAddress(node_id, f"127.0.0.1:{port}", server.peer_id)


async def _node(
    config: RelayConfig,
    locator: StaticPeerLocator,
    keypair: Keypair,
    *,
    task_status: trio.TaskStatus[tuple[Any, trio.CancelScope]],
) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(_serve, config, locator, keypair)
            task_status.started((server, scope))


async def _serve(
    config: RelayConfig, locator: StaticPeerLocator, keypair: Keypair, *, task_status: Any
) -> None:
    await serve_relay(config, keypair=keypair, locator=locator, task_status=task_status)


class Cluster:
    def __init__(self, locator: StaticPeerLocator, nursery: trio.Nursery) -> None:
        self.locator = locator
        self.servers: list[Any] = []
        self._scopes: list[trio.CancelScope] = []
        self._setup: list[tuple[RelayConfig, Keypair]] = []
        self._nursery = nursery

    async def start(self, config: RelayConfig, keypair: Keypair) -> Any:
        server, scope = await self._nursery.start(_node, config, self.locator, keypair)
        self.locator.add_node(node_address(server, f"node{len(self.servers)}"))
        self.servers.append(server)
        self._scopes.append(scope)
        self._setup.append((config, keypair))
        return server

    def crash(self, index: int) -> None:
        """Stop node ``index`` at once: no shutdown, its sockets just close."""
        self._scopes[index].cancel()

    async def restart(self, index: int) -> Any:
        """Start crashed node ``index`` again: same key, same port."""
        config, keypair = self._setup[index]
        config.port = self.servers[index].signaling_port
        server, scope = await self._nursery.start(_node, config, self.locator, keypair)
        self.servers[index], self._scopes[index] = server, scope
        return server


@asynccontextmanager
async def running_cluster(
    tmp_path: Path, count: int, *, secret: bytes = SECRET, auth: str = "open", **limits: Any
) -> AsyncIterator[tuple[list[Any], StaticPeerLocator]]:
    """``count`` relays (loopback) sharing one StaticPeerLocator; place peers with
    ``locator.place(peer_id, "node0")``."""
    async with running_cluster_handle(tmp_path, count, secret=secret, auth=auth, **limits) as c:
        yield c.servers, c.locator


@asynccontextmanager
async def running_cluster_handle(
    tmp_path: Path,
    count: int,
    *,
    secret: bytes = SECRET,
    auth: str = "open",
    node_limits: list[dict[str, Any]] | None = None,
    open_timeout: float = 5.0,
    mesh_tls: bool = False,
    **limits: Any,
) -> AsyncIterator[Cluster]:
    """As running_cluster; ``node_limits[i]`` adds limits of node ``i`` only."""
    secret_file = tmp_path / f"mesh-{len(secret)}.secret"
    secret_file.write_bytes(secret)
    async with trio.open_nursery() as nursery:
        cluster = Cluster(StaticPeerLocator(), nursery)
        for i in range(count):
            config = make_config(**{**limits, **(node_limits[i] if node_limits else {})})
            config.auth.mode = auth
            config.mesh.secret_file = str(secret_file)
            config.mesh.link_timeout = 3.0
            config.mesh.open_timeout = open_timeout
            config.mesh.tls = mesh_tls
            await cluster.start(config, Keypair.generate())
        try:
            yield cluster
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                for i, server in enumerate(cluster.servers):
                    if not cluster._scopes[i].cancel_called:  # (a restarted one: its new scope)
                        await server.shutdown(0.2)
            nursery.cancel_scope.cancel()
