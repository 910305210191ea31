"""benchmarks/bench_registration.py still runs end to end (smoke mode, loopback, bounded)."""

import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "bench_registration.py"


def test_bench_registration_smoke():
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in (
        "relay after: server CPU per registration, ms",
        "bare trio-websocket accept",
        "SDK client CPU per registration",
        "100 RelayManager peers, kill -9 + restart: all registered again",
        "100 protocol-level peers (_register_loadgen.py: no backoff, no Ping, no SDK session), "
        "kill -9 + restart: all registered again",
    ):
        assert row in proc.stdout, (row, proc.stdout)
