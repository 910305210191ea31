"""Load generator and bare servers for bench_registration.py, one process each.

Run: python benchmarks/_registration_peers.py JSON-COMMAND

Commands (JSON on the command line; one JSON line on stdout per stage):
  peers      {multiaddr, count, concurrency, manager}: ``count`` SDK peers, each a RelayManager
             (the SDK's own client: 1-RTT or 2-RTT handshake, first Ping, reconnect
             backoff), started ``concurrency`` at a time. Prints
             {"registered", "seconds", "cpu"} once all are connected, then
             {"back", "first_back", "last_back", "half_back", "p90_back", "cpu", "down",
             "failed"} once every
             peer has been disconnected and connected again (a relay restart; times
             are time.time()), or after "deadline" seconds (default 120), then exits on stdin EOF. With "manager": false each peer
             is one open_relay_session instead (registration only: no Ping, no
             reconnection), and the process waits for stdin EOF after the first line.
  bare       {url, count, concurrency}: ``count`` plain WebSocket connections with the
             SDK's WebSocket client (darkswap_trio.websocket), held open. Prints
             {"registered", "seconds", "cpu"}, exits on stdin EOF.
  serve-bare {}: a bare server on darkswap_trio.websocket (accept, read until closed);
             prints {"pid", "port"}.

Which darkswap_trio is imported is PYTHONPATH's choice: bench_registration.py points
it at the tree under test (this checkout, or another one for a before/after run).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

import trio


class GcClock:
    """CPU seconds the cyclic collector took in this process (gc.callbacks), since the
    last take (process time: on a loaded machine a collection's wall time includes the
    time the process was not running)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, _info: dict) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.total += time.process_time() - self._started

    def take(self) -> float:
        total, self.total = self.total, 0.0
        return total


GC_CLOCK = GcClock()


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def wait_stdin_eof() -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    while await stdin.receive_some(1024):
        pass


def start_profile() -> object:
    """cProfile of the registrations when REGISTRATION_PROFILE names an output file
    (benchmarks/_profile_registration.py)."""
    if not os.environ.get("REGISTRATION_PROFILE"):
        return None
    import cProfile

    profile = cProfile.Profile()
    profile.enable()
    return profile


def stop_profile(profile: object) -> None:
    if profile is not None:
        profile.disable()  # type: ignore[attr-defined]
        profile.dump_stats(os.environ["REGISTRATION_PROFILE"])  # type: ignore[attr-defined]


