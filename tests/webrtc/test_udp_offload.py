"""Batched UDP (Linux GSO/GRO, with fallback) on real loopback sockets."""

from __future__ import annotations

import socket
import sys

import pytest

from darkswap_trio.webrtc._udp_offload import UDP_GRO, UdpBatchSocket, gso_runs, split_coalesced


def test_gso_runs_take_equal_sizes_and_one_shorter_tail():
    sizes = [1200, 1200, 1200, 700, 1200, 1300, 1300, 1400]
    datagrams = [bytes(size) for size in sizes]
    assert gso_runs(datagrams, 0) == 4  # three full ones and the shorter tail
    assert gso_runs(datagrams, 4) == 5  # a longer one cannot join a run
    assert gso_runs(datagrams, 5) == 7
    assert gso_runs(datagrams, 7) == 8
    # Kernel limits: at most 64 segments and one UDP payload per send.
    assert gso_runs([bytes(100)] * 200, 0) == 64
    assert gso_runs([bytes(1200)] * 64, 0) == 65000 // 1200


def test_split_coalesced_uses_the_segment_size_from_the_control_message():
    data = b"a" * 1200 + b"b" * 1200 + b"c" * 10
    size = (1200).to_bytes(4, sys.byteorder)
    assert split_coalesced(data, [(socket.IPPROTO_UDP, UDP_GRO, size)]) == [
        b"a" * 1200,
        b"b" * 1200,
        b"c" * 10,
    ]
    assert split_coalesced(data, []) is None
    assert split_coalesced(b"x" * 100, [(socket.IPPROTO_UDP, UDP_GRO, size)]) is None
    assert split_coalesced(data, [(socket.SOL_SOCKET, UDP_GRO, size)]) is None


@pytest.fixture
def sockets():
    pairs = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        pairs.append(sock)
    yield pairs
    for sock in pairs:
        sock.close()


@pytest.mark.parametrize("offload", [True, False])
def test_batches_arrive_as_the_same_datagrams_in_order(sockets, offload):
    sender, receiver = (UdpBatchSocket(sock, offload=offload) for sock in sockets)
    datagrams = [bytes([i]) * 1197 for i in range(40)] + [b"tail" * 100, b"x" * 1197, b"y"]
    assert sender.send(datagrams, sockets[1].getsockname()) == len(datagrams)
    batch: list = []
    receiver.receive_into(batch, 1000)
    assert [data for data, _ in batch] == datagrams
    assert {addr for _, addr in batch} == {sockets[0].getsockname()}
    assert sender.send_errors == 0
    if offload and sys.platform == "linux":
        assert sender.segmented_sends == 2  # 40 + tail, then x + y; both runs in one call
        assert receiver.gro
    else:
        assert sender.segmented_sends == 0


def test_receive_stops_at_the_limit_and_keeps_the_rest(sockets):
    sender, receiver = (UdpBatchSocket(sock, offload=False) for sock in sockets)
    sender.send([b"%d" % i for i in range(10)], sockets[1].getsockname())
    first: list = []
    receiver.receive_into(first, 4)
    rest: list = []
    receiver.receive_into(rest, 100)
    assert [d for d, _ in first + rest] == [b"%d" % i for i in range(10)] and len(first) == 4


def test_a_refused_send_is_counted_and_the_rest_still_goes(sockets):
    sender = UdpBatchSocket(sockets[0], offload=True)
    # Port 0 is refused (EINVAL) either way: counted, never raised, and not taken for
    # a kernel that cannot segment (plain sends fail too), so GSO stays on.
    assert sender.send([b"a", b"b"], ("127.0.0.1", 0)) == 2
    assert sender.send_errors == 2
    assert sender.gso is (sys.platform == "linux")
