"""What a PeerLink over a relay circuit costs per message, counted, not timed (issue #13):
task steps and frames per round trip, with two links over an in-memory circuit
(tests/p2p/memory_links.py) and a clock that stands still (no delayed ACK fires) or
jumps (MockClock autojump).

Also the receive contract that the fast path must keep: a cancelled receive loses no
message.
"""

from collections import Counter

import pytest
import trio
import trio.testing
from memory_links import link_pair

from darkswap_trio.proto.link import ACK, DATA


class TaskSteps(trio.abc.Instrument):
    """Steps per task, by the task's function name; the creating task is "test"."""

    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()
        self._test = trio.lowlevel.current_task()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps["test" if task is self._test else task.name.rsplit(".", 1)[-1]] += 1


@pytest.fixture
def frozen_clock():
    return trio.testing.MockClock(rate=0)


async def test_a_round_trip_is_one_frame_each_way_and_four_task_steps(frozen_clock):
    """Request/response: one DATA frame each way, no ACK frame (the reply's stream
    offsets arrive before the 20 ms delayed ACK is due, and the clock stands still) and
    no link task woken: only the two path readers (a relay session's reader) and the
    two application tasks run, plus the send/receive schedule point every 8 calls."""
    rounds = 64
    async with link_pair() as (a, b, ab, ba):

        async def echo() -> None:
            while True:
                await b.send(await b.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            for _ in range(8):  # both ends settled: HELLO answered, writers idle
                await a.send(b"warm")
                await a.receive()
            await trio.testing.wait_all_tasks_blocked()
            sent_ab, sent_ba = len(ab.kinds), len(ba.kinds)
            counter = TaskSteps()
            trio.lowlevel.add_instrument(counter)
            for i in range(rounds):
                await a.send(b"E%d" % i)
                assert await a.receive() == b"E%d" % i
            trio.lowlevel.remove_instrument(counter)
            nursery.cancel_scope.cancel()
    assert ab.kinds[sent_ab:] == [DATA] * rounds
    assert ba.kinds[sent_ba:] == [DATA] * rounds
    steps = counter.steps
    assert steps["run"] == 2 * rounds  # the two wires' readers: one step per frame
    link_tasks = set(steps) - {"run", "echo", "test"}
    assert not link_tasks, steps  # no writer, no timer
    assert sum(steps.values()) <= 4 * rounds + 2 * rounds // 8 + 4, steps


async def test_messages_ready_at_once_cost_a_schedule_point_every_eighth(frozen_clock):
    """receive() of a message already there does not yield each time (send does the
    same): a burst of 64 messages costs the receiving task 8 steps, not 64."""
    async with link_pair() as (a, b, _, _):
        for i in range(64):
            await a.send(b"m%d" % i)
        await trio.testing.wait_all_tasks_blocked()
        counter = TaskSteps()
        trio.lowlevel.add_instrument(counter)
        for i in range(64):
            assert await b.receive() == b"m%d" % i
        trio.lowlevel.remove_instrument(counter)
    assert 0 < counter.steps["test"] <= 64 // 8 + 1, counter.steps


async def test_a_cancelled_receive_loses_no_message(autojump_clock):
    """A receive cancelled while a message is ready raises Cancelled and takes nothing:
    the next receive returns that message (the old schedule point after taking it
    could drop it)."""
    with trio.fail_after(10):
        async with link_pair() as (a, b, _, _):
            for i in range(20):
                await a.send(b"m%d" % i)
            await trio.testing.wait_all_tasks_blocked()
            received = []
            for _ in range(20):
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await b.receive()
                assert scope.cancelled_caught
                received.append(await b.receive())
            assert received == [b"m%d" % i for i in range(20)]
            assert b.messages_received == 20


async def test_the_delayed_ack_still_flows_while_the_clock_runs(autojump_clock):
    """With time moving, the receiver acknowledges what it consumed within the ACK delay
    (its timer is started by consumption, not by every frame): the sender's window
    drains to zero."""
    with trio.fail_after(10):
        async with link_pair() as (a, b, _, ba):
            for i in range(10):
                await a.send(b"m%d" % i)
                assert await b.receive() == b"m%d" % i
            await trio.sleep(0.1)
            assert a.statistics().unacked_bytes == 0
            assert ACK in ba.kinds
