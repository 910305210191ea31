"""Topics over real PeerLinks: in-process P2PNetworks on a real relay, loopback only.

Exactly-once delivery to live subscribers across a multi-hop mesh with joins, leaves
and a killed peer; non-subscribers get nothing; forged messages injected on a link
are dropped; a validation hook rejecting one publisher's messages stops them there;
topic traffic shares links with application messages; bootstrap peers are dialed.
"""

import os
import random

import pytest
import trio
from sdk_peers import peer

from darkswap_trio import NoTopicPeers, TopicMessage
from darkswap_trio._p2p._topics import TOPIC_CHANNEL
from darkswap_trio.proto.gossip.wire import PUBLISH, Message, encode_frame, encode_record


async def until(condition, interval=0.02):
    while not condition():
        await trio.sleep(interval)


def knows(network, topic, count):
    return lambda: len(network.topic_peers(topic)) >= count


async def collect(subscription, into):
    async for message in subscription:
        into.append(message)


async def test_publish_subscribe_on_three_peers_with_app_messages(relay_server):
    with trio.fail_after(30):
        async with (
            peer(relay_server, enable_direct=False) as a,
            peer(relay_server, enable_direct=False) as b,
            peer(relay_server, enable_direct=False) as c,
            peer(relay_server, enable_direct=False) as d,
        ):
            ab = await a.connect_to_peer(b.local_peer_id)
            ba = await b.accept_peer()
            await b.connect_to_peer(c.local_peer_id)
            await c.connect_to_peer(d.local_peer_id)
            with trio.fail_after(1):
                assert await a.publish("orders/BTC-USDT", b"nobody") and True
            try:
                await a.publish("orders/BTC-USDT", b"x", require_peers=True)
            except NoTopicPeers:
                pass
            else:
                raise AssertionError("NoTopicPeers expected")
            got_b, got_c, got_d = [], [], []
            async with (
                a.subscribe("orders/BTC-USDT"),
                b.subscribe("orders/BTC-USDT") as sb,
                c.subscribe("orders/BTC-USDT") as sc,
                d.subscribe("orders/ETH-USDT") as sd,
                trio.open_nursery() as nursery,
            ):
                assert a.topics == ["orders/BTC-USDT"]
                for sub, into in ((sb, got_b), (sc, got_c), (sd, got_d)):
                    nursery.start_soon(collect, sub, into)
                await until(knows(a, "orders/BTC-USDT", 1))
                await until(knows(c, "orders/BTC-USDT", 1))
                assert a.topic_peers("orders/BTC-USDT") == sorted(a.topic_peers("orders/BTC-USDT"))
                assert str(d.local_peer_id) not in a.topic_peers("orders/BTC-USDT")
                with pytest.raises(TypeError, match="topic must be a str"):
                    a.topic_peers(b"orders/BTC-USDT")
                # Application messages and topic traffic share the link, both ways.
                await ab.send(b"app message")
                with pytest.raises(ValueError, match="reserved"):
                    await ab.send(
                        TOPIC_CHANNEL + b"\x01"
                    )  # the application cannot forge topic frames
                message_id = await a.publish("orders/BTC-USDT", b"bid 1", require_peers=True)
                assert await ba.receive() == b"app message"
                await until(lambda: got_b and got_c)
                await trio.sleep(0.3)  # room for a duplicate to show up
                expected = TopicMessage("orders/BTC-USDT", a.local_peer_id, b"bid 1", message_id)
                assert got_b == got_c == [expected]
                assert got_d == []
                nursery.cancel_scope.cancel()
            assert a.topics == []


async def test_subscriber_queue_drops_oldest(relay_server):
    with trio.fail_after(20):
        async with (
            peer(relay_server, enable_direct=False) as a,
            peer(relay_server, enable_direct=False) as b,
        ):
            await a.connect_to_peer(b.local_peer_id)
            async with b.subscribe("t", queue_size=2) as subscription:
                await until(knows(a, "t", 1))
                for i in range(5):
                    await a.publish("t", b"%d" % i)
                await until(lambda: b.topic_layer.statistics.delivered == 5)
                assert [(await subscription.receive()).data for _ in range(2)] == [b"3", b"4"]
                assert subscription.dropped == 3


