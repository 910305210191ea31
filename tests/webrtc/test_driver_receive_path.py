"""The driver's receive path: a receive() that finds nothing reads the socket in the
receiver's task (the core task hands it over and keeps its timers), and whatever else
gives the receiver news interrupts its wait."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from test_peer_connection_virtualnet import connect, pcs  # pytest puts this dir on sys.path

from darkswap_trio.testing import VirtualNet
from darkswap_trio.webrtc import PeerConnectionConfig, open_peer_connection


async def connected_pair(net: VirtualNet):
    return pcs(await net.bind(("10.0.0.1", 0)), await net.bind(("10.0.0.2", 0)))


async def test_a_waiting_receiver_reads_the_message_itself(autojump_clock):
    net = VirtualNet(0, delay=0.0005)
    async with await connected_pair(net) as (a, b):
        await connect(a, b)
        channel = await a.create_data_channel("x")
        accepted = await b.accept_data_channel()
        for i in range(20):
            before = b._driver.receiver_reads
            with trio.fail_after(1):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(channel.send, b"ping %d" % i)
                    assert await accepted.receive() == b"ping %d" % i
            assert b._driver.receiver_reads > before
            await accepted.send(b"pong")
            with trio.fail_after(1):
                assert await channel.receive() == b"pong"


async def test_a_receiver_holding_the_socket_keeps_the_connection_alive(autojump_clock):
    """Consent checks are answered and timers fire while a receiver holds the socket."""
    net = VirtualNet(0, delay=0.0005)
    async with await connected_pair(net) as (a, b):
        await connect(a, b)
        channel = await a.create_data_channel("x")
        accepted = await b.accept_data_channel()
        with trio.move_on_after(120):  # far beyond the consent timeout (30 s)
            await accepted.receive()
        assert a.connection_state == b.connection_state == "connected"
        assert b._driver.receiver_reads > 10  # it read (and answered) the checks
        await channel.send(b"still here")
        with trio.fail_after(1):
            assert await accepted.receive() == b"still here"


async def test_another_channels_message_reaches_its_receiver(autojump_clock):
    net = VirtualNet(0, delay=0.0005)
    async with await connected_pair(net) as (a, b):
        await connect(a, b)
        quiet, busy = await a.create_data_channel("quiet"), await a.create_data_channel("busy")
        accepted = {}
        for _ in range(2):
            incoming = await b.accept_data_channel()
            accepted[incoming.label] = incoming
        got = []
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accepted["quiet"].receive)  # takes the socket
                await trio.testing.wait_all_tasks_blocked()
                for i in range(10):
                    await busy.send(b"%d" % i)
                    got.append(await accepted["busy"].receive())
                await quiet.send(b"done")
        assert got == [b"%d" % i for i in range(10)]


async def test_a_close_from_another_task_interrupts_the_reader(autojump_clock):
    net = VirtualNet(0, delay=0.0005)
    async with await connected_pair(net) as (a, b):
        await connect(a, b)
        await a.create_data_channel("x")
        accepted = await b.accept_data_channel()
        with trio.fail_after(1):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.testing.wait_all_tasks_blocked)

                async def close_soon() -> None:
                    await trio.testing.wait_all_tasks_blocked()
                    await accepted.aclose()

                nursery.start_soon(close_soon)
                with pytest.raises(trio.ClosedResourceError):
                    await accepted.receive()


async def test_the_connection_closing_interrupts_a_reader_on_a_real_socket():
    """notify_closing ends the receiver's wait on the UDP socket: BrokenResourceError
    at once when the connection closes, not a hang on a closed file descriptor."""
    config = PeerConnectionConfig(host_addresses=["127.0.0.1"])
    errors: list[BaseException] = []

    async def receive(channel) -> None:
        try:
            await channel.receive()
        except trio.BrokenResourceError as exc:
            errors.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with open_peer_connection(config) as a, open_peer_connection(config) as b:
                await b.set_remote_description(await a.create_offer(), "offer")
                await a.set_remote_description(await b.create_answer(), "answer")
                channel = await a.create_data_channel("x")
                accepted = await b.accept_data_channel()
                for i in range(50):
                    await channel.send(b"%d" % i)
                    await accepted.send(await accepted.receive())
                    assert await channel.receive() == b"%d" % i
                got = []

                async def take(channel) -> None:
                    got.append(await channel.receive())

                async with trio.open_nursery() as inner:
                    inner.start_soon(take, accepted)
                    await trio.testing.wait_all_tasks_blocked()
                    assert b._driver._reader is accepted  # it waits on b's socket itself
                    await channel.send(b"read by the receiver")
                assert got == [b"read by the receiver"] and b._driver.receiver_reads >= 1
                nursery.start_soon(receive, channel)
                await trio.sleep(0.05)  # it waits on a's socket
                assert a._driver._reader is channel
    assert len(errors) == 1
