"""Helpers shared by the benchmark scripts: child processes' JSON lines, a CPU hog, the
load average and the figures' formatting."""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import sys
import time


class JsonLines:
    """Read JSON lines from a child's stdout with a deadline (no thread, no busy wait)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.buffer = b""

    def read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from {self.proc.args[1:3]} in {timeout}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.proc.args[1:3]} exited ({self.proc.wait()})")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


def start_hog(cpu: int) -> subprocess.Popen:
    code = f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return (
        f"{fmt.format(statistics.median(values))} "
        f"[{fmt.format(min(values))}-{fmt.format(max(values))}]"
    )


def mean_spread(values: list[float], fmt: str) -> str:
    """Mean (= the aggregate over equal runs: CPU ticks are coarse) [min-max]."""
    return (
        f"{fmt.format(statistics.fmean(values))} "
        f"[{fmt.format(min(values))}-{fmt.format(max(values))}]"
    )


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "n/a"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
