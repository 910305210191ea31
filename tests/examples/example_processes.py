"""A standalone relay process (``python -m relay`` on 127.0.0.1, STUN on) and a helper that
runs a program against it, both bounded in time. PYTHONPATH puts this checkout first, so
the subprocesses run this tree's code whatever is installed."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start(args: list[str], **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=child_env(),
        **kwargs,
    )
    proc.pending = b""  # read but not yet returned by read_until
    return proc


def read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    """Lines of ``proc`` until one contains ``marker``; fails after ``timeout`` seconds.

    Reads the pipe unbuffered (os.read), so select() never misses lines that a
    buffered reader already holds."""
    seen = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while True:
            while b"\n" in proc.pending:
                raw, proc.pending = proc.pending.split(b"\n", 1)
                line = raw.decode(errors="replace")
                seen.append(line)
                if marker in line:
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                break
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            proc.pending += chunk
    output = "\n".join(seen)
    raise AssertionError(f"no {marker!r} within {timeout} s; output:\n{output}")


def stop(proc: subprocess.Popen) -> str:
    """Terminate (if still running) and return the rest of its output."""
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return (proc.pending + (out or b"")).decode(errors="replace")


def run(args: list[str], timeout: float = 60, cwd: Path | None = None) -> str:
    """Run to completion; assert exit status 0 and return stdout + stderr."""
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
        cwd=cwd,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{output}"
    return output


@dataclass
class RelayProcess:
    multiaddr: str
    stun_port: int
    process: subprocess.Popen


def start_relay(*extra: str) -> RelayProcess:
    proc = start(
        [
            "-m",
            "relay",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--stun-port",
            "0",
            "--metrics-port",
            "none",
            *extra,
        ]
    )
    try:
        ready = read_until(proc, "READY", 30)
    except BaseException:
        print(stop(proc))
        raise
    fields = dict(word.split("=", 1) for word in ready.split() if "=" in word)
    return RelayProcess(fields["multiaddr"], int(fields["stun"]), proc)
