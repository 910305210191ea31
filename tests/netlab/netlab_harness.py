"""What the NAT lab's tests share: the peer subprocess driver and the measured rows.

(``conftest.py`` holds the fixtures; this module has a unique name so that test files
can import it whatever other ``conftest`` modules the run has loaded.)
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from netlab_topology import RELAY_IP, Lab, Site, netns_argv

REPO = Path(__file__).resolve().parents[2]
PEER_SCRIPT = Path(__file__).with_name("netlab_peer.py")
STUN_PORT = 3478
SIGNALING_PORT = 9002
# Measured cells, printed as a table at the end of the run (see pytest_terminal_summary).
RESULTS: list[dict] = []


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class RelayProcess:
    """The real relay (``python -m relay``) in the lab's internet namespace.

    Its identity lives in ``key_file``, so a relay killed and started again is the same
    relay (same PeerId, same multiaddr, same port) to the peers that reconnect to it.
    """

    def __init__(self, lab: Lab, key_file: Path, log: Path) -> None:
        self.lab = lab
        self.key_file = key_file
        self.log = log
        self.process: subprocess.Popen | None = None
        self.multiaddr = ""

    def start(self) -> str:
        """Start the relay and wait for its READY line; returns that line."""
        with open(self.log, "ab") as stderr:
            self.process = subprocess.Popen(
                netns_argv(
                    self.lab.inet_ns,
                    sys.executable,
                    "-m",
                    "relay",
                    "--host",
                    RELAY_IP,
                    "--port",
                    str(SIGNALING_PORT),
                    "--stun-port",
                    str(STUN_PORT),
                    "--metrics-port",
                    "none",
                    "--log-level",
                    "WARNING",
                    "--key-file",
                    str(self.key_file),
                ),
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=subprocess_env(),
                cwd=REPO,
            )
        ready = read_line(self.process.stdout, timeout=30)
        if not ready.startswith("READY"):
            raise RuntimeError(f"relay did not start: {ready!r}; {self.log.read_text()[-2000:]}")
        fields = dict(part.split("=", 1) for part in ready.split()[1:])
        self.multiaddr = fields["multiaddr"]
        return ready

    def kill(self) -> None:
        """SIGKILL: no shutdown grace, the kernel closes its sockets (as when it crashes)."""
        # ``ip netns exec`` execs the command, so this pid is the relay's Python itself.
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process.stdout.close()

    def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


@dataclass
class Internet:
    lab: Lab
    relay_multiaddr: str
    stun: str
    relay: RelayProcess | None = None


def read_line(stream, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([stream], [], [], remaining)[0]:
            raise TimeoutError(f"no line within {timeout} s (got {line!r})")
        byte = os.read(stream.fileno(), 1)
        if not byte:
            break
        line += byte
    return line.decode().strip()


class LabPeer:
    """A netlab_peer.py subprocess in a host namespace, and the JSON lines it printed."""

    def __init__(self, site: Site, process: trio.Process, stderr_path: Path) -> None:
        self.site = site
        self.process = process
        self.stderr_path = stderr_path
        self.lines: list[dict] = []
        self._changed = trio.Event()
        self.peer_id: str | None = None

    async def read_lines(self) -> None:
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self.lines.append(json.loads(line))
                self._changed.set()
                self._changed = trio.Event()
        self._changed.set()

    async def wait_changed(self) -> None:
        """Until the peer prints another line (or its output ends)."""
        await self._changed.wait()

    async def command(self, cmd: str, **fields) -> None:
        await self.process.stdin.send_all(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")

    def find(self, ev: str, since: int = 0, **match) -> dict | None:
        for line in self.lines[since:]:
            if line["ev"] == ev and all(line.get(k) == v for k, v in match.items()):
                return line
        return None

    def find_log(self, text: str) -> dict | None:
        for line in self.lines:
            if line["ev"] == "log" and text in line["msg"]:
                return line
        return None

    async def wait_log(self, text: str, timeout: float) -> dict | None:
        """The first SDK log line containing ``text``, or None after ``timeout``."""
        with trio.move_on_after(timeout):
            while (found := self.find_log(text)) is None:
                await self._changed.wait()
            return found
        return None

    async def wait(self, ev: str, timeout: float, since: int = 0, **match) -> dict:
        """The first ``ev`` line (matching ``match``) printed; TooSlowError after timeout."""
        try:
            with trio.fail_after(timeout):
                while (found := self.find(ev, since, **match)) is None:
                    if self.process.returncode is not None and self.process.stdout is None:
                        break
                    await self._changed.wait()
        except trio.TooSlowError:
            raise AssertionError(
                f"{self.site.name}: no {ev!r} {match or ''} within {timeout} s; last lines: "
                f"{self.lines[-8:]}; stderr: {self.stderr_tail()}"
            ) from None
        return found

    async def stats(self) -> dict:
        since = len(self.lines)
        await self.command("stats")
        return await self.wait("stats", 10, since=since)

    def stderr_tail(self) -> str:
        try:
            return self.stderr_path.read_text()[-1500:]
        except OSError:
            return ""


def print_trace(peers: list[LabPeer]) -> None:
    """Every peer's lines merged by time (NETLAB_TRACE=1 pytest -s ...)."""
    merged = sorted(
        (line["t"], index, line) for index, peer in enumerate(peers) for line in peer.lines
    )
    start = merged[0][0] if merged else 0.0
    for t, index, line in merged:
        fields = {k: v for k, v in line.items() if k not in ("t", "ev")}
        print(f"{(t - start) * 1000:9.1f} ms  peer{index} {line['ev']} {fields}")
    for index, peer in enumerate(peers):
        print(f"peer{index} stderr: {peer.stderr_tail()}")


