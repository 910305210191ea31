"""``darkswap-relay --workers 2``: two processes on one port, one cluster (issue #15).

SDK peers registering through the shared port land on both workers and signal and open
circuits across them; a killed worker is restarted by the parent and its peers register
again; SIGTERM stops everything with exit 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
from redis_helpers import RedisServer, running_redis
from test_cluster_processes import _drain

from darkswap_trio import Keypair, RelayAuthenticationError, RelaySession, open_relay_session
from darkswap_trio.proto.signaling import Offer
from relay.__main__ import main

pytestmark = pytest.mark.slow

PREFIX = "wtest:"


def test_workers_need_a_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--workers", "2", "--port", "0", "--check-config"]) == 2
    err = capsys.readouterr().err
    assert "cluster.workers = 2 needs a cluster" in err and "--cluster-redis" in err


class WorkersRelay:
    def __init__(self, process: trio.Process, fields: dict[str, str], redis: RedisServer) -> None:
        self.process = process
        self.fields = fields
        self.redis = redis
        self.stderr = bytearray()

    @property
    def multiaddr(self) -> str:
        return self.fields["multiaddr"]

    def worker_pid(self, index: int) -> int | None:
        """The pid of worker ``index`` (a child of the parent), from /proc."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.process.pid and f"--worker-index={index}".encode() in cmdline:
                return int(entry.name)
        return None

    async def metric(self, index: int, name: str) -> float:
        port = int(self.fields["worker_metrics"].split(",")[index])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            data = bytearray()
            await _drain(stream, data)
        for line in data.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in worker {index}'s /metrics")

    async def node_of(self, peer_id: str) -> str:
        """The node id holding ``peer_id``'s presence (``<node>|<epoch>`` in Redis)."""
        result = await trio.run_process(
            ["redis-cli", "-s", str(self.redis.socket), "GET", f"{PREFIX}peer:{peer_id}"],
            capture_stdout=True,
        )
        return result.stdout.decode().strip().split("|")[0]


@asynccontextmanager
async def workers_relay(
    redis: RedisServer, tmp_path: Path, *extra: str, toml: str = ""
) -> AsyncIterator[WorkersRelay]:
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[cluster]\nkey_prefix = "{PREFIX}"\nliveness_ttl = 3.0\nredis_timeout = 1.0\n' + toml
    )
    argv = [
        sys.executable, "-m", "relay", "--config", str(config), "--workers", "2",
        "--host", "127.0.0.1", "--port", "0", "--stun-port", "0", "--metrics-port", "0",
        "--cluster-redis", redis.url, "--node-id", "relay", "--shutdown-grace", "1", *extra,
    ]  # fmt: skip
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            partial(
                trio.run_process, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False
            )
        )
        stderr = bytearray()
        nursery.start_soon(_drain, process.stderr, stderr)
        buffer = b""
        with trio.fail_after(40):  # two interpreters start on a loaded 2-core machine
            while b"\n" not in buffer:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, f"relay exited: {stderr.decode(errors='replace')}"
                buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode()
        assert line.startswith("READY "), line
        relay = WorkersRelay(process, dict(i.split("=", 1) for i in line.split()[1:]), redis)
        relay.stderr = stderr
        try:
            yield relay
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(10):
                    await process.wait()
            nursery.cancel_scope.cancel()


async def _register(relay: WorkersRelay, keypair: Keypair, nursery: trio.Nursery) -> RelaySession:
    """A session for ``keypair`` through the shared port, retrying while its id is still
    held by a dead worker's presence; open until ``nursery`` ends."""
    ready: list[RelaySession] = []
    registered = trio.Event()

    async def hold() -> None:
        while True:
            try:
                async with open_relay_session(relay.multiaddr, keypair) as session:
                    ready.append(session)
                    registered.set()
                    await trio.sleep_forever()
            except RelayAuthenticationError as exc:
                assert exc.code == "peer_id_in_use", exc
                await trio.sleep(0.2)

    nursery.start_soon(hold)
    await registered.wait()
    return ready[0]


async def _signal_and_circuit(a: RelaySession, b: RelaySession, a_id: str, b_id: str) -> None:
    await a.send_signal(Offer(from_=a_id, to=b_id, sdp="v=0 across workers"))
    assert (await b.signals.receive()).sdp == "v=0 across workers"
    circuit = await a.request_circuit(b_id)
    incoming = await b.accept_circuit()
    await circuit.send(b"a to b" * 1000)
    got = b""
    while len(got) < 6000:
        got += await incoming.receive()
    assert got == b"a to b" * 1000
    await incoming.send(b"b to a")
    assert await circuit.receive() == b"b to a"