async def cmd_peers(cmd: dict) -> None:
    from darkswap_trio import (
        Keypair,
        RelayManager,
        ServerConnected,
        ServerDisconnected,
        ServerFailed,
    )

    count, limit = cmd["count"], trio.Semaphore(cmd["concurrency"])
    # Keys and peer ids before the clock starts: not registration work. Nor is the
    # signing key's expansion (built on a key's first signature, ~50 us: once in a
    # peer's life, not once per registration).
    keys = [Keypair.generate() for _ in range(count)]
    for key in keys:
        str(key.peer_id)
        key.sign(b"")
    connected = [trio.Event() for _ in range(count)]
    state = {"down": 0, "back": 0, "first_back": None, "last_back": None, "failed": 0}
    back_times: list[float] = []
    everyone_back = trio.Event()

    def on_status(index: int, event: object, _queued: bool) -> None:
        if isinstance(event, ServerConnected):
            if not connected[index].is_set():
                connected[index].set()
                return
            state["back"] += 1
            now = time.time()
            back_times.append(now)
            state["first_back"] = state["first_back"] or now
            state["last_back"] = now
            if state["back"] == count:
                everyone_back.set()
        elif isinstance(event, ServerDisconnected):
            state["down"] += 1
        elif isinstance(event, ServerFailed):  # gave up: max_reconnect_attempts failures
            state["failed"] += 1

    async def session(index: int) -> None:
        from darkswap_trio import open_relay_session

        await limit.acquire()  # released once registered: a limit on handshakes in flight
        held = False
        try:
            async with open_relay_session(cmd["multiaddr"], keys[index], ping_interval=3600):
                held = True
                limit.release()
                connected[index].set()
                await trio.sleep_forever()
        finally:
            if not held:
                limit.release()

    async def peer(index: int, nursery: trio.Nursery) -> None:
        if not cmd.get("manager", True):
            nursery.start_soon(session, index)
            await connected[index].wait()
            return
        async with limit:
            manager = RelayManager(
                keys[index],
                [cmd["multiaddr"]],
                on_status=lambda event, queued: on_status(index, event, queued),
            )
            await nursery.start(manager.run)
            await connected[index].wait()

    if cmd.get("wait_go"):  # a profiler attaches now (benchmarks/_profile_registration.py)
        emit({"keys": count})
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        await stdin.receive_some(16)
    profile = start_profile()
    async with trio.open_nursery() as nursery:
        start, cpu = time.perf_counter(), time.process_time()
        GC_CLOCK.take()
        async with trio.open_nursery() as starters:
            for index in range(count):
                starters.start_soon(peer, index, nursery)
        stop_profile(profile)
        emit(
            {
                "registered": count,
                "seconds": time.perf_counter() - start,
                "cpu": time.process_time() - cpu,
                "gc": GC_CLOCK.take(),
            }
        )
        if not cmd.get("manager", True):
            await wait_stdin_eof()
            nursery.cancel_scope.cancel()
            return
        # The connected peers are this benchmark's fixture: out of the collector's sight
        # (as the relay does with its own start-up state). One process stands for
        # thousands of peers, and a collector walking all of their objects at every
        # full collection is a cost no real peer pays (it was ~40% of this process's
        # CPU in a 4,000-peer restart): it would take the two cores from the relay.
        gc.collect()
        gc.freeze()
        # Frozen objects do not count as long-lived: CPython's guard against quadratic
        # full collections (collect only when the long-lived heap grew by 25%) then sees
        # an empty heap and lets every 10th middle collection walk all the re-registered
        # sessions of this process (measured: 1.7 ms of GC per re-registration at 5,000
        # peers per process, half the process's CPU). Young collections are made rarer
        # as in the standalone relay (relay/__main__.py RELAY_GC_THRESHOLD); what GC is
        # left is still measured and printed.
        gc.set_threshold(20_000, 10, 10)
        GC_CLOCK.take()
        cpu = time.process_time()
        with trio.move_on_after(cmd.get("deadline", 120)):  # Failed peers never come back
            await everyone_back.wait()
        emit(
            {
                "back": state["back"],
                "first_back": state["first_back"],
                "last_back": state["last_back"],
                # when half and 90% of this process's peers were back (time.time())
                "half_back": _quantile(back_times, 0.5),
                "p90_back": _quantile(back_times, 0.9),
                "cpu": time.process_time() - cpu,
                "gc": GC_CLOCK.take(),
                "down": state["down"],
                "failed": state["failed"],
            }
        )
        await wait_stdin_eof()
        nursery.cancel_scope.cancel()


def _quantile(times: list[float], q: float) -> float | None:
    return sorted(times)[int(q * (len(times) - 1))] if times else None


async def cmd_bare(cmd: dict) -> None:
    from darkswap_trio.websocket import open_websocket

    count, limit = cmd["count"], trio.Semaphore(cmd["concurrency"])
    opened = trio.Event()
    done = 0

    async def connection() -> None:
        nonlocal done
        await limit.acquire()
        held = False
        try:
            async with open_websocket(cmd["url"]):
                held = True
                limit.release()
                done += 1
                if done == count:
                    opened.set()
                await trio.sleep_forever()
        finally:
            if not held:
                limit.release()

    async with trio.open_nursery() as nursery:
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            nursery.start_soon(connection)
        await opened.wait()
        emit(
            {
                "registered": count,
                "seconds": time.perf_counter() - start,
                "cpu": time.process_time() - cpu,
            }
        )
        await wait_stdin_eof()
        nursery.cancel_scope.cancel()


async def cmd_serve_bare(cmd: dict) -> None:
    from darkswap_trio.websocket import serve_websocket

    async def handle(request) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.receive()
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_websocket, handle, "127.0.0.1", 0)
        emit({"pid": os.getpid(), "port": listeners[0].socket.getsockname()[1]})


def main() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cmd = json.loads(sys.argv[1])
    runner = {"peers": cmd_peers, "bare": cmd_bare, "serve-bare": cmd_serve_bare}
    trio.run(runner[cmd["command"]], cmd)


if __name__ == "__main__":
    main()