async def test_bootstrap_peers_are_dialed(relay_server):
    with trio.fail_after(20):
        async with peer(relay_server, enable_direct=False) as hub:
            async with (
                peer(relay_server, enable_direct=False, bootstrap_peers=[hub.local_peer_id]) as a,
                peer(
                    relay_server,
                    enable_direct=False,
                    bootstrap_peers=[
                        f"{relay_server.multiaddr.rsplit('/p2p/', 1)[0]}/p2p/{hub.local_peer_id}"
                    ],
                ) as b,
            ):
                async with hub.subscribe("t"), a.subscribe("t") as sa, b.subscribe("t"):
                    await until(lambda: a.local_peer_id in hub.pool and b.local_peer_id in hub.pool)
                    await until(knows(b, "t", 1))
                    await until(knows(hub, "t", 2))
                    await b.publish("t", b"via the hub")
                    with trio.fail_after(5):
                        message = await sa.receive()
                    assert (message.data, message.from_) == (b"via the hub", b.local_peer_id)


def forged_frame(victim, topic):
    # Claims ``victim`` published it; the signature is garbage.
    return TOPIC_CHANNEL + encode_frame(
        [
            encode_record(
                PUBLISH,
                Message(victim.keypair.peer_id.multihash, 42, topic, b"forged", bytes(64)).encode(),
            )
        ]
    )


