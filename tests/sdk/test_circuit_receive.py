"""RelayCircuit.receive through a real relay: the waiting receiver is parked without an
Event and woken by the session's reader, so its guarantees are checked here: a
cancelled wait loses nothing, a close wakes it, two receivers are refused."""

import pytest
import trio
import trio.testing
from sdk_peers import relayed_circuit


async def test_a_cancelled_receive_loses_no_message_and_a_close_wakes_the_receiver():
    with trio.fail_after(10):
        async with relayed_circuit() as (outgoing, incoming):
            for _ in range(3):  # cancelled while parked, several times over
                with trio.CancelScope() as scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(incoming.receive)
                        await trio.testing.wait_all_tasks_blocked()
                        with pytest.raises(trio.BusyResourceError):
                            await incoming.receive()
                        scope.cancel()
            await outgoing.send(b"kept")
            assert await incoming.receive() == b"kept"
            # Ping-pong, then the far end closes while we wait: EndOfChannel, not a hang.
            for i in range(20):
                await outgoing.send(b"%d" % i)
                assert await incoming.receive() == b"%d" % i
            async with trio.open_nursery() as nursery:

                async def expect_end() -> None:
                    with pytest.raises(trio.EndOfChannel):
                        await incoming.receive()

                nursery.start_soon(expect_end)
                await trio.testing.wait_all_tasks_blocked()
                await outgoing.aclose()


async def test_closing_a_circuit_wakes_its_own_waiting_receiver():
    with trio.fail_after(10):
        async with relayed_circuit() as (_, incoming):
            async with trio.open_nursery() as nursery:

                async def expect_closed() -> None:
                    with pytest.raises(trio.ClosedResourceError):
                        await incoming.receive()

                nursery.start_soon(expect_closed)
                await trio.testing.wait_all_tasks_blocked()
                await incoming.aclose()


class StepCounter(trio.abc.Instrument):
    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_a_round_trip_costs_the_sender_one_task_step():
    # The write that follows a received message goes out at once, and the wait for the
    # answer is the schedule point: no extra yield every few quick writes.
    with trio.fail_after(10):
        async with relayed_circuit() as (outgoing, incoming):

            async def echo() -> None:
                while True:
                    await incoming.send(await incoming.receive())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo)
                await outgoing.send(b"warm")
                await outgoing.receive()
                counter = StepCounter(trio.lowlevel.current_task())
                trio.lowlevel.add_instrument(counter)
                try:
                    for i in range(40):
                        await outgoing.send(b"%d" % i)
                        assert await outgoing.receive() == b"%d" % i
                finally:
                    trio.lowlevel.remove_instrument(counter)
                nursery.cancel_scope.cancel()
            assert counter.steps <= 40
