"""Topics: publish/subscribe over the network's PeerLinks (the trio driver of proto.gossip).

Topic frames share each PeerLink with the application's messages: they are link
messages that start with :data:`TOPIC_CHANNEL` (a prefix the link reserves, so
``PeerLink.send`` refuses it), taken off the link as they arrive (they never wait
behind application messages nobody reads) and sent beside the application's
(``PeerLink.send_channel``). The pool tells this driver when a peer's link comes
and goes; each link gets a writer task fed by a bounded outbox. Everything else is
synchronous: a frame in, the core's transmits into outboxes and its messages into
the subscriptions' bounded queues (the oldest dropped, and counted, beyond it).
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from functools import cached_property
from typing import Protocol

import trio

from .._config import Config
from .._identity import Keypair
from .._relay_client._manager import RelayManager
from .._relay_client._session import RelayError
from ..proto.gossip import (
    ACCEPT,
    IGNORE,
    REJECT,
    GossipConfig,
    GossipCore,
    GossipStatistics,
    TopicMessage,
)
from ._peer_link import RESERVED_PREFIX, MessageTooLarge, PeerLink
from ._pool import ConnectionPool

__all__ = [
    "NoTopicPeers",
    "TOPIC_CHANNEL",
    "TopicMessage",
    "TopicSubscription",
    "Topics",
    "TopicsMixin",
]

log = logging.getLogger("darkswap_trio.topics")

TOPIC_CHANNEL = RESERVED_PREFIX + b"topic/1\x00"
# prefix 18, version 1, record header 5, publisher 1+38, seqno 8, topic 1+255, length 4,
# signature 64: 395 bytes, rounded up.
_RECORD_OVERHEAD = 512
_OUTBOX_BYTES = 8 << 20
_RENDEZVOUS_RENEW = 60.0  # seconds between registrations of a topic (the relay keeps 300)
_RENDEZVOUS_MAX_DIALS = (
    8  # concurrent dials to peers a rendezvous named  # per peer, frames the link has not taken yet
)
_BOOTSTRAP_RETRY = (1.0, 30.0)  # first and largest wait between dials of a missing bootstrap peer


class NoTopicPeers(Exception):
    """``publish(..., require_peers=True)`` found no connected subscriber of the topic."""


class TopicSubscription:
    """Messages of one topic: ``async for message in subscription`` (TopicMessage).

    Holds at most ``maxlen`` unread messages; beyond that the oldest is dropped and
    :attr:`dropped` counts it, so a slow reader never blocks the network.
    Iteration ends when the subscription is closed (leaving its ``async with``).
    """

    def __init__(
        self,
        topics: Topics,
        topic: str,
        maxlen: int,
        validator: Callable[[TopicMessage], str] | None,
    ):
        self.topic = topic
        self.validator = validator
        self.dropped = 0
        self._topics = topics
        self._queue: deque[TopicMessage] = deque()
        self._maxlen = maxlen
        self._arrived = trio.Event()
        self._closed = False

    def _put(self, message: TopicMessage) -> None:
        if len(self._queue) >= self._maxlen:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(message)
        self._arrived.set()

    async def receive(self) -> TopicMessage:
        """The next message; trio.EndOfChannel once the subscription is closed."""
        while not self._queue:
            if self._closed:
                raise trio.EndOfChannel
            self._arrived = trio.Event()
            await self._arrived.wait()
        await trio.lowlevel.checkpoint()
        return self._queue.popleft()

    def __aiter__(self) -> TopicSubscription:
        return self

    async def __anext__(self) -> TopicMessage:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Unsubscribe (the topic is left when its last subscription closes). Idempotent."""
        if not self._closed:
            self._closed = True
            self._arrived.set()
            self._topics._remove(self)

    async def __aenter__(self) -> TopicSubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class TopicsNetwork(Protocol):
    """What the topic layer needs of its network (a P2PNetwork)."""

    @property
    def config(self) -> Config: ...
    @property
    def keypair(self) -> Keypair: ...
    @property
    def relay_manager(self) -> RelayManager: ...
    @property
    def pool(self) -> ConnectionPool: ...
    async def connect_to_peer(self, peer_id: str) -> PeerLink: ...