async def test_many_peers_exactly_once_with_churn_forgery_and_validation(relay_server):
    n = int(os.environ.get("TOPICS_TEST_PEERS", "30"))
    topics = ["orders/A", "orders/B", "orders/C"]
    rng = random.Random(5)
    with trio.fail_after(90):
        async with trio.open_nursery() as outer:
            networks, scopes = [], []

            async def run_peer(task_status):
                with trio.CancelScope() as scope:
                    async with peer(
                        relay_server, enable_direct=False, connection_idle_timeout=600
                    ) as net:
                        task_status.started((net, scope))
                        await trio.sleep_forever()

            for _ in range(n):
                net, scope = await outer.start(run_peer)
                networks.append(net)
                scopes.append(scope)
            villain = networks[n - 1]  # its messages are rejected by everyone's validator

            def validator(message):
                return "reject" if message.from_ == villain.local_peer_id else "accept"

            subscribed = {i: set(rng.sample(topics, 2)) for i in range(n - 1)}
            subscribed[n - 1] = set(topics)
            # Topics travel only between subscribers, so each topic's subscribers are
            # linked in a ring with skip-one chords (what discovery would arrange):
            # multi-hop, and still connected after one member leaves and one dies.
            for topic in topics:
                ring = [i for i in range(n) if topic in subscribed[i]]
                for step in (1, 2):
                    for k, a in enumerate(ring):
                        b = ring[(k + step) % len(ring)]
                        if a != b and networks[b].local_peer_id not in networks[a].pool:
                            await networks[a].connect_to_peer(networks[b].local_peer_id)
            received = {i: [] for i in range(n)}
            subs = {}
            async with trio.open_nursery() as readers:

                def join(i, topic):
                    sub = networks[i].subscribe(topic, validator=validator)
                    subs[(i, topic)] = sub
                    readers.start_soon(collect, sub, received[i])

                for i in range(n):
                    for topic in sorted(subscribed[i]):
                        join(i, topic)
                for topic in topics:
                    members = [i for i in range(n) if topic in subscribed[i]]
                    for i in members:
                        await until(lambda i=i, t=topic: networks[i].topic_layer.core.mesh.get(t))
                published = {}  # message id -> (topic, publisher index, expected receivers)

                def arrived(mid):
                    _, _, expected = published[mid]
                    return all(any(m.message_id == mid for m in received[j]) for j in expected)

                async def publish_round(tag):
                    live = [i for i in range(n) if networks[i]._running]
                    mids = []
                    for i in live:
                        topic = rng.choice(sorted(subscribed[i]))
                        mid = await networks[i].publish(topic, b"%s from %d" % (tag, i))
                        if i != n - 1:
                            expected = {j for j in live if j != i and topic in subscribed[j]}
                            published[mid] = (topic, i, expected)
                            mids.append(mid)
                    # Eventually (within the test's bound) every live subscriber has it.
                    await until(lambda: all(arrived(mid) for mid in mids))

                await publish_round(b"round1")
                # Churn: one peer leaves a topic, another joins one, one peer is killed.
                leaver, topic_left = 0, sorted(subscribed[0])[0]
                subs.pop((leaver, topic_left)).close()
                subscribed[leaver].discard(topic_left)
                joiner = 1
                topic_joined = sorted(set(topics) - subscribed[joiner])[0]
                for member in [i for i in range(n) if topic_joined in subscribed[i]][:2]:
                    await networks[joiner].connect_to_peer(networks[member].local_peer_id)
                join(joiner, topic_joined)
                subscribed[joiner].add(topic_joined)
                killed = 4 if 4 != joiner else 5
                scopes[killed].cancel()
                await until(lambda: not networks[killed]._running)
                joined = networks[joiner].local_peer_id
                await until(lambda: networks[joiner].topic_layer.core.mesh.get(topic_joined))
                await until(
                    lambda: (
                        sum(
                            joined in networks[m].topic_layer.core.topic_peers(topic_joined)
                            for m in range(n)
                        )
                        >= 2
                    )
                )
                await trio.sleep(1.0)  # heartbeats notice the killed peer's links
                await publish_round(b"round2")
                # A forger injects messages claiming to be from peer 2, on every link it has.
                forger = networks[3]
                for link in forger.pool.links():
                    await link.send_channel(forged_frame(networks[2], "orders/A"))
                await until(
                    lambda: (
                        sum(networks[i].topic_layer.statistics.invalid_signature for i in range(n))
                        >= 1
                    )
                )
                await trio.sleep(0.5)  # room for a duplicate or a forged delivery to show up
                readers.cancel_scope.cancel()

            assert (
                sum(len(expected) for _, _, expected in published.values()) >= 5 * n
            )  # not vacuous
            for mid, (topic, publisher, expected) in published.items():
                got = {i for i in range(n) for m in received[i] if m.message_id == mid}
                assert expected - {killed} <= got, (topic, publisher, expected, got)
                # Extra receivers joined the topic later and got it from the gossip window.
                assert all(topic in subscribed[j] for j in got - expected - {killed}), (topic, got)
            for i in range(n):
                ids = [m.message_id for m in received[i]]
                assert len(ids) == len(set(ids)), f"peer {i} got a duplicate"
                assert all(m.from_ != villain.local_peer_id for m in received[i])
                assert all(m.data != b"forged" for m in received[i])
            stats = [networks[i].topic_layer.statistics for i in range(n) if i != killed]
            assert sum(s.rejected for s in stats) >= 1
            assert sum(s.invalid_signature for s in stats) >= 1
            outer.cancel_scope.cancel()


async def test_largest_message_fits_a_link_message(relay_server):
    with trio.fail_after(20):
        async with (
            peer(relay_server, enable_direct=False, link_max_message_size=64 * 1024) as a,
            peer(relay_server, enable_direct=False, link_max_message_size=64 * 1024) as b,
        ):
            await a.connect_to_peer(b.local_peer_id)
            async with b.subscribe("t" * 255) as subscription:
                await until(knows(a, "t" * 255, 1))
                largest = a.topic_layer.config.max_data_size
                try:
                    await a.publish("t" * 255, bytes(largest + 1))
                except ValueError:
                    pass
                else:
                    raise AssertionError("a message above max_data_size must be refused")
                await a.publish("t" * 255, bytes(largest))
                assert len((await subscription.receive()).data) == largest
            assert a.topic_layer.dropped_frames == 0


