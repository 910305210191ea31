"""Topics across real NATs: four SDK peers behind four different NATs share a topic.

Discovery goes through the relay's rendezvous (TopicRegister/TopicPeers), the links are
whatever each NAT pair allows (direct, or a relay circuit for symmetric/symmetric and
port-restricted/symmetric), and every message published by one peer reaches every other
subscriber exactly once.
"""

from __future__ import annotations

import trio
from netlab_harness import lab_peers

TOPIC = "orders/BTC-USDT"
NATS = ["full-cone", "port-restricted", "symmetric", "symmetric"]
MESSAGES = 10


async def test_four_peers_behind_different_nats_share_a_topic(internet, tmp_path):
    sites = [internet.lab.add_site(nat) for nat in NATS]
    with trio.fail_after(90):
        async with lab_peers(internet, sites, tmp_path) as peers:
            for peer in peers:
                await peer.command("subscribe", topic=TOPIC)
                await peer.wait("subscribed", 10)
            # Each peer learns the others from the relay and links to them (mesh degree
            # 6 > 3, so every pair ends up linked); wait until every peer knows all.
            others = len(peers) - 1
            for peer in peers:
                with trio.fail_after(30):
                    while True:
                        since = len(peer.lines)
                        await peer.command("topic_peers", topic=TOPIC)
                        known = (await peer.wait("topic_peers", 10, since=since))["peers"]
                        if len(known) == others:
                            break
                        await trio.sleep(0.1)
            for peer in peers:
                await peer.command("publish", topic=TOPIC, count=MESSAGES)
            for peer in peers:
                await peer.wait("published", 10)
            expected = {
                p.peer_id: {
                    f"{q.peer_id} {i}" for q in peers if q is not p for i in range(MESSAGES)
                }
                for p in peers
            }
            for peer in peers:
                with trio.fail_after(20):
                    while sum(1 for line in peer.lines if line["ev"] == "topic_msg") < len(
                        expected[peer.peer_id]
                    ):
                        await peer.wait_changed()
            for peer in peers:
                got = [line for line in peer.lines if line["ev"] == "topic_msg"]
                data = [line["data"] for line in got]
                assert len(data) == len(set(data)), f"{peer.site.name}: duplicates"
                assert set(data) == expected[peer.peer_id], peer.site.name
                assert all(line["publisher"] == line["data"].split()[0] for line in got)
