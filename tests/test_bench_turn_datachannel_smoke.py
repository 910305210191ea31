"""benchmarks/bench_turn_datachannel.py still runs end to end (0.5 MB, one round)."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_bench_turn_datachannel_smoke() -> None:
    script = ROOT / "benchmarks" / "bench_turn_datachannel.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--megabytes", "0.5", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("darkswap-relay")]
    assert [r[2] for r in rows] == ["udp", "tcp"]
    assert all(float(r[3]) > 0 for r in rows)  # MB/s
