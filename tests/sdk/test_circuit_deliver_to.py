"""RelayCircuit.deliver_to through a real relay: messages reach the sink in order, and
after the sink fails, deliver_to raises its error and what follows waits for receive()."""

import pytest
import trio
import trio.testing
from sdk_peers import relayed_circuit


async def test_deliver_to_hands_messages_over_and_buffers_after_the_sink_fails():
    with trio.fail_after(10):
        async with relayed_circuit() as (outgoing, incoming):
            seen: list[bytes] = []

            def sink(message: bytes | memoryview) -> None:
                seen.append(bytes(message))  # a view of the relay's frame: copy to keep
                if message == b"m2":
                    raise ValueError("the sink refuses m2")

            async def deliver() -> None:
                with pytest.raises(ValueError, match="refuses m2"):
                    await incoming.deliver_to(sink)

            async with trio.open_nursery() as nursery:
                # deliver_to waits first, so every message meets the sink as it arrives
                # (in the session's reader task), the ones after the failure included.
                nursery.start_soon(deliver)
                await trio.testing.wait_all_tasks_blocked()
                for index in range(5):
                    await outgoing.send(b"m%d" % index)
            assert seen == [b"m0", b"m1", b"m2"]
            # Nothing after the failure is lost: it waits for receive(), in order.
            assert [await incoming.receive(), await incoming.receive()] == [b"m3", b"m4"]
            await outgoing.send(b"m5")
            assert await incoming.receive() == b"m5"
