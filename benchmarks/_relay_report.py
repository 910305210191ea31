"""The Markdown table of bench_relay.py: one row per figure, each with the load generator's
CPU beside it; only the parts that were run (``--only``) have rows."""

from __future__ import annotations

import os
import statistics

from _bench_util import loadavg, mean_spread, percentile, ratio, spread

MiB = 1024 * 1024
WINDOW_EXPERIMENT = 256 * 1024  # "ours_window": the fixed window shipped before adaptive ones
LABELS = {
    "splice": "raw trio TCP splice",
    "wsrelay": "websockets+uvloop relay",
    "echo": "raw trio TCP echo, no relay hop",
}
FAIRNESS_TARGET = 0.7


def report(results: dict, mode_name: str, mode: dict) -> str:
    rows: list[tuple[str, ...]] = []

    def row(name, ours, base, ratio, target="", met=None, load="-"):
        met_text = "" if met is None else ("yes" if met else "**NO**")
        rows.append((name, ours, base, ratio, target, met_text, load))

    def med(values: list[float], fmt: str) -> str:
        return fmt.format(statistics.median(values))

    if "throughput" in results:
        throughput_rows(results["throughput"], row, med)
    if "rtt" in results:
        latency_rows(results, row, med)
    if "idle" in results:
        registration_rows(results["idle"], row)
    if "circuits" in results:
        circuit_rows(results["circuits"], row)
    header = (
        "| Benchmark | ours | baseline | ours / baseline | target | met | load generator CPU "
        "(ours / baseline) |\n| --- | --- | --- | --- | --- | --- | --- |\n"
    )
    lines = [header + "\n".join("| " + " | ".join(r) + " |" for r in rows)]
    lines.append(notes(results, mode_name, mode))
    return "\n".join(lines)


def throughput_rows(tp: dict, row, med) -> None:
    tp_load = {k: med(v["client_cpu"], "{:.2f}") for k, v in tp.items()}
    ours_mb = statistics.median(tp["ours"]["mb_per_s"])
    for base in ("splice", "wsrelay"):
        label = LABELS[base]
        base_mb = statistics.median(tp[base]["mb_per_s"])
        row(
            f"circuit throughput, 64 KiB writes, MB/s (vs {label})",
            spread(tp["ours"]["mb_per_s"]),
            spread(tp[base]["mb_per_s"]),
            ratio(ours_mb, base_mb),
            ">= 1.0 vs websockets relay" if base == "wsrelay" else "",
            ours_mb >= base_mb if base == "wsrelay" else None,
            f"{tp_load['ours']} / {tp_load[base]} cores",
        )

    if "ours_window" in tp:
        fixed = tp["ours_window"]["mb_per_s"]
        row(
            f"before: ours with a fixed {WINDOW_EXPERIMENT // 1024} KiB circuit window, MB/s "
            "(vs websockets+uvloop relay)",
            spread(fixed),
            spread(tp["wsrelay"]["mb_per_s"]),
            ratio(statistics.median(fixed), statistics.median(tp["wsrelay"]["mb_per_s"])),
            load=f"{tp_load['ours_window']} / {tp_load['wsrelay']} cores",
        )
    cpu_per_gb = {
        k: [c / m * 1e3 for c, m in zip(v["server_cpu"], v["mb_per_s"], strict=True)]
        for k, v in tp.items()
    }  # CPU-s/s over MB/s: CPU seconds per GB relayed
    ours_cpu = statistics.fmean(cpu_per_gb["ours"])
    for base in ("wsrelay", "splice"):
        base_cpu = statistics.fmean(cpu_per_gb[base])
        row(
            f"server CPU per GB relayed (64 KiB writes), s, mean (vs {LABELS[base]})",
            mean_spread(cpu_per_gb["ours"], "{:.2f}"),
            mean_spread(cpu_per_gb[base], "{:.2f}"),
            ratio(ours_cpu, base_cpu),
            load=f"{tp_load['ours']} / {tp_load[base]} cores",
        )


