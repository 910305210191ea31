"""bench_datachannel.py runs end to end: two processes per pair, ours and aiortc's, every
row of the table (tiny mode, loopback, bounded)."""

import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "bench_datachannel.py"


def test_bench_datachannel_smoke():
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in (
        "| 100 B round trip p50 |",
        "| CPU per round trip, offerer |",
        "| 16 KiB messages, throughput |",
        "| CPU per 1,200 B packet, receiver |",
        "| open time, we offer / aiortc-aiortc |",
        "| open time, aiortc offers / aiortc-aiortc |",
    ):
        assert row in proc.stdout, (row, proc.stdout)
