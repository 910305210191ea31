"""SDK peers for the tests in this folder: real P2PNetworks on a real relay, loopback only."""

from contextlib import asynccontextmanager

import trio

from darkswap_trio import (
    Config,
    Keypair,
    P2PConfig,
    P2PNetwork,
    RelayManagerConfig,
    open_relay_session,
)
from darkswap_trio.testing import running_relay
from darkswap_trio.webrtc import PeerConnectionConfig

LOOPBACK = PeerConnectionConfig(host_addresses=["127.0.0.1"], include_loopback=True)
# Fast relay retries, but the default direct timeout: a failure that waits for it
# would show.
FAST = RelayManagerConfig(
    connection_timeout=5,
    ping_interval=1,
    reconnect_interval=0.05,
    max_reconnect_attempts=3,
    max_reconnect_interval=0.2,
)


def network(relays, *, relay_manager=FAST, **p2p) -> P2PNetwork:
    """A P2PNetwork (not started) on ``relays`` with loopback host candidates."""
    config = Config(p2p=P2PConfig(relay_servers=list(relays), **p2p), relay_manager=relay_manager)
    return P2PNetwork(config, peer_connection_config=LOOPBACK)


@asynccontextmanager
async def peer(relay, *, relay_manager=FAST, **p2p):
    """A running P2PNetwork registered with ``relay`` (a running_relay handle)."""
    async with network([relay.multiaddr], relay_manager=relay_manager, **p2p) as net:
        await net.wait_relay_connected()
        yield net


@asynccontextmanager
async def relayed_circuit():
    """``(outgoing, incoming)``: a RelayCircuit between two relay sessions on a fresh
    relay (``open_relay_session``, no P2PNetwork)."""
    async with (
        running_relay() as relay,
        open_relay_session(relay.multiaddr, Keypair.generate()) as a,
        open_relay_session(relay.multiaddr, Keypair.generate()) as b,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.request_circuit, b.local_peer_id)
            incoming = await b.accept_circuit()
        yield a.circuits[0], incoming