def latency_rows(results: dict, row, med) -> None:
    rtt = results["rtt"]["samples"]
    rtt_cpu = results["rtt"]["server_cpu_us_per_message"]
    rtt_load = {k: med(v, "{:.0f}") for k, v in results["rtt"]["client_cpu_us_per_message"].items()}
    p50 = {k: [percentile(run, 0.5) for run in runs] for k, runs in rtt.items()}
    p99 = {k: [percentile(run, 0.99) for run in runs] for k, runs in rtt.items()}
    ours50 = statistics.median(p50["ours"])
    for base in ("wsrelay", "splice", "echo"):
        label = LABELS[base]
        base50 = statistics.median(p50[base])
        target = "<= 1.0 vs websockets relay" if base == "wsrelay" else ""
        row(
            f"RTT 100 B p50, us (vs {label})",
            spread(p50["ours"]),
            spread(p50[base]),
            ratio(ours50, base50),
            target,
            ours50 <= base50 if base == "wsrelay" else None,
            f"{rtt_load['ours']} / {rtt_load[base]} us/msg",
        )
    ours99, ws99 = statistics.median(p99["ours"]), statistics.median(p99["wsrelay"])
    row(
        "RTT 100 B p99, us (vs websockets+uvloop relay)",
        spread(p99["ours"]),
        spread(p99["wsrelay"]),
        ratio(ours99, ws99),
        load=f"{rtt_load['ours']} / {rtt_load['wsrelay']} us/msg",
    )
    ours_msg = statistics.fmean(rtt_cpu["ours"])
    for base in ("wsrelay", "splice"):
        base_msg = statistics.fmean(rtt_cpu[base])
        row(
            f"server CPU per relayed 100 B message, us, mean (vs {LABELS[base]})",
            mean_spread(rtt_cpu["ours"], "{:.0f}"),
            mean_spread(rtt_cpu[base], "{:.0f}"),
            ratio(ours_msg, base_msg),
            load=f"{rtt_load['ours']} / {rtt_load[base]} us/msg",
        )

    opened = results["open"]
    row(
        "circuit open (RelayRequest -> RelayResponse), us p50 / p99",
        f"{percentile(opened, 0.5):.0f} / {percentile(opened, 0.99):.0f}",
        "-",
        "-",
        load=f"{results.get('open_client_cpu_us', 0):.0f} us/open",
    )


def registration_rows(idle: dict, row) -> None:
    ours_idle, bare_idle = idle["ours"], idle["bare"]
    first = ours_idle["stages"][0]["peers"]
    o_rate, b_rate = ours_idle["stages"][0]["per_second"], bare_idle["stages"][0]["per_second"]
    reg_load = (
        f"{ours_idle['stages'][0]['load_cpu_ms_per_peer']:.2f} / "
        f"{bare_idle['stages'][0]['load_cpu_ms_per_peer']:.2f} ms/peer"
    )
    row(
        f"registrations/s, first {first} (vs bare trio-websocket connections/s)",
        f"{o_rate:.0f}",
        f"{b_rate:.0f}",
        ratio(o_rate, b_rate),
        ">= 1.0",
        o_rate >= b_rate,
        reg_load,
    )
    o_ms = ours_idle["stages"][0]["server_cpu_ms_per_peer"]
    b_ms = bare_idle["stages"][0]["server_cpu_ms_per_peer"]
    row(
        "server CPU per registration, ms (vs bare trio-websocket connection)",
        f"{o_ms:.2f}",
        f"{b_ms:.2f}",
        ratio(o_ms, b_ms),
        "<= 1.0 (capacity)",
        o_ms <= b_ms,
        reg_load,
    )
    for o_stage, b_stage in zip(ours_idle["stages"], bare_idle["stages"], strict=True):
        o, b = o_stage["kib_per_peer"], b_stage["kib_per_peer"]
        row(
            f"server RSS per idle peer at {o_stage['peers']}, KiB (vs bare trio-websocket)",
            f"{o:.1f}",
            f"{b:.1f}",
            ratio(o, b),
            "<= 1.0",
            o <= b,
            f"{o_stage['load_cpu_ms_per_peer']:.2f} / {b_stage['load_cpu_ms_per_peer']:.2f} "
            "ms/peer",
        )


