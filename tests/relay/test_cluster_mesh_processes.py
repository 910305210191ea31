"""Three `python -m relay` nodes as processes, meshed through a static directory: SDK
peers on different nodes open circuits; kill -9 of one node ends only the circuits
through it (``node_lost`` at the surviving ends), the others carry on."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from contextlib import AsyncExitStack
from functools import partial

import trio
from test_cluster_mesh_sdk import FAST, drain, exchange, open_pair

from darkswap_trio import Keypair, RelayManager, load_or_create_keypair

RELAY = [sys.executable, "-m", "relay"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_node(nursery: trio.Nursery, argv: list[str]) -> tuple[trio.Process, str]:
    process = await nursery.start(
        partial(
            trio.run_process,
            [*RELAY, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    )
    line = b""
    while not line.endswith(b"\n"):
        chunk = await process.stdout.receive_some(1)
        assert chunk, "relay exited before READY"
        line += chunk
    ready = dict(item.split("=", 1) for item in line.decode().split()[1:])
    return process, ready["multiaddr"]


async def test_kill_9_a_node_mid_circuit(tmp_path):
    secret = tmp_path / "mesh.secret"
    secret.write_bytes(b"process cluster secret")
    peers = [Keypair.generate() for _ in range(3)]
    nodes = []
    for i in range(3):
        key_file = tmp_path / f"node{i}.key"
        node_key = load_or_create_keypair(str(key_file))
        nodes.append((f"node{i}", free_port(), str(key_file), str(node_key.peer_id)))
    directory = tmp_path / "directory.json"
    directory.write_text(
        json.dumps(
            {
                "nodes": [
                    {"node_id": n, "advertise": f"127.0.0.1:{p}", "node_peer_id": pid}
                    for n, p, _, pid in nodes
                ],
                "peers": {str(k.peer_id): f"node{i}" for i, k in enumerate(peers)},
            }
        )
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            processes, addresses = [], []
            for _, port, key_file, _ in nodes:
                process, multiaddr = await start_node(
                    nursery,
                    [
                        "--host", "127.0.0.1", "--port", str(port), "--stun-port", "none",
                        "--metrics-port", "none", "--key-file", key_file,
                        "--mesh-secret-file", str(secret),
                        "--mesh-static-directory", str(directory),
                    ],
                )  # fmt: skip
                processes.append(process)
                addresses.append(multiaddr)
            managers = []
            for keypair, address in zip(peers, addresses, strict=True):
                manager = RelayManager(keypair, [address], FAST, deliver_incoming=False)
                await stack.enter_async_context(manager)
                await manager.wait_connected(timeout=10)
                managers.append(manager)
            a, b, c = managers
            ab, ba = await open_pair(a, b)
            ac, ca = await open_pair(a, c)
            bc, cb = await open_pair(b, c)
            for x, y in ((ab, ba), (ac, ca), (bc, cb)):
                await exchange(x, y, 512 * 1024)

            processes[2].send_signal(signal.SIGKILL)  # node2 dies mid-circuit
            for circuit in (ac, bc):
                await drain(circuit)
                assert circuit.close_reason == "node_lost"
            for circuit in (ca, cb):
                await drain(circuit)
                assert circuit.close_reason is not None
            await exchange(ab, ba, 512 * 1024)  # node0 <-> node1 untouched
            for process in processes[:2]:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                await process.wait()
            assert [p.returncode for p in processes[:2]] == [0, 0]