class Topics:
    """The network's topic layer; reached through :class:`TopicsMixin` on P2PNetwork."""

    def __init__(self, network: TopicsNetwork, config: GossipConfig | None = None) -> None:
        self._network = network
        if config is None:
            # A topic frame must fit in one link message: the largest record (1 message)
            # plus framing is below max_data_size + _RECORD_OVERHEAD.
            link_max = network.config.p2p.link_max_message_size
            data_max = max(link_max - _RECORD_OVERHEAD, 1)
            config = GossipConfig(
                max_data_size=min(data_max, GossipConfig.max_data_size),
                max_frame_size=min(link_max - len(TOPIC_CHANNEL), GossipConfig.max_frame_size),
            )
        self.config = config
        self._core: GossipCore | None = None
        self._subscriptions: dict[str, list[TopicSubscription]] = {}
        self._links: dict[str, PeerLink] = {}
        self._outbox: dict[str, deque[bytes]] = {}
        self._outbox_bytes: dict[str, int] = {}
        self._outbox_ready: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self.dropped_frames = 0  # outbox full: the link could not keep up
        self._discovery: dict[str, trio.CancelScope] = {}  # topic -> its rendezvous task
        self._dialing: set[str] = set()  # peers the rendezvous is dialing
        self.validator_errors = 0

    @property
    def statistics(self) -> GossipStatistics:
        return self.core.statistics

    @property
    def core(self) -> GossipCore:
        if self._core is None:
            self._core = GossipCore(self._network.keypair, self.config, now=trio.current_time())
        return self._core

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for link in list(self._links.values()):
                nursery.start_soon(self._write, link)
            for peer_id in self._network.config.p2p.bootstrap_peer_ids():
                nursery.start_soon(self._keep_linked, peer_id)
            for topic in self._subscriptions:  # subscribed before the network ran
                self._discovery[topic] = scope = trio.CancelScope()
                nursery.start_soon(self._discover, topic, scope)
            task_status.started()
            while True:
                await trio.sleep_until(self.core.poll_timeout())
                self.core.handle_timeout(trio.current_time())
                self._flush()

    # -- API ----------------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        *,
        validator: Callable[[TopicMessage], str] | None = None,
        queue_size: int | None = None,
    ) -> TopicSubscription:
        maxlen = queue_size or self._network.config.p2p.topic_queue_size
        subscription = TopicSubscription(self, topic, maxlen, validator)
        self.core.subscribe(topic, validator=lambda message: self._validate(topic, message))
        if topic not in self._subscriptions and self._nursery is not None:
            self._discovery[topic] = scope = trio.CancelScope()
            self._nursery.start_soon(self._discover, topic, scope)
        self._subscriptions.setdefault(topic, []).append(subscription)
        self._flush()
        return subscription

    async def publish(self, topic: str, data: bytes, *, require_peers: bool = False) -> bytes:
        if require_peers and not self.core.topic_peers(topic):
            raise NoTopicPeers(f"no connected peer subscribes to {topic!r}")
        message_id, _ = self.core.publish(topic, data, trio.current_time())
        self._flush()
        await trio.lowlevel.checkpoint()
        return message_id

    @property
    def topics(self) -> list[str]:
        return sorted(self._subscriptions)

    def _remove(self, subscription: TopicSubscription) -> None:
        remaining = [
            s for s in self._subscriptions.get(subscription.topic, []) if s is not subscription
        ]
        if remaining:
            self._subscriptions[subscription.topic] = remaining
            return
        self._subscriptions.pop(subscription.topic, None)
        scope = self._discovery.pop(subscription.topic, None)
        if scope is not None and self._nursery is not None:
            scope.cancel()
            self._nursery.start_soon(self._leave, subscription.topic)
        if self._core is not None:
            self._core.unsubscribe(subscription.topic)
            self._flush()

    def _validate(self, topic: str, message: TopicMessage) -> str:
        # The strictest verdict of the topic's subscriptions; a validator that raises ignores.
        verdict = ACCEPT
        for subscription in self._subscriptions.get(topic, []):
            if subscription.validator is None:
                continue
            try:
                result = subscription.validator(message)
            except Exception:
                log.exception("topic validator for %r raised; message ignored", topic)
                self.validator_errors += 1
                result = IGNORE
            if result == REJECT:
                return REJECT
            if result != ACCEPT:
                verdict = IGNORE
        return verdict

    # -- links (called by the pool) -------------------------------------------------------

    def link_added(self, link: PeerLink) -> None:
        peer = link.peer_id
        self._links[peer] = link
        self._outbox[peer] = deque()
        self._outbox_bytes[peer] = 0
        self._outbox_ready[peer] = trio.Event()
        link.set_channel(TOPIC_CHANNEL, self._on_frame)
        self.core.peer_connected(peer)
        if self._nursery is not None:
            self._nursery.start_soon(self._write, link)
        self._flush()

    def link_removed(self, link: PeerLink) -> None:
        peer = link.peer_id
        if self._links.get(peer) is not link:
            return
        del self._links[peer]
        self._outbox.pop(peer, None)
        self._outbox_bytes.pop(peer, None)
        self._outbox_ready.pop(peer).set()  # the writer sees it is no longer current
        self.core.peer_disconnected(peer)

    def _on_frame(self, link: PeerLink, frame: bytes) -> None:
        if self._links.get(link.peer_id) is link:
            self.core.handle_message(link.peer_id, frame, trio.current_time())
            self._flush()

    def _flush(self) -> None:
        core = self.core
        while (out := core.poll_transmit()) is not None:
            peer, frame = out
            outbox = self._outbox.get(peer)
            if outbox is None:
                continue
            if self._outbox_bytes[peer] + len(frame) > _OUTBOX_BYTES:
                self.dropped_frames += 1
                continue
            outbox.append(frame)
            self._outbox_bytes[peer] += len(frame)
            self._outbox_ready[peer].set()
        while (message := core.poll_event()) is not None:
            for subscription in self._subscriptions.get(message.topic, []):
                subscription._put(message)

    async def _write(self, link: PeerLink) -> None:
        peer = link.peer_id
        while self._links.get(peer) is link:
            outbox = self._outbox[peer]
            if not outbox:
                ready = self._outbox_ready[peer] = trio.Event()
                await ready.wait()
                continue
            frame = outbox.popleft()
            self._outbox_bytes[peer] -= len(frame)
            try:
                await link.send_channel(TOPIC_CHANNEL + frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the link is over; the pool takes it out
            except MessageTooLarge:  # a frame of many records on a small-message link
                self.dropped_frames += 1

    # -- relay rendezvous (docs/PROTOCOL.md 14.6) ------------------------------------------

    async def _discover(self, topic: str, scope: trio.CancelScope) -> None:
        # Register with every connected relay and link to some of the peers it names,
        # until the topic has D known subscribers; renew well within the relay's TTL.
        with scope:
            while True:
                servers = self._network.relay_manager.connected_servers()
                for server in servers:
                    if server.session is None:
                        continue
                    try:
                        peers = await server.session.register_topic(topic)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, RelayError):
                        continue
                    missing = self.config.d - len(self.core.topic_peers(topic))
                    for peer_id in peers:
                        if missing <= 0 or len(self._dialing) >= _RENDEZVOUS_MAX_DIALS:
                            break
                        if peer_id not in self._dialing and self._network.pool.get(peer_id) is None:
                            missing -= 1
                            self._dialing.add(peer_id)
                            assert self._nursery is not None
                            self._nursery.start_soon(self._dial, peer_id)
                await trio.sleep((_RENDEZVOUS_RENEW if servers else 1.0) * random.uniform(0.8, 1.2))

    async def _dial(self, peer_id: str) -> None:
        try:
            await self._network.connect_to_peer(peer_id)
        except (RelayError, trio.BrokenResourceError, trio.ClosedResourceError, ValueError) as exc:
            log.debug("topic peer %s not reached: %s", peer_id, exc)
        finally:
            self._dialing.discard(peer_id)

    async def _leave(self, topic: str) -> None:
        for server in self._network.relay_manager.connected_servers():
            if server.session is not None:
                with trio.move_on_after(5):
                    try:
                        await server.session.register_topic(topic, leave=True)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, RelayError):
                        pass

    async def _keep_linked(self, peer_id: str) -> None:
        wait = _BOOTSTRAP_RETRY[0]
        while True:
            if self._network.pool.get(peer_id) is None:
                try:
                    await self._network.connect_to_peer(peer_id)
                    wait = _BOOTSTRAP_RETRY[0]
                except Exception as exc:  # PeerUnreachable, no relay yet, ...: try again later
                    log.debug("bootstrap peer %s not reached: %s", peer_id, exc)
                    wait = min(wait * 2, _BOOTSTRAP_RETRY[1])
            await trio.sleep(wait * random.uniform(0.8, 1.2))


