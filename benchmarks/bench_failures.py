"""How fast failures surface (issue #8): time from the call to its exception, loopback.

Run: python benchmarks/bench_failures.py [--runs N]

Each row is the median (and max) over N runs of one failure, measured around the
public call that reports it, against a real in-process relay on 127.0.0.1:

- connect_to_peer(<valid PeerId nobody registered>): PeerUnreachable(unknown_peer),
  with both paths, relay only, direct only. The direct timeout is the default 30 s,
  so the ratio to it is what the fix is worth.
- wait_relay_connected() when the only relay cannot succeed: a wrong /p2p/ PeerId, a
  relay demanding a JWT we lack, an untrusted TLS certificate (default manager config:
  these are refused for good, so no backoff applies), and a closed port with
  max_reconnect_attempts=0 (a closed port is transient: it is retried with backoff,
  max_reconnect_attempts times, before it counts as failed).
"""

from __future__ import annotations

import argparse
import logging
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darkswap_trio import Config, Keypair, P2PConfig, P2PNetwork, RelayManagerConfig  # noqa: E402
from darkswap_trio._p2p._network import PeerUnreachable  # noqa: E402
from darkswap_trio._relay_client._manager import NoRelayAvailable  # noqa: E402
from darkswap_trio.testing import running_relay  # noqa: E402
from darkswap_trio.webrtc import PeerConnectionConfig  # noqa: E402

LOOPBACK = PeerConnectionConfig(host_addresses=["127.0.0.1"], include_loopback=True)
DIRECT_TIMEOUT = P2PConfig().direct_connect_timeout
# N runs connect N times within a second: past the relay's per-IP connection burst
# (20), which would answer with a transient rate-limit refusal and its 5 s backoff.
UNLIMITED = {"connections_per_ip_rate": 0.0}


def network(
    relays: list[str], manager: RelayManagerConfig | None = None, **p2p: object
) -> P2PNetwork:
    config = Config(
        p2p=P2PConfig(relay_servers=relays, **p2p), relay_manager=manager or RelayManagerConfig()
    )
    return P2PNetwork(config, peer_connection_config=LOOPBACK)


async def timed(call: Callable[[], Awaitable[object]], expected: type[BaseException]) -> float:
    started = time.perf_counter()
    try:
        await call()
    except expected:
        return time.perf_counter() - started
    raise AssertionError(f"{call} did not raise {expected.__name__}")


async def unknown_peer(relay: object, runs: int, **paths: object) -> list[float]:
    samples = []
    async with network([relay.multiaddr], **paths) as net:
        await net.wait_relay_connected()
        for _ in range(runs):
            stranger = Keypair.generate().peer_id
            samples.append(
                await timed(lambda peer=stranger: net.connect_to_peer(peer), PeerUnreachable)
            )
    return samples


async def relay_fails(
    address: str, runs: int, manager: RelayManagerConfig | None = None
) -> list[float]:
    samples = []
    for _ in range(runs):
        async with network([address], manager) as net:
            samples.append(await timed(net.wait_relay_connected, NoRelayAvailable))
    return samples


async def main(runs: int) -> None:
    from darkswap_trio.testing._tls import SelfSignedCertificate
    from relay import AuthConfig, LimitsConfig, RelayConfig, serve_relay
    from relay._auth import generate_jwt_keypair

    rows: list[tuple[str, list[float]]] = []
    with trio.fail_after(600):
        async with running_relay(**UNLIMITED) as relay:
            rows.append(("connect_to_peer(unknown), both paths", await unknown_peer(relay, runs)))
            rows.append(
                (
                    "connect_to_peer(unknown), relay only",
                    await unknown_peer(relay, runs, enable_direct=False),
                )
            )
            rows.append(
                (
                    "connect_to_peer(unknown), direct only",
                    await unknown_peer(relay, runs, enable_relay=False),
                )
            )
            impostor = relay.multiaddr.rsplit("/p2p/", 1)[0] + f"/p2p/{Keypair.generate().peer_id}"
            rows.append(("wait_relay_connected: wrong /p2p/ id", await relay_fails(impostor, runs)))
        _, public_pem = generate_jwt_keypair("EdDSA")
        async with running_relay(auth="jwt", jwt_key=public_pem, **UNLIMITED) as relay:
            rows.append(
                ("wait_relay_connected: JWT required", await relay_fails(relay.multiaddr, runs))
            )
        with tempfile.TemporaryDirectory() as directory:
            cert, key = SelfSignedCertificate.generate().write(directory)
            config = RelayConfig(
                host="127.0.0.1",
                port=0,
                stun_port=None,
                metrics_port=None,
                auth=AuthConfig(mode="signature"),
                tls_cert=cert,
                tls_key=key,
                limits=LimitsConfig(**UNLIMITED),
            )
            async with trio.open_nursery() as nursery:
                server = await nursery.start(serve_relay, config)
                rows.append(
                    (
                        "wait_relay_connected: untrusted TLS cert",
                        await relay_fails(server.multiaddr, runs),
                    )
                )
                await server.shutdown(0.5)
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            down = (
                f"/ip4/127.0.0.1/tcp/{unused.getsockname()[1]}/ws/p2p/{Keypair.generate().peer_id}"
            )
            rows.append(
                (
                    "wait_relay_connected: closed port, 0 retries",
                    await relay_fails(down, runs, RelayManagerConfig(max_reconnect_attempts=0)),
                )
            )
    print(
        f"{runs} runs each, loopback; the direct timeout these would otherwise wait for: "
        f"{DIRECT_TIMEOUT:g} s (connect_to_peer) / forever (wait_relay_connected)\n"
    )
    print("| Failure | median ms | max ms | median / direct timeout |")
    print("|---|---:|---:|---:|")
    for name, samples in rows:
        median = statistics.median(samples)
        print(
            f"| {name} | {median * 1000:.1f} | {max(samples) * 1000:.1f} | {median / DIRECT_TIMEOUT:.5f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    logging.basicConfig(level=logging.ERROR)  # the failures' own WARNING lines are expected
    trio.run(main, parser.parse_args().runs)
