"""bench_topics.py runs end to end: relay and peer processes, both protocols, every
message delivered once (tiny mode, loopback, bounded)."""

import pathlib
import re
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "bench_topics.py"


def test_bench_topics_smoke():
    argv = [sys.executable, str(BENCH), "--peers", "6", "--workers", "2", "--runs", "1"]
    argv += ["--messages", "10", "--burst", "20", "--degree", "3", "--interval", "0.02"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for label in ("gossip (D=6)", "flooding"):
        row = re.search(rf"\| 6 \| {re.escape(label)} \| (\d+) / (\d+) \|", out)
        assert row is not None, out
        assert row.group(1) == row.group(2) == "50", out  # 10 messages x 5 subscribers
    assert "| 6 | gossip / flooding |" in out
    assert "| 6 | duplicate deliveries (all runs) | 0 |" in out
