"""The benchmarks still run end to end (tiny modes, loopback, bounded)."""

import json
import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "bench_relay.py"


def test_bench_relay_smoke(tmp_path):
    raw = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--json", str(raw)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| Benchmark | ours | baseline | ours / baseline | target | met |" in proc.stdout
    for row in (
        "circuit throughput",
        "RTT 100 B p50",
        "circuit open",
        "registrations/s",
        "server RSS per idle peer",
        "concurrent circuits",
    ):
        assert row in proc.stdout, row

    results = json.loads(raw.read_text())
    # Every server moved real data and the idle-peer stages really held their peers.
    for kind in ("ours", "wsrelay", "splice"):
        assert all(mb > 0 for mb in results["throughput"][kind]["mb_per_s"])
        assert all(len(run) == 50 and min(run) > 0 for run in results["rtt"]["samples"][kind])
    assert len(results["open"]) == 20
    for kind in ("ours", "bare"):
        stages = results["idle"][kind]["stages"]
        assert [s["peers"] for s in stages] == [20, 50]
        assert stages[-1]["rss_kib"] > results["idle"][kind]["rss0_kib"]
    circuits = results["circuits"]["bytes"]
    assert len(circuits) == 10 and min(circuits) > 0


LOSSY = BENCH.parent / "bench_lossy_datachannel.py"


def test_bench_lossy_datachannel_smoke():
    # Both stacks through the impairing proxy, clean and impaired, each moving it all.
    proc = subprocess.run(
        [sys.executable, str(LOSSY), "--runs", "1", "--megabytes", "0.25", "--seconds", "30"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    clean = next(r for r in rows if r.startswith("| clean |"))
    lossy = next(r for r in rows if r.startswith("| 10% loss, 5% dup, 30% reorder |"))
    assert clean.endswith("| 1/1, 1/1 |") and lossy.endswith("| 1/1, 1/1 |"), proc.stdout
    # The proxy really impaired the second transfer and left the first alone.
    stats = [r for r in rows if r.count("|") == 9]
    assert stats[-2].endswith("| 0 / 0 / 0 |") and not stats[-1].endswith("| 0 / 0 / 0 |")


ABUSE = BENCH.parent / "bench_abuse.py"


def test_bench_abuse_smoke():
    proc = subprocess.run(
        [sys.executable, str(ABUSE), "--seconds", "1", "--warmup", "0.5",
         "--phases", "baseline,mixed", "--mixed", "10", "--addresses", "3", "--pairs", "1"],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| baseline", "| mixed"))]
    assert len(rows) == 2, proc.stdout
    phases = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert phases[0]["delivered_per_s"] > 0 and phases[1]["abusers"]["churns"] > 0


SDK_RELAYED = BENCH.parent / "bench_sdk_relayed.py"


def test_bench_sdk_relayed_smoke(tmp_path):
    # SDK ends (RelayCircuit, PeerLink) and websockets clients each moved data and echoed.
    raw = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(SDK_RELAYED), "--quick", "--json", str(raw)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("RelayCircuit (RelayManager): 64 KiB throughput", "PeerLink (P2PNetwork",
                "100 B round trip p50", "CPU during throughput", "Relay limits in force"):  # fmt: skip
        assert row in proc.stdout, row
    results = json.loads(raw.read_text())
    for kind in ("circuit", "link", "ws"):
        assert all(mb > 0 for mb in results["throughput"][kind]["mb_per_s"])
        assert all(len(run) == 50 for run in results["rtt"][kind]["samples"])
