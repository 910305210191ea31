"""bench_registration.py's profiles: N registrations with the relay and the load profiled.

Run: python benchmarks/_profile_registration.py [PEERS] [--tree TREE] [--top N] [--sample]

The relay runs as ``python -m relay`` (auth ``signature``, the benchmark's limits); the
load (benchmarks/_registration_peers.py) opens ``open_relay_session`` per peer, 32 in
flight. Only the registrations are profiled: not key generation, not the teardown.

- default: cProfile in both (the relay's enabled after its imports, dumped on SIGUSR1),
  printed by tottime and written to /tmp/registration-{relay,sdk}.prof for pstats;
- ``--sample``: py-spy samples both processes instead (no instrumentation overhead,
  so the shares are the real ones), printed as self and inclusive shares per function.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time

from _bench_util import JsonLines  # this directory is sys.path[0]
from bench_registration import CONCURRENCY, PEERS, config_path, free_port

RELAY_PROFILE = "/tmp/registration-relay.prof"
SDK_PROFILE = "/tmp/registration-sdk.prof"
# SIGUSR1 (once the load reports every peer registered) ends the profile: the sessions'
# teardown is not part of a registration (the benchmark does not count it either).
RELAY_WRAPPER = """
import cProfile, signal, sys
import relay.__main__ as entry
profile = cProfile.Profile()
def dump(*_):
    profile.disable()
    profile.dump_stats(sys.argv[1])
    print("DUMPED", flush=True)
signal.signal(signal.SIGUSR1, dump)
profile.enable()
entry.main(sys.argv[2:])
"""
PY_SPY = os.path.join(os.path.dirname(sys.executable), "py-spy")


def spy(pid: int, out: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PY_SPY, "record", "-p", str(pid), "-r", "500", "-f", "raw", "-o", out, "-n"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_spy(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(30)


def print_samples(name: str, path: str, top: int) -> None:
    """Self and inclusive shares of the busy samples (idle epoll waits left out)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count_text = line.rstrip().rpartition(" ")
            frames = [frame.rsplit(" (", 1)[0] + " " + frame.rsplit("/", 1)[-1].split(":")[0]
                      for frame in stack.split(";")]  # fmt: skip
            if "poll (select" in stack.rsplit(";", 1)[-1] or "epoll_wait" in stack:
                continue
            count = int(count_text)
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    print(f"\n== {name}: {total} busy samples (500/s); self share, then inclusive share")
    for frame, count in own.most_common(top):
        print(f"  {count / total:6.1%}  {frame}")
    print("  --")
    for frame, count in inclusive.most_common(top):
        print(f"  {count / total:6.1%}  {frame}")


def restart_profile(peers: int, tree: str, top: int) -> None:
    """py-spy on one load process of ``peers`` RelayManagers and on the relay, from the
    relay's kill -9 until every peer is registered again (bench_registration's restart)."""
    from bench_registration import Relay, load

    with tempfile.TemporaryDirectory() as workdir:
        relay = Relay(tree, free_port(), os.path.join(workdir, "k"), config_path(workdir))
        relay.start()
        command = dict(command="peers", multiaddr=relay.multiaddr, count=peers)
        proc, reader = load({**command, "concurrency": CONCURRENCY}, tree)
        try:
            reader.read(600)
            time.sleep(1.0)
            spies = [spy(proc.pid, "/tmp/restart-sdk.spy")]
            time.sleep(1.0)
            relay.kill()
            relay.start()
            spies.append(spy(relay.pid, "/tmp/restart-relay.spy"))
            back = reader.read(600)
            for each in spies:
                stop_spy(each)
        finally:
            proc.kill()
            relay.kill()
    print(
        f"{back['back']} of {peers} back in {back['last_back'] - back['first_back']:.1f} s "
        f"after the first; SDK CPU {back['cpu'] / max(back['back'], 1) * 1000:.2f} ms each"
    )
    print_samples("SDK (restart)", "/tmp/restart-sdk.spy", top)
    print_samples("relay (restart)", "/tmp/restart-relay.spy", top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peers", type=int, nargs="?", default=2000)
    parser.add_argument("--tree", default=os.path.dirname(os.path.dirname(__file__)))
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--sample", action="store_true", help="py-spy instead of cProfile")
    parser.add_argument("--restart", action="store_true", help="py-spy of a relay restart")
    args = parser.parse_args()
    tree = os.path.abspath(args.tree)
    if args.restart:
        restart_profile(args.peers, tree, args.top)
        return
    env = {**os.environ, "PYTHONPATH": tree}
    relay_args = ["--host", "127.0.0.1", "--stun-port", "none", "--metrics-port", "none"]
    relay_args += ["--log-level", "WARNING"]
    spies: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as workdir:
        relay_args += ["--config", config_path(workdir), "--port", str(free_port())]
        relay_args += ["--key-file", os.path.join(workdir, "relay.key")]
        if args.sample:
            command = [sys.executable, "-m", "relay", *relay_args]
        else:
            command = [sys.executable, "-c", RELAY_WRAPPER, RELAY_PROFILE, *relay_args]
        relay = subprocess.Popen(command, env=env, cwd=tree, stdout=subprocess.PIPE)
        try:
            line = relay.stdout.readline().decode()
            multiaddr = dict(p.split("=", 1) for p in line.split()[1:])["multiaddr"]
            load_command = dict(
                command="peers", multiaddr=multiaddr, manager=False, count=args.peers,
                concurrency=CONCURRENCY, wait_go=args.sample,
            )  # fmt: skip
            load_env = {**env, "REGISTRATION_PROFILE": "" if args.sample else SDK_PROFILE}
            load = subprocess.Popen(
                [sys.executable, PEERS, json.dumps(load_command)],
                env=load_env,
                cwd=tree,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            lines = JsonLines(load)
            if args.sample:
                lines.read(120)  # keys made: sample from here
                spies = [spy(relay.pid, "/tmp/registration-relay.spy")]
                spies.append(spy(load.pid, "/tmp/registration-sdk.spy"))
                time.sleep(1.0)  # py-spy attached
                load.stdin.write(b"go\n")
                load.stdin.flush()
            reply = lines.read(300)
            for proc in spies:
                stop_spy(proc)
            if not args.sample:
                relay.send_signal(signal.SIGUSR1)
                relay.stdout.readline()  # DUMPED
            load.stdin.close()
            load.wait(60)
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.wait(60)
    per = 1000 / args.peers
    print(
        f"{args.peers} registrations in {reply['seconds']:.2f} s, "
        f"SDK CPU {reply['cpu'] * per:.2f} ms each"
    )
    if args.sample:
        print_samples("relay", "/tmp/registration-relay.spy", args.top)
        print_samples("SDK", "/tmp/registration-sdk.spy", args.top)
        return
    for name, path in (("relay", RELAY_PROFILE), ("SDK", SDK_PROFILE)):
        stats = pstats.Stats(path)
        total = stats.total_tt * per  # type: ignore[attr-defined]
        print(f"\n== {name}: {total:.3f} ms of profiled time per registration (with idle waits)")
        stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
