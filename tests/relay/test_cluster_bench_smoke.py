"""benchmarks/bench_cluster_signaling.py and bench_workers.py still run end to end (tiny,
loopback, bounded)."""

import pathlib
import subprocess
import sys

from redis_helpers import require_redis

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_cluster_signaling.py"


def test_bench_cluster_signaling_smoke() -> None:
    require_redis()
    argv = [sys.executable, str(BENCH), "--rounds", "1", "--exchanges", "5", "--registrations", "3"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("single relay", "one node", "two nodes", "cluster node", "load average"):
        assert row in proc.stdout, row


WORKERS = BENCH.parent / "bench_workers.py"


def test_bench_workers_smoke() -> None:
    """bench_workers.py with its own load generator (benchmarks/_register_loadgen.py)."""
    require_redis()
    argv = [sys.executable, str(WORKERS), "--rounds", "1", "--peers", "40", "--loaders", "1"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("registrations/s", "load generator CPU", "KiB per idle peer", "ratio ceiling"):
        assert row in proc.stdout, row