class TopicsMixin:
    """P2PNetwork's topic API: ``subscribe``, ``publish``, ``topics``, ``topic_peers``."""

    @cached_property
    def topic_layer(self) -> Topics:
        return Topics(self)  # type: ignore[arg-type]

    def subscribe(
        self,
        topic: str,
        *,
        validator: Callable[[TopicMessage], str] | None = None,
        queue_size: int | None = None,
    ) -> TopicSubscription:
        """Join ``topic``: ``async with network.subscribe(topic) as subscription:`` then
        ``async for message in subscription:``; leaving the block unsubscribes.

        ``validator(message)`` returns "accept", "ignore" or "reject": only accepted
        messages are delivered and forwarded; a reject counts against the peer that
        forwarded the message. ``queue_size`` overrides ``P2PConfig.topic_queue_size``.
        """
        return self.topic_layer.subscribe(topic, validator=validator, queue_size=queue_size)

    async def publish(self, topic: str, data: bytes, *, require_peers: bool = False) -> bytes:
        """Sign ``data`` and send it to the topic's peers; returns the message id.

        Returns once the message is queued to every connected subscriber of the topic
        (flood publish). With ``require_peers`` it raises :class:`NoTopicPeers` when no
        connected peer is known to subscribe to ``topic``.
        """
        return await self.topic_layer.publish(topic, data, require_peers=require_peers)

    @property
    def topics(self) -> list[str]:
        """The topics this network subscribes to."""
        return self.topic_layer.topics

    def topic_peers(self, topic: str) -> list[str]:
        """The linked peers known to subscribe to ``topic`` (sorted PeerId strings): the
        peers :meth:`publish` sends to first."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        return sorted(self.topic_layer.core.topic_peers(topic))