@asynccontextmanager
async def lab_peers(
    internet: Internet,
    sites: list[Site],
    tmp_path: Path,
    per_peer: list[dict] | None = None,
    **options,
):
    """One peer process per site, ready (registered with the relay); killed on exit.

    ``options`` go to every peer's netlab_peer.py, ``per_peer[i]`` to the i-th only
    (``name=value`` becomes ``--name value``; ``name=True`` the flag ``--name``).
    """
    peers: list[LabPeer] = []
    async with trio.open_nursery() as nursery:
        try:
            for index, site in enumerate(sites):
                stderr_path = tmp_path / f"{site.host_ns}.stderr"
                argv = netns_argv(
                    site.host_ns,
                    sys.executable,
                    str(PEER_SCRIPT),
                    "--relay",
                    internet.relay_multiaddr,
                    "--stun",
                    internet.stun,
                    "--host",
                    site.host_ip,
                )
                if os.environ.get("NETLAB_TRACE"):
                    argv.append("--trace")
                mine = {**options, **(per_peer[index] if per_peer else {})}
                for key, value in mine.items():
                    flag = f"--{key.replace('_', '-')}"
                    argv += [flag] if value is True else [flag, str(value)]
                with open(stderr_path, "wb") as stderr:
                    process = await trio.lowlevel.open_process(
                        argv,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=stderr,
                        env=subprocess_env(),
                        cwd=REPO,
                    )
                peer = LabPeer(site, process, stderr_path)
                peers.append(peer)
                nursery.start_soon(peer.read_lines)
            for peer in peers:
                peer.peer_id = (await peer.wait("ready", 30))["peer_id"]
            yield peers
        finally:
            if os.environ.get("NETLAB_TRACE"):
                print_trace(peers)
            with trio.CancelScope(shield=True):
                for peer in peers:
                    if peer.process.returncode is None:
                        try:
                            await peer.command("quit")
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
                with trio.move_on_after(5):
                    for peer in peers:
                        await peer.process.wait()
                for peer in peers:
                    if peer.process.returncode is None:
                        peer.process.kill()
                        await peer.process.wait()
            nursery.cancel_scope.cancel()
