"""``darkswap-relay --workers N``: N relay processes on one machine, one cluster.

```
run_workers(config, argv)               the parent: no sessions, only supervision
 ├─ signal forwarder                    SIGINT/SIGTERM/SIGHUP -> every worker
 └─ WorkerProcess.run  x N              spawn `python -m relay <argv> --worker-index i ...`,
                                        read its READY line, restart it when it dies
```

Every worker binds the signaling port with SO_REUSEPORT (the kernel spreads
connections over them) and is a node of the cluster (``<node_id>-w<i>``) reached by the
others on a private mesh port: ``--advertise HOST:PORT`` makes worker i listen on and
advertise PORT+i; without it, each binds any free port and advertises that. Workers
share the relay key (peers verify one relay PeerId) and the mesh secret (a private
temporary file when none is configured); each proves its own node key on mesh links.
STUN/TURN run on worker 0 only (TURN allocations are one process's state); /metrics
runs on every worker, on ``metrics_port + i`` (each its own free port for 0).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from darkswap_trio import load_or_create_keypair

from ._config import RelayConfig
from .cluster._config import split_advertise

logger = logging.getLogger("relay.workers")

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0
STABLE_AFTER = 30.0  # a worker up this long restarts with the first backoff again
STOP_MARGIN = 5.0  # past shutdown_grace, how long a stopping worker gets before SIGKILL


def _reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening SO_REUSEPORT socket: resolves port 0 for every worker
    and is never handed a connection (only listening sockets are)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
    sock.bind((host or "0.0.0.0", port))
    return sock


def _ready_fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


class WorkerProcess:
    """One worker slot: its process, restarted with backoff until the relay stops."""

    def __init__(self, index: int, command: list[str], stopping: trio.Event) -> None:
        self.index = index
        self.command = command
        self.ready: dict[str, str] | None = None  # fields of its last READY line
        self.first_ready = trio.Event()
        self.process: trio.Process | None = None
        self.exit_code: int | None = None
        self.restarts = 0
        self._stopping = stopping

    def send_signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signum)

    async def run(self, failed: trio.Event) -> None:
        backoff = FIRST_BACKOFF
        while True:
            started = trio.current_time()
            code = await self._run_once()
            self.exit_code = code
            if self._stopping.is_set():
                return
            if not self.first_ready.is_set():
                logger.error("worker %d exited %s before it was ready", self.index, code)
                failed.set()
                return
            if trio.current_time() - started > STABLE_AFTER:
                backoff = FIRST_BACKOFF
            logger.warning("worker %d exited %s; restarting in %.1f s", self.index, code, backoff)
            with trio.move_on_at(trio.current_time() + backoff):
                await self._stopping.wait()
            if self._stopping.is_set():
                return
            backoff = min(MAX_BACKOFF, backoff * 2)
            self.restarts += 1

    async def _run_once(self) -> int:
        # stdin: a pipe the parent never writes to; its end tells the worker the
        # parent is gone (exit_with_parent), even after a SIGKILL.
        process = await trio.lowlevel.open_process(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
        )
        self.process = process
        assert process.stdout is not None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_stdout, process.stdout)
                await process.wait()
        finally:
            if process.returncode is None:  # cancelled: never leave a worker behind
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
            if process.stdin is not None:
                await process.stdin.aclose()
        returncode = process.returncode
        assert returncode is not None  # waited for above
        return returncode

    async def _read_stdout(self, stream: trio.abc.ReceiveStream) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                text = line.decode("utf-8", "replace")
                if text.startswith("READY "):
                    self.ready = _ready_fields(text)
                    logger.info("worker %d ready (pid %d)", self.index, self.process_pid)
                    self.first_ready.set()

    @property
    def process_pid(self) -> int:
        return self.process.pid if self.process is not None else 0


def _metrics_port(config: RelayConfig, index: int) -> int:
    """``metrics_port + index``; for 0, a free port picked now, so that a restarted
    worker keeps its worker's port (the READY line lists them)."""
    assert config.metrics_port is not None
    if config.metrics_port:
        return config.metrics_port + index
    family = socket.AF_INET6 if ":" in config.metrics_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((config.metrics_host, 0))
        return int(sock.getsockname()[1])


def _free_udp_and_tcp_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(20):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host or "0.0.0.0", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host or "0.0.0.0", port))
                except OSError:
                    continue
                return port
    raise OSError("no port free for both UDP and TCP")


