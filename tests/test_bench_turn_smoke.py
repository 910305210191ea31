"""benchmarks/bench_turn.py still runs end to end (half a second per server and table,
loopback), both tables: raw ChannelData and the aiortc data channel."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_bench_turn_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_turn.py"), "--seconds", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("darkswap-relay")]
    assert len(rows) == 2, proc.stdout
    assert float(rows[0].split()[2]) > 0  # round trips/s
    assert float(rows[1].split()[2]) > 0  # aiortc data channel through TURN, MB/s