async def test_relay_rendezvous_links_subscribers(relay_server):
    # Nobody connects to anybody: the relay's topic rendezvous introduces the subscribers.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            networks = []

            async def run_peer(task_status):
                async with peer(relay_server, enable_direct=False) as net:
                    task_status.started(net)
                    await trio.sleep_forever()

            for _ in range(5):
                networks.append(await nursery.start(run_peer))
            subscriptions = [net.subscribe("orders/ETH-USDT") for net in networks]
            outsider = await nursery.start(run_peer)
            async with outsider.subscribe("orders/other"):
                for net in networks:
                    await until(knows(net, "orders/ETH-USDT", 1))
                for i, net in enumerate(networks):
                    await net.publish("orders/ETH-USDT", b"%d" % i, require_peers=True)
                for i, subscription in enumerate(subscriptions):
                    got = sorted([(await subscription.receive()).data for _ in range(4)])
                    assert got == sorted(b"%d" % j for j in range(5) if j != i)
                assert not any(net.local_peer_id in outsider.pool for net in networks)
            for subscription in subscriptions:
                subscription.close()
            router = relay_server.router
            await until(
                lambda: not router.topics_of(networks[0].local_peer_id)
            )  # TopicRegister leave
            nursery.cancel_scope.cancel()


def test_bootstrap_peer_config(tmp_path):
    from darkswap_trio import Config, ConfigError, P2PConfig

    peer_id = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    path = tmp_path / "peer.toml"
    path.write_text(
        f'[p2p]\nbootstrap_peers = ["{peer_id}", "/ip4/10.0.0.1/tcp/9000/p2p/{peer_id}"]\n'
        "topic_queue_size = 10\n"
    )
    config = Config.from_toml(path)
    assert config.p2p.bootstrap_peer_ids() == [peer_id, peer_id]
    assert config.p2p.topic_queue_size == 10
    for bad in (["nope"], ["/ip4/10.0.0.1/tcp/9000"], [7]):
        with pytest.raises(ConfigError):
            P2PConfig(bootstrap_peers=bad).validate()
    with pytest.raises(ConfigError):
        P2PConfig(topic_queue_size=0).validate()


async def test_topics_over_a_direct_link(relay_server):
    with trio.fail_after(30):
        async with peer(relay_server) as a, peer(relay_server) as b:
            link = await a.connect_to_peer(b.local_peer_id)
            async with b.subscribe("t") as subscription:
                await until(knows(a, "t", 1))
                await a.publish("t", b"maybe relayed")
                assert (await subscription.receive()).data == b"maybe relayed"
                await until(lambda: link.connection_type == "direct")
                for i in range(20):
                    await a.publish("t", b"direct %d" % i)
                got = [(await subscription.receive()).data for _ in range(20)]
                assert got == [b"direct %d" % i for i in range(20)]
                assert link.direct_bytes_sent > 0


async def test_validator_errors_ignore_and_close_ends_iteration(relay_server):
    with trio.fail_after(20):
        async with (
            peer(relay_server, enable_direct=False) as a,
            peer(relay_server, enable_direct=False) as b,
        ):
            await a.connect_to_peer(b.local_peer_id)

            def validator(message):
                if message.data == b"boom":
                    raise RuntimeError("validator bug")
                return "ignore" if message.data == b"skip" else "accept"

            subscription = b.subscribe("t", validator=validator)
            seen = []

            async def read():
                async for message in subscription:  # ends when the subscription closes
                    seen.append(message.data)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await until(knows(a, "t", 1))
                for data in (b"boom", b"skip", b"ok"):
                    await a.publish("t", data)
                await until(lambda: seen == [b"ok"])
                subscription.close()
            assert b.topic_layer.validator_errors == 1 and b.topic_layer.statistics.ignored == 2
            assert b.topics == [] and b.topic_layer.core.peers[a.local_peer_id].penalty == 0
