"""Self-contained demo: a relay on free loopback ports and two peers talking through it.

Run with ``python -m darkswap_trio.demo`` (the README's main command does this). It
needs no network beyond loopback and prints what happened: the path, relay latency,
round-trip times and bytes moved.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import trio

from . import Config, DataReceived, P2PConfig, P2PNetwork, PeerConnected, RelayManagerConfig


async def run_demo(messages: int = 20, size: int = 1024) -> dict[str, float]:
    from relay import AuthConfig, RelayConfig, serve_relay

    config = RelayConfig(host="127.0.0.1", port=0, stun_port=0, metrics_port=0,
                         auth=AuthConfig(mode="signature"))
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_relay, config)
        print(f"relay    {server.multiaddr}")
        print(f"         STUN udp/{server.stun_port}, metrics http://127.0.0.1:{server.metrics_port}/metrics")
        peer_config = Config(p2p=P2PConfig(relay_servers=[server.multiaddr]),
                             relay_manager=RelayManagerConfig(ping_interval=5))
        async with P2PNetwork(peer_config) as alice, P2PNetwork(peer_config) as bob:
            print(f"alice    {alice.local_peer_id}")
            print(f"bob      {bob.local_peer_id}")
            await alice.wait_relay_connected()
            await bob.wait_relay_connected()
            relay_latency = alice.relay_manager.servers[0].latency_ms or 0.0
            started = trio.current_time()
            relay_id = await alice.connect_via_relay(bob.local_peer_id)
            open_ms = (trio.current_time() - started) * 1000
            print(f"circuit  {relay_id} opened in {open_ms:.1f} ms (path: relay)")

            async def bob_echoes() -> None:
                async for event in bob.events:
                    if isinstance(event, PeerConnected):
                        print(f"bob      sees {event.peer_id[:16]}… connected via {event.connection_type}")
                    elif isinstance(event, DataReceived):
                        await bob.send_via_relay(event.from_, event.relay_id, event.data)

            nursery.start_soon(bob_echoes)
            rtts = []
            payload = b"x" * size
            for _ in range(messages):
                sent = trio.current_time()
                await alice.send_via_relay(bob.local_peer_id, relay_id, payload)
                while True:
                    event = await alice.events.receive()
                    if isinstance(event, DataReceived) and event.relay_id == relay_id:
                        assert event.data == payload
                        break
                rtts.append((trio.current_time() - sent) * 1000)
            stats = alice.relay_manager.circuit(relay_id).statistics()
            await alice.close_relay(relay_id)
            result = {
                "relay_latency_ms": relay_latency,
                "circuit_open_ms": open_ms,
                "rtt_p50_ms": statistics.median(rtts),
                "bytes_sent": stats.bytes_sent,
                "bytes_received": stats.bytes_received,
            }
            print(f"exchange {messages} echoes of {size} B: rtt p50 {result['rtt_p50_ms']:.2f} ms, "
                  f"max {max(rtts):.2f} ms")
            print(f"bytes    alice sent {stats.bytes_sent}, received {stats.bytes_received}")
            print(f"relay    ping latency {relay_latency:.2f} ms")
        await server.shutdown(1.0)
        nursery.cancel_scope.cancel()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20, help="echo round trips (default 20)")
    parser.add_argument("--size", type=int, default=1024, help="bytes per message (default 1024)")
    args = parser.parse_args(argv)
    trio.run(run_demo, args.messages, args.size)
    print("demo     done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