def circuit_rows(circuits: dict, row) -> None:
    per_circuit = circuits["bytes"]
    n = len(per_circuit)
    median_bytes = statistics.median(per_circuit)
    load = f"{circuits['client_cpu']:.2f} cores (server {circuits['server_cpu']:.2f})"
    if circuits["client_cpu"] >= 0.9:  # one process: past ~0.9 of a core it is the limit
        load += ", **load generator saturated**"
    row(
        f"{n} concurrent circuits, 16 KiB writes, {circuits['seconds']:.0f} s: aggregate MB/s",
        f"{sum(per_circuit) / circuits['seconds'] / 1e6:.0f}",
        "-",
        "-",
        load=load,
    )

    def share(q: float) -> str:
        return f"{percentile(per_circuit, q) / median_bytes:.2f}"

    fairness = min(per_circuit) / median_bytes if median_bytes else 0.0
    row(
        f"{n} circuits fairness: slowest / median circuit (1st, 10th percentile, fastest / median)",
        f"{fairness:.2f} ({share(0.01)}, {share(0.1)}, {max(per_circuit) / median_bytes:.2f})"
        if median_bytes
        else "0 (no data)",
        "-",
        "-",
        f">= {FAIRNESS_TARGET}",
        fairness >= FAIRNESS_TARGET,
        load,
    )
    windows = circuits.get("windows") or []
    floor = min(windows, default=0)
    large = [b for b, w in zip(per_circuit, windows, strict=True) if w > floor]
    if large and median_bytes:
        row(
            f"{n} circuits: the {len(large)} opened first (window announced above "
            f"{floor // 1024} KiB): their median / all circuits' median",
            f"{statistics.median(large) / median_bytes:.2f}",
            "-",
            "-",
            load=load,
        )


def notes(results: dict, mode_name: str, mode: dict) -> str:
    out = []
    tp = results.get("throughput")
    if tp:
        cpu = {
            k: (statistics.median(v["server_cpu"]), statistics.median(v["client_cpu"]))
            for k, v in tp.items()
        }
        out.append(
            "Throughput CPU use (median, fraction of one core), server / load generator: "
            + ", ".join(f"{k} {s:.2f} / {c:.2f}" for k, (s, c) in cpu.items())
            + f"; {mode['tp_bytes'] // MiB} MiB x {mode['runs']} runs, medians [min-max]."
        )
    if "rtt" in results:
        out.append(f"RTT {mode['rtt_samples']} samples x {mode['runs']} runs.")
    if "idle" in results:
        out.append(
            "Registration CPU per peer, ms, server / load generator: "
            + ", ".join(
                f"{k} {v['stages'][0]['server_cpu_ms_per_peer']:.2f} / "
                f"{v['stages'][0]['load_cpu_ms_per_peer']:.2f}"
                for k, v in results["idle"].items()
            )
            + "."
        )
    c = results.get("circuits")
    if c:
        out.append(
            f"Many circuits: all {len(c['bytes'])} open before any sends (setup "
            f"{c['setup_seconds']:.1f} s), then {c['warmup_seconds']:.1f} s of warm-up (every "
            "circuit past its first window and 4 frames) before the clock starts; bytes "
            f"per circuit: median {statistics.median(c['bytes']) / 1024:.0f} KiB in "
            f"{c['seconds']:.1f} s."
        )
    out.append(
        f"Mode {mode_name}; load average (1 min) at start {results['loadavg']}, at end "
        f"{loadavg()}; {os.cpu_count()} CPUs shared with whatever else runs; CPU hog on the "
        f"load generator's core: {'yes' if results.get('hog') else 'no'}."
    )
    out.append(f"Limits in force: {limits_in_force()}.")
    return "\n" + "\n".join(out)


def limits_in_force() -> str:
    """The flow-control limits of the relay under test (every abuse limit is lifted)."""
    from _relay_servers import benchmark_relay_config

    lim = benchmark_relay_config().limits
    names = ("circuit_window", "circuit_window_min", "circuit_window_budget",
             "circuit_max_data_frame", "socket_receive_buffer", "bytes_per_peer_rate",
             "circuit_bytes", "circuit_bandwidth")  # fmt: skip
    values = {name: getattr(lim, name) for name in names}
    shown = ", ".join(
        f"{name}={int(v) if float(v).is_integer() else v}" for name, v in values.items()
    )
    return f"{shown} (0 = unlimited; all other abuse limits lifted)"