def worker_commands(config: RelayConfig, argv: list[str], private: Path) -> list[list[str]]:
    """The command line of each worker: the parent's, plus what makes each one a slot."""
    key_file = config.key_file or str(private / "relay.key")
    keypair = load_or_create_keypair(key_file)  # created now, shared by every worker
    secret_file = config.mesh.secret_file
    if not secret_file:
        path = private / "mesh.secret"
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
        secret_file = str(path)
    base_id = config.cluster.node_id or str(keypair.peer_id)
    advertise = None
    if config.cluster.advertise is not None:
        advertise = split_advertise(config.cluster.advertise, ValueError)
    stun_port = config.stun_port
    if stun_port == 0:  # picked now: workers other than 0 name it in TURN credentials
        stun_port = _free_udp_and_tcp_port(config.host)
    commands = []
    for i in range(config.cluster.workers):
        extra = [
            "--workers=1",
            f"--worker-index={i}",
            f"--port={config.port}",
            f"--key-file={key_file}",
            f"--mesh-secret-file={secret_file}",
            f"--node-id={base_id}-w{i}",
        ]
        if config.metrics_port is not None:
            extra.append(f"--metrics-port={_metrics_port(config, i)}")
        if stun_port is not None:
            extra.append(f"--stun-port={stun_port}")
        if advertise is not None:
            host, port = advertise
            host = f"[{host}]" if ":" in host else host
            extra += [f"--advertise={host}:{port + i}", f"--worker-mesh-port={port + i}"]
        commands.append([sys.executable, "-m", "relay", *argv, *extra])
    return commands


async def run_workers(config: RelayConfig, argv: list[str]) -> int:
    """Run ``config.cluster.workers`` worker processes until SIGINT/SIGTERM; the exit
    code: 0 after a clean stop, 1 when a worker could not start or a stop was forced."""
    private = Path(tempfile.mkdtemp(prefix="darkswap-relay-"))  # 0700: key and secret
    reserved = None
    try:
        if config.port == 0:
            reserved = _reserve_port(config.host, 0)
            config.port = reserved.getsockname()[1]
        stopping = trio.Event()
        workers = [
            WorkerProcess(i, command, stopping)
            for i, command in enumerate(worker_commands(config, argv, private))
        ]
        return await _supervise(config, workers, stopping)
    finally:
        if reserved is not None:
            reserved.close()
        shutil.rmtree(private, ignore_errors=True)


async def _supervise(
    config: RelayConfig, workers: list[WorkerProcess], stopping: trio.Event
) -> int:
    failed = trio.Event()
    forced = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def run_all() -> None:
                async with trio.open_nursery() as inner:
                    for worker in workers:
                        inner.start_soon(worker.run, failed)
                nursery.cancel_scope.cancel()  # every worker is done

            async def stop_on_failure() -> None:
                await failed.wait()
                stop(signal.SIGTERM)

            def stop(signum: int) -> None:
                stopping.set()
                for worker in workers:
                    worker.send_signal(signum)
                nursery.cancel_scope.deadline = min(
                    nursery.cancel_scope.deadline,
                    trio.current_time() + config.shutdown_grace + STOP_MARGIN,
                )

            nursery.start_soon(run_all)
            nursery.start_soon(stop_on_failure)
            nursery.start_soon(_announce_when_ready, workers, failed)
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    logger.info("SIGHUP: reloading every worker")
                    for worker in workers:
                        worker.send_signal(signum)
                elif not stopping.is_set():
                    logger.info("shutting down %d workers", len(workers), extra={"signal": name})
                    stop(signum)
                else:
                    logger.warning("second signal: aborting the workers", extra={"signal": name})
                    forced = True
                    for worker in workers:
                        worker.send_signal(signum)
    if failed.is_set():
        return 1
    codes = [worker.exit_code for worker in workers]
    return 1 if forced or any(code != 0 for code in codes) else 0


async def _announce_when_ready(workers: list[WorkerProcess], failed: trio.Event) -> None:
    for worker in workers:
        await worker.first_ready.wait()
    if failed.is_set():
        return
    first: dict[str, Any] = workers[0].ready or {}
    metrics = ",".join((w.ready or {}).get("metrics", "none") for w in workers)
    sys.stdout.write(
        f"READY signaling={first.get('signaling')} stun={first.get('stun')} "
        f"metrics={first.get('metrics')} peer_id={first.get('peer_id')} "
        f"multiaddr={first.get('multiaddr')} workers={len(workers)} "
        f"worker_metrics={metrics}\n"
    )
    sys.stdout.flush()
    logger.info("relay ready with %d workers", len(workers))


def apply_worker_slot(config: RelayConfig, index: int) -> None:
    """A worker's configuration: its parent's, as one process. (Its ports are on its
    command line; serve_relay runs STUN/TURN on worker 0 only.)"""
    del index
    config.cluster.workers = 1


async def exit_with_parent() -> None:
    """In a worker: stop gracefully (SIGTERM to itself) once stdin, the parent's pipe,
    ends: a parent killed with SIGKILL leaves no workers behind."""
    async with trio.lowlevel.FdStream(os.dup(0)) as stream:
        while await stream.receive_some(4096):
            pass
    logger.warning("the --workers parent is gone: stopping")
    os.kill(os.getpid(), signal.SIGTERM)
