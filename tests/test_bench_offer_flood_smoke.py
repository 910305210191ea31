"""benchmarks/offer_flood_direct.py still runs end to end (small flood, short deadline)."""

import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "offer_flood_direct.py"


def test_offer_flood_benchmark_smoke():
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--flood",
            "20",
            "--answer-timeout",
            "2",
            "--hold",
            "3.5",
            "--timeout",
            "5",
            "--rates",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = dict(
        line.strip("| ").split(" | ", 1)
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and "---" not in line
    )
    after_flood = rows["fds over baseline 1 s after the flood"]
    assert int(after_flood.split()[0]) <= 16 and "evicted 4," in after_flood  # 20 - 16
    assert rows["honest peer time to direct, during the flood"].split()[1] == "ms"
    (after_deadline,) = [
        value
        for key, value in rows.items()
        if key.endswith("s after the flood") and not key.startswith("fds over baseline 1 s")
    ]
    assert after_deadline.startswith("0 (half-open 0")
    assert rows["honest peer time to direct, flood going on at 100 offers/s"].split()[1] == "ms"
