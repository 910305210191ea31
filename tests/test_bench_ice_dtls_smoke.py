"""The ICE + DTLS benchmark still runs end to end (--smoke: 3 runs, 0.2 s, loopback only)."""

import pathlib
import re
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "bench_ice_dtls.py"


def test_bench_ice_dtls_smoke():
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| Benchmark | ours | aiortc / baseline | ours / baseline | target | met |" in out
    for row in (
        "ICE+DTLS establishment (Ta 5 ms, agreed)",
        "ICE+DTLS establishment (Ta 50 ms, default)",
        "DTLS handshake alone, bare UDP",
        "DTLS core over ICE",
        "DTLS core on bare UDP",
    ):
        assert row in out, row
    # Every stack really connected and really moved datagrams.
    assert len(re.findall(r"\| \d+\.\d \[\d+\.\d-\d+\.\d\] ms", out)) >= 8
    rates = [float(r.replace(",", "")) for r in re.findall(r"([\d,]+) msg/s", out)]
    assert len(rates) == 4 and min(rates) > 0
