"""Figures for issue #10 items 1 and 5 (SDK side); run with PYTHONPATH set to the tree
under test, e.g. ``PYTHONPATH=$PWD python benchmarks/sdk_abuse_figures.py starve manager 45``.

starve manager|network SECONDS: a circuit sender with unlimited credit (16 MB window)
  through a 2 MB/s throttled uplink (the loopback proxy of
  tests/sdk/test_relay_session_abuse.py), ping_interval 5 s: does the owner survive?
unsolicited: a throwaway identity opens 5 silent circuits to a P2PNetwork
  (relay_circuit_idle_timeout=2, max_unclaimed_relay_circuits=2 where those exist).
"""

import pathlib
import sys

import trio

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "sdk"))
from test_relay_session_abuse import BIG_WINDOW, LOOPBACK, drain_incoming, hammer, throttled_uplink  # noqa: E402

from darkswap_trio import (  # noqa: E402
    Config,
    Keypair,
    P2PConfig,
    P2PNetwork,
    RelayManager,
    RelayManagerConfig,
    open_relay_session,
)
from darkswap_trio.testing import running_relay  # noqa: E402


async def starve(mode: str, run: float) -> None:
    t0 = trio.current_time()
    cfg = RelayManagerConfig(ping_interval=5.0)
    async with (
        running_relay(**BIG_WINDOW) as relay,
        throttled_uplink(relay, 2_000_000) as slow,
        open_relay_session(relay.multiaddr, Keypair.generate()) as friend,
    ):
        if mode == "manager":
            owner = RelayManager(Keypair.generate(), [slow], cfg)
            manager = owner
        else:
            owner = P2PNetwork(
                Config(p2p=P2PConfig(relay_servers=[slow], enable_direct=False), relay_manager=cfg),
                peer_connection_config=LOOPBACK,
            )
            manager = owner.relay_manager
        try:
            async with owner, trio.open_nursery() as nursery:
                await manager.wait_connected(timeout=10)
                nursery.start_soon(drain_incoming, friend, nursery)
                circuit = await manager.open_circuit(friend.local_peer_id)
                nursery.start_soon(hammer, circuit)
                session = manager.servers[0].session
                pongs, last = 0, session.last_pong
                with trio.move_on_after(run):
                    while True:
                        await trio.sleep(0.25)
                        current = manager.servers[0].session
                        if current is not None and current.last_pong != last:
                            pongs, last = pongs + 1, current.last_pong
                print(
                    f"{mode}: alive after {run:.0f}s, same session={manager.servers[0].session is session}, "
                    f"status={manager.servers[0].status.value}, pongs={pongs}, "
                    f"sent {circuit.bytes_sent / 1e6:.1f} MB ({circuit.bytes_sent / 1e6 / run:.2f} MB/s)"
                )
                nursery.cancel_scope.cancel()
        except Exception as exc:
            print(f"{mode}: raised at {trio.current_time() - t0:.1f}s: {exc!r}")


async def unsolicited() -> None:
    has_policy = "accept_relay_circuits" in P2PConfig.__dataclass_fields__
    extra = (
        dict(relay_circuit_idle_timeout=2.0, max_unclaimed_relay_circuits=2) if has_policy else {}
    )
    async with running_relay() as relay:
        cfg = Config(
            p2p=P2PConfig(relay_servers=[relay.multiaddr], enable_direct=False, **extra),
            relay_manager=RelayManagerConfig(ping_interval=1),
        )
        async with (
            P2PNetwork(cfg) as victim,
            open_relay_session(relay.multiaddr, Keypair.generate()) as attacker,
        ):
            await victim.wait_relay_connected()
            t0 = trio.current_time()
            results: list = []
            for i in range(5):
                try:
                    results.append(await attacker.request_circuit(victim.local_peer_id))
                except Exception as exc:
                    results.append(f"#{i} refused by relay ({getattr(exc, 'code', exc)})")

            async def watch(i, circuit):
                with trio.move_on_after(8):
                    try:
                        await circuit.receive()
                    except (trio.EndOfChannel, trio.BrokenResourceError):
                        pass
                    results[i] = f"#{i} closed after {trio.current_time() - t0:.1f}s"
                    return
                results[i] = f"#{i} still open after 8s"

            async with trio.open_nursery() as nursery:
                for i, circuit in enumerate(list(results)):
                    if not isinstance(circuit, str):
                        nursery.start_soon(watch, i, circuit)
            print("; ".join(results))


if __name__ == "__main__":
    if sys.argv[1] == "starve":
        trio.run(starve, sys.argv[2], float(sys.argv[3]))
    else:
        trio.run(unsolicited)
