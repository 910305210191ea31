"""A relay node's mesh service: links to the other nodes and cross-node circuits.

``serve_mesh`` owns the mesh nursery (a child of the relay's root nursery): the links
this node dials live there, as do the tasks opening cross-node circuits. Links other
nodes dial are served by the signaling listener (path ``/mesh``) in the session
nursery, through :meth:`MeshService.accept`. With a mesh, a RelayRequest for a peer
not registered here is located in the cluster directory and opened through the link
to its node (docs/PROTOCOL.md section 15).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from darkswap_trio import Keypair
from relay._config import ConfigError

from ._config import split_advertise
from ._mesh_circuits import CrossNodeCircuits
from ._mesh_links import MeshLinks
from ._mesh_locator import PeerLocator, StaticPeerLocator
from ._mesh_tls import mesh_client_context, mesh_server_context

if TYPE_CHECKING:
    from darkswap_trio.websocket import WebSocketRequest
    from relay._config import RelayConfig
    from relay._router import RelayRouter


@dataclass(frozen=True)
class MeshStatistics:
    links: int  # live links to other nodes
    cross_node_circuits: int  # circuits of this node whose other end is on another node
    opening: int  # cross-node circuit requests waiting for a locate, a link or an answer
    dials: int
    dial_failures: int
    refused_links: int  # links other nodes dialed that failed the handshake
    wrong_certificates: int  # dials refused: the node's TLS certificate was not its key
    # MeshOpens refused because the directory did not place their requester on the
    # sending node (requester_not_on_node) or could not be asked (cluster_unavailable).
    requesters_refused: dict[str, int]


class MeshService:
    def __init__(
        self,
        router: RelayRouter,
        links: MeshLinks,
        circuits: CrossNodeCircuits,
        server_tls: ssl.SSLContext | None,
    ) -> None:
        self._router = router
        self.links = links
        self.circuits = circuits
        # [mesh] tls: the context of this node's own mesh listener (its node certificate).
        self.server_tls = server_tls

    async def accept(self, request: WebSocketRequest, ticket: Any = None) -> None:
        await self.links.accept(request, ticket)

    def statistics(self) -> MeshStatistics:
        return MeshStatistics(
            links=len(self.links.links()),
            cross_node_circuits=len(self._router.remote_ends),
            opening=self.circuits.pending,
            dials=self.links.dials,
            dial_failures=self.links.dial_failures,
            refused_links=self.links.refused,
            wrong_certificates=self.links.wrong_certificates,
            requesters_refused=dict(self.circuits.requesters.refused),
        )


class _MeshCollector:
    """/metrics of the mesh, read from :meth:`MeshService.statistics` at scrape time."""

    def __init__(self, service: MeshService) -> None:
        self._service = service

    def collect(self) -> Iterator[Any]:
        s = self._service.statistics()
        p = "darkswap_relay_mesh_"
        yield GaugeMetricFamily(p + "links", "Live mesh links to other relay nodes.", s.links)
        yield GaugeMetricFamily(
            p + "cross_node_circuits",
            "Open circuits whose other end is on another relay node.",
            s.cross_node_circuits,
        )
        yield GaugeMetricFamily(
            p + "opening", "Cross-node circuit requests being opened.", s.opening
        )
        yield CounterMetricFamily(p + "dials", "Mesh links this node dialed.", s.dials)
        yield CounterMetricFamily(
            p + "dial_failures", "Mesh link dials that failed.", s.dial_failures
        )
        yield CounterMetricFamily(
            p + "wrong_certificates",
            "Mesh dials refused: the node's TLS certificate did not carry its PeerId's key.",
            s.wrong_certificates,
        )
        yield CounterMetricFamily(
            p + "refused_links",
            "Mesh links from other nodes refused in the handshake.",
            s.refused_links,
        )
        refused = CounterMetricFamily(
            p + "requesters_refused",
            "Circuit opens from other nodes refused: the requester is not registered on the "
            "sending node, or the directory could not say.",
            labels=["code"],
        )
        for code, count in sorted(s.requesters_refused.items()):
            refused.add_metric([code], count)
        yield refused


MESH_TLS_HELP = (
    "Mesh links over TLS 1.3, each node's certificate made from its node key and checked "
    "against its PeerId; served on the --advertise port (any free port without it). Give "
    "every node the same setting."
)


def read_mesh_secret(path: str | None) -> bytes:
    """The cluster secret (the file's bytes, surrounding whitespace stripped); b"" for none."""
    return b"" if not path else Path(path).read_bytes().strip()


def check_mesh_files(config: RelayConfig) -> None:
    """Read ``[mesh]``'s files now; raises the relay's ConfigError naming the bad one."""
    mesh = config.mesh
    try:
        if mesh.secret_file:
            read_mesh_secret(mesh.secret_file)
        if mesh.static_directory:
            StaticPeerLocator.from_file(mesh.static_directory)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"mesh: {exc}") from exc


def mesh_listen_port(config: RelayConfig) -> int:
    """The port of a node's own (TLS) mesh listener: the ``advertise`` port, which other
    nodes dial, else 0 (any free port, advertised as bound)."""
    if config.cluster.advertise is None:
        return 0
    return split_advertise(config.cluster.advertise, ConfigError)[1]


def mesh_locator(
    config: RelayConfig, locator: PeerLocator | None, router: RelayRouter | None = None
) -> PeerLocator | None:
    """The locator a relay's mesh uses: the one given, else ``[mesh] static_directory``,
    else the cluster's Redis directory when ``[cluster]`` is enabled; None: no mesh."""
    if locator is not None:
        return locator
    if config.mesh.static_directory:
        return StaticPeerLocator.from_file(config.mesh.static_directory)
    if config.cluster.enabled and router is not None:
        # The Redis directory of router.cluster, usable once the node has joined.
        from ._directory import NodeDirectory

        return NodeDirectory(router)
    return None


async def serve_mesh(
    router: RelayRouter,
    keypair: Keypair,
    config: RelayConfig,
    locator: PeerLocator,
    *,
    task_status: trio.TaskStatus[MeshService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the mesh until cancelled. Raises ValueError without a way to authenticate
    nodes (a cluster secret, or a locator that knows the cluster's node PeerIds)."""
    mesh = config.mesh
    secret = read_mesh_secret(mesh.secret_file)
    authority = locator if callable(getattr(locator, "is_cluster_node", None)) else None
    if not secret and authority is None:
        raise ValueError("mesh links need mesh.secret_file or a directory of cluster nodes")
    server_tls = mesh_server_context(keypair) if mesh.tls else None
    async with trio.open_nursery() as nursery:
        links = MeshLinks(
            router,
            keypair,
            nursery,
            secret=secret,
            authority=authority,  # type: ignore[arg-type]
            link_timeout=mesh.link_timeout,
            max_backoff=mesh.max_backoff,
            max_message_size=config.limits.max_frame_size * 4,
            client_tls=mesh_client_context() if mesh.tls else None,
        )
        circuits = CrossNodeCircuits(
            router,
            links,
            locator,
            nursery,
            open_timeout=mesh.open_timeout,
            max_pending=mesh.max_pending_opens,
        )
        links.cross = circuits
        router.cross_node = circuits
        service = MeshService(router, links, circuits, server_tls)
        collector = _MeshCollector(service)
        router.metrics.registry.register(collector)
        task_status.started(service)
        try:
            await trio.sleep_forever()
        finally:
            router.cross_node = None
            router.metrics.registry.unregister(collector)
            links.close_all()