async def test_two_workers_share_the_port_restart_and_stop(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with running_redis() as redis, workers_relay(redis, tmp_path) as relay:
            assert relay.fields["workers"] == "2"
            peers = [Keypair.generate() for _ in range(12)]
            async with trio.open_nursery() as nursery:
                sessions = [await _register(relay, k, nursery) for k in peers]
                ids = [str(k.peer_id) for k in peers]
                nodes = [await relay.node_of(peer_id) for peer_id in ids]
                # The kernel spreads connections by hash: 12 all on one worker is a 1/2048
                # chance, then a few more settle it.
                while len(set(nodes)) < 2 and len(peers) < 40:
                    peers.append(Keypair.generate())
                    sessions.append(await _register(relay, peers[-1], nursery))
                    ids.append(str(peers[-1].peer_id))
                    nodes.append(await relay.node_of(ids[-1]))
                assert set(nodes) == {"relay-w0", "relay-w1"}, nodes
                counts = [await relay.metric(i, "darkswap_relay_cluster_peers") for i in (0, 1)]
                assert counts == [nodes.count("relay-w0"), nodes.count("relay-w1")], counts
                a = nodes.index("relay-w0")
                b = nodes.index("relay-w1")
                await _signal_and_circuit(sessions[a], sessions[b], ids[a], ids[b])

                # Kill worker 1: the parent restarts it; its peers register again.
                old = relay.worker_pid(1)
                assert old is not None and relay.worker_pid(0) is not None
                os.kill(old, signal.SIGKILL)
                lost = [i for i, node in enumerate(nodes) if node == "relay-w1"]
                with trio.fail_after(30):
                    while relay.worker_pid(1) in (None, old):
                        await trio.sleep(0.1)
                again = [await _register(relay, peers[i], nursery) for i in lost]
                kept = next(i for i, node in enumerate(nodes) if node == "relay-w0")
                for i, session in zip(lost, again, strict=True):
                    await _signal_and_circuit(sessions[kept], session, ids[kept], ids[i])
                # The new worker 1 serves /metrics on the same port (the parent picked it).
                with trio.fail_after(30):
                    while True:
                        try:
                            await relay.metric(1, "darkswap_relay_cluster_peers")
                            break
                        except OSError:
                            await trio.sleep(0.2)
                # ... and takes peers again, reachable from worker 0 through its new mesh port.
                for _ in range(40):
                    newcomer = Keypair.generate()
                    session = await _register(relay, newcomer, nursery)
                    if await relay.node_of(str(newcomer.peer_id)) == "relay-w1":
                        break
                else:
                    raise AssertionError("no registration reached the restarted worker 1")
                await _signal_and_circuit(sessions[kept], session, ids[kept], str(newcomer.peer_id))
                nursery.cancel_scope.cancel()

            relay.process.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                await relay.process.wait()
            assert relay.process.returncode == 0, relay.stderr.decode(errors="replace")
            assert relay.worker_pid(0) is None and relay.worker_pid(1) is None


async def _peers_on_both_workers(
    relay: WorkersRelay, nursery: trio.Nursery
) -> dict[str, tuple[RelaySession, str]]:
    """A registered SDK session on each worker: node id -> (session, its peer id)."""
    found: dict[str, tuple[RelaySession, str]] = {}
    for _ in range(40):  # the kernel spreads connections by hash
        keypair = Keypair.generate()
        session = await _register(relay, keypair, nursery)
        found.setdefault(await relay.node_of(str(keypair.peer_id)), (session, str(keypair.peer_id)))
        if len(found) == 2:
            return found
    raise AssertionError(f"40 registrations all reached {set(found)}")


async def test_sighup_to_the_parent_reloads_every_worker(tmp_path: Path) -> None:
    """SIGHUP to the parent reaches both workers, and each does what a single relay does
    on SIGHUP: re-read --config and apply the live settings (here a limit peers are
    told on registration), keeping its sessions, circuits and mesh links (over TLS)."""
    with trio.fail_after(120):
        async with (
            running_redis() as redis,
            workers_relay(
                redis, tmp_path, "--mesh-tls", toml="[limits]\nmax_circuits_per_peer = 16\n"
            ) as relay,
        ):
            pids = [relay.worker_pid(0), relay.worker_pid(1)]
            async with trio.open_nursery() as nursery:
                before = await _peers_on_both_workers(relay, nursery)
                assert set(before) == {"relay-w0", "relay-w1"}
                for session, _ in before.values():
                    assert session.server_limits["max_circuits_per_peer"] == 16
                (a, a_id), (b, b_id) = before["relay-w0"], before["relay-w1"]
                await _signal_and_circuit(a, b, a_id, b_id)  # across the TLS mesh

                config = tmp_path / "relay.toml"
                config.write_text(config.read_text().replace("= 16", "= 3"))
                relay.process.send_signal(signal.SIGHUP)
                with trio.fail_after(20):
                    while relay.stderr.count(b"reload applied: limits.max_circuits_per_peer") < 2:
                        await trio.sleep(0.05)
                assert b"reload ignored" not in relay.stderr  # a worker's settings are its own
                assert [relay.worker_pid(0), relay.worker_pid(1)] == pids  # reloaded, not restarted

                after = await _peers_on_both_workers(relay, nursery)
                for session, _ in after.values():
                    assert session.server_limits["max_circuits_per_peer"] == 3
                await _signal_and_circuit(a, b, a_id, b_id)  # the old sessions go on
                (c, c_id), (d, d_id) = after["relay-w0"], after["relay-w1"]
                await _signal_and_circuit(d, c, d_id, c_id)
                nursery.cancel_scope.cancel()
            assert relay.process.returncode is None


def test_worker_command_lines(tmp_path: Path) -> None:
    """Each worker: its node id, a private mesh port next to --advertise, its own
    /metrics port; the key and the mesh secret are shared files."""
    from relay._config import RelayConfig
    from relay._workers import apply_worker_slot, worker_commands

    config = RelayConfig(port=9002, metrics_port=9100)
    config.cluster.redis_url = "redis://127.0.0.1:6379"
    config.cluster.workers = 3
    config.cluster.node_id = "relay-a"
    config.cluster.advertise = "10.0.0.7:7000"
    commands = worker_commands(config, ["--workers", "3"], tmp_path)
    assert len(commands) == 3
    for i, command in enumerate(commands):
        assert command[-1] != "--workers" and "--workers=1" in command  # the last one wins
        assert f"--worker-index={i}" in command and f"--node-id=relay-a-w{i}" in command
        assert f"--advertise=10.0.0.7:{7000 + i}" in command
        assert f"--worker-mesh-port={7000 + i}" in command
        assert f"--metrics-port={9100 + i}" in command
        assert f"--key-file={tmp_path / 'relay.key'}" in command
        assert f"--mesh-secret-file={tmp_path / 'mesh.secret'}" in command
        assert "--stun-port=3478" in command  # served by worker 0, named by all in TURN URIs
    assert (tmp_path / "mesh.secret").stat().st_mode & 0o077 == 0
    apply_worker_slot(config, 1)
    assert config.cluster.workers == 1


def test_workers_other_than_0_issue_turn_credentials_for_worker_0(tmp_path: Path) -> None:
    from relay._config import RelayConfig
    from relay._worker_slot import WorkerSlot

    secret = tmp_path / "turn.secret"
    secret.write_text("a turn secret of the cluster")
    config = RelayConfig(host="127.0.0.1", stun_port=3478)
    config.turn.enabled, config.turn.secret_file = True, str(secret)
    multiaddr = f"/ip4/127.0.0.1/tcp/9002/ws/p2p/{Keypair.generate().peer_id}"
    issuer = WorkerSlot(1, 0).turn_issuer(config, multiaddr)
    assert issuer is not None and issuer.secret == b"a turn secret of the cluster"
    assert issuer.uris == (
        "turn:127.0.0.1:3478?transport=udp",
        "turn:127.0.0.1:3478?transport=tcp",
    )
    config.stun_port = 0  # only worker 0 would know the port: no credentials rather than wrong ones
    assert WorkerSlot(1, 0).turn_issuer(config, multiaddr) is None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_workers_stop_when_the_parent_is_killed(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with running_redis() as redis, workers_relay(redis, tmp_path) as relay:
            pids = [relay.worker_pid(0), relay.worker_pid(1)]
            assert None not in pids
            relay.process.send_signal(signal.SIGKILL)
            await relay.process.wait()
            with trio.fail_after(20):
                while any(_alive(pid) for pid in pids if pid is not None):
                    await trio.sleep(0.1)


async def test_every_worker_hands_out_turn_credentials_for_worker_0(tmp_path: Path) -> None:
    secret = tmp_path / "turn.secret"
    secret.write_text("a turn secret of the cluster")
    with trio.fail_after(60):
        async with (
            running_redis() as redis,
            workers_relay(redis, tmp_path, "--turn", "--turn-secret-file", str(secret)) as relay,
        ):
            port = relay.fields["stun"]
            nodes = set()
            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    keypair = Keypair.generate()
                    session = await _register(relay, keypair, nursery)
                    nodes.add(await relay.node_of(str(keypair.peer_id)))
                    credentials = await session.turn_credentials(timeout=5)
                    assert f"turn:127.0.0.1:{port}?transport=udp" in credentials.uris
                    if len(nodes) == 2:
                        break
                assert nodes == {"relay-w0", "relay-w1"}
                nursery.cancel_scope.cancel()
