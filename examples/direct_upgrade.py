"""A direct-first link with the upgrade visible.

    python examples/direct_upgrade.py RELAY_MULTIADDR

Two peers in one process. ``connect_to_peer`` races the relay circuit against a direct
WebRTC data channel; ``direct_delay`` gives the relay a head start so the link opens on
the relay and you can watch it move to direct (``ConnectionUpgraded``) while messages
keep flowing, none lost or reordered. Host candidates are pinned to 127.0.0.1: on a
real network leave ``host_addresses`` out (every interface) and add a STUN server.
"""

import sys

import trio

from darkswap_trio import ConnectionUpgraded, P2PConfig, P2PNetwork
from darkswap_trio.webrtc import PeerConnectionConfig

LOOPBACK = PeerConnectionConfig(host_addresses=["127.0.0.1"], include_loopback=True)


async def main(relay: str) -> None:
    config = P2PConfig(relay_servers=[relay], direct_delay=0.2)
    async with (
        P2PNetwork(config, peer_connection_config=LOOPBACK) as alice,
        P2PNetwork(config, peer_connection_config=LOOPBACK) as bob,
    ):
        await alice.wait_relay_connected(timeout=10)
        await bob.wait_relay_connected(timeout=10)
        started = trio.current_time()
        link = await alice.connect_to_peer(bob.local_peer_id)
        incoming = await bob.accept_peer()
        print(
            f"link opened via {link.connection_type} "
            f"in {(trio.current_time() - started) * 1000:.1f} ms"
        )

        async def send_until_direct() -> None:
            n = 0
            while link.connection_type == "relay":  # messages keep flowing across the switch
                await link.send(b"message %d" % n)
                assert await incoming.receive() == b"message %d" % n
                n += 1
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_until_direct)
            if link.connection_type == "relay":
                async for event in alice.events:
                    if isinstance(event, ConnectionUpgraded):
                        elapsed = (trio.current_time() - started) * 1000
                        print(f"ConnectionUpgraded after {elapsed:.1f} ms")
                        break
        metrics = link.metrics()
        print(
            f"now {link.connection_type}: {metrics.messages_sent} messages, "
            f"{metrics.relay_bytes_sent} bytes by relay, {metrics.direct_bytes_sent} direct"
        )
        await link.send(b"on the direct path")
        print(
            f"bob received {(await incoming.receive()).decode()!r} via {incoming.connection_type}"
        )


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
