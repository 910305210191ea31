"""A server that accepts links and echoes whatever they send.

    python examples/echo_server.py RELAY_MULTIADDR [SECONDS]

It prints its PeerId; try it with ``darkswap-peer ping PEER_ID --relay RELAY_MULTIADDR``.
Each link gets its own task in the server's nursery, so one slow client does not hold
up the others. Stops after SECONDS (default: runs until Ctrl-C).
"""

import sys

import trio

from darkswap_trio import P2PConfig, P2PNetwork, PeerLink
from darkswap_trio.webrtc import PeerConnectionConfig

LOOPBACK = PeerConnectionConfig(host_addresses=["127.0.0.1"], include_loopback=True)


async def echo(link: PeerLink) -> None:
    print(f"link from {link.peer_id} via {link.connection_type}", flush=True)
    async for message in link:
        await link.send(message)
    print(f"link from {link.peer_id} closed", flush=True)


async def main(relay: str, seconds: float) -> None:
    async with P2PNetwork(
        P2PConfig(relay_servers=[relay]), peer_connection_config=LOOPBACK
    ) as network:
        await network.wait_relay_connected(timeout=10)
        print(f"echo server {network.local_peer_id}", flush=True)
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                while True:
                    nursery.start_soon(echo, await network.accept_peer())


if __name__ == "__main__":
    trio.run(main, sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else float("inf"))
