"""Signaling between nodes: each node's inbox is a Redis pub/sub channel (PROTOCOL.md 16.2).

Sending (:meth:`NodeInbox.forward`, never blocking): the message joins this node's one
outgoing queue; one task (:meth:`NodeInbox.run_sender`) writes everything queued as one
pipelined batch of Lua scripts (each finds the live node holding the addressee and
publishes the envelope to its inbox) and waits for the batch's replies before the next.
One queue, one writer, one batch in flight: every sender's messages reach Redis, hence
the addressee, in the order they left the session (an Offer is never overtaken by its
candidates), and a session never waits for Redis before its next frame (a burst of
candidates costs one round trip, not one each). The unanswered tail of a failed batch
is written again once, first, with the same ids (the receiver drops repeats), within
``message_timeout``; then those senders get ``cluster_unavailable``.

Receiving (:meth:`NodeInbox.run`): one task reads the inbox and hands each frame to the
local session (never blocking: the session's bounded control queue), in arrival order.
A frame whose addressee is not here (it left meanwhile) goes back to the sending node
as ``undeliverable``, and the sender gets the usual ``unknown_peer``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from darkswap_trio.proto.errors import SignalingParseError
from darkswap_trio.proto.signaling import (
    Answer,
    Error,
    IceCandidate,
    Offer,
    decode_message_untrusted,
    encode_message,
)

from . import _wire
from ._metrics import ClusterMetrics
from ._redis import ClusterUnavailable, RedisLink
from ._resp import ReplyError
from ._types import ClusterSession

logger = logging.getLogger("relay.cluster")

MAX_OUTGOING = 8192  # messages queued for Redis; beyond, senders get cluster_unavailable
MAX_BATCH = 256  # messages written in one piece
SEEN_IDS = 8192  # ids of recent inbox messages remembered to drop repeats
RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)  # seconds between subscription attempts
MAX_REPLYING = 256  # undeliverable notices in flight; beyond, senders time out instead
INCOMPATIBLE_PEER = "incompatible_peer"
_FORWARDED = (Offer, Answer, IceCandidate)


class _Outgoing:
    """A signaling message waiting for (or in) a batch to Redis."""

    __slots__ = ("session", "to", "key", "payload", "expires")

    def __init__(
        self, session: ClusterSession, to: str, key: str, payload: str, expires: float
    ) -> None:
        self.session = session
        self.to = to
        self.key = key
        self.payload = payload
        self.expires = expires


class NodeInbox:
    """This node's inbox (receiving) and the way to other nodes' inboxes (sending)."""

    def __init__(
        self,
        link: RedisLink,
        *,
        prefix: str,
        node_id: str,
        epoch: str,
        message_timeout: float,
        lookup: Callable[[str], ClusterSession | None],
        metrics: ClusterMetrics,
        error_sent: Callable[[str], None],
    ) -> None:
        self._link = link
        self._prefix = prefix
        self.node_id = node_id
        self.channel = _wire.inbox_channel(prefix, node_id)
        self._id_prefix = f"{node_id}:{epoch}:"
        self._sequence = itertools.count(1)
        self._timeout = message_timeout
        self._lookup = lookup
        self._metrics = metrics
        self._error_sent = error_sent  # counts an Error frame sent to a peer, by code
        self._seen: OrderedDict[str, None] = OrderedDict()
        # Envelopes of kinds the Redis half does not handle (the mesh half registers here).
        self.handlers: dict[str, Callable[[_wire.OtherEnvelope], None]] = {}
        # Answers a ReleaseRequest: (peer, holder) -> whether this node released it.
        self.release_if_silent: Callable[[str, str], Awaitable[bool]] | None = None
        self._asked: dict[str, list[Any]] = {}  # ReleaseRequest id -> [Event, answer]
        self.subscribed = False
        self.ready = trio.Event()  # set once first subscribed
        self._replying = 0  # undeliverable notices being published
        self._counters: dict[tuple[str, str], Any] = {}  # metric children by result
        self._outgoing: deque[_Outgoing] = deque()
        self._wake_sender = trio.Event()

    # -- sending ----------------------------------------------------------------------

    def forward(self, session: ClusterSession, msg: Offer | Answer | IceCandidate) -> None:
        """Queue ``msg`` from local ``session`` for its addressee on another node (never
        blocks); the session is told (an Error frame) when that fails."""
        if len(self._outgoing) >= MAX_OUTGOING:
            self._unavailable(session, msg.to, "too many messages waiting for Redis")
            return
        expires = time.time() + self._timeout
        envelope = _wire.SignalEnvelope(
            id=f"{self._id_prefix}{next(self._sequence)}",
            reply_to=self.node_id,
            expires=expires,
            sender=msg.from_,
            extended=session.extended,
            libp2p=session.has_libp2p_id,
            to=msg.to,
            frame=encode_message(msg),
        )
        payload = _wire.encode_inbox(envelope)
        key = _wire.peer_key(self._prefix, msg.to)
        self._outgoing.append(_Outgoing(session, msg.to, key, payload, expires))
        self._wake_sender.set()

    async def run_sender(self) -> None:
        """Write queued messages to Redis, one batch at a time, until cancelled."""
        outgoing = self._outgoing
        while True:
            if not outgoing:
                self._wake_sender = trio.Event()
                await self._wake_sender.wait()
                continue
            batch = [outgoing.popleft() for _ in range(min(MAX_BATCH, len(outgoing)))]
            await self._send(batch)

    async def _send(self, batch: list[_Outgoing]) -> None:
        link, prefix = self._link, self._prefix
        why = ""
        for _attempt in range(2):
            now = time.time()
            if batch[0].expires <= now:  # the oldest first: expired ones lead the batch
                for entry in [e for e in batch if e.expires <= now]:
                    self._unavailable(entry.session, entry.to, "Redis did not answer in time")
                batch = [e for e in batch if e.expires > now]
                if not batch:
                    return
            commands = [
                link.script_command(_wire.ROUTE, [e.key], [prefix, e.payload]) for e in batch
            ]
            try:
                replies = await link.pipeline(*commands)
            except ClusterUnavailable as exc:
                why = str(exc)
                continue  # nothing written, or no answer in time: the whole batch again
            failed: list[_Outgoing] = []
            unknown_script = False
            for entry, reply in zip(batch, replies, strict=True):
                if isinstance(reply, ClusterUnavailable):
                    why = str(reply)
                    failed.append(entry)  # the connection failed: so did every later one
                elif isinstance(reply, ReplyError) and reply.code == "NOSCRIPT":
                    unknown_script = True  # Redis restarted: every later one too
                    why = "Redis lost the routing script"
                    failed.append(entry)
                elif isinstance(reply, ReplyError):
                    self._unavailable(entry.session, entry.to, f"Redis failed: {reply}")
                else:
                    self._routed(entry, reply)
            if not failed:
                return
            batch = failed
            if unknown_script:
                try:
                    await link.command("SCRIPT", "LOAD", _wire.ROUTE)
                except ClusterUnavailable as exc:
                    why = str(exc)
        for entry in batch:
            self._unavailable(entry.session, entry.to, why)

    def _routed(self, entry: _Outgoing, result: Any) -> None:
        receivers, node = int(result[0]), str(result[1])
        if receivers < 0:
            self._sent("unknown_peer")
            self._error(
                entry.session, "unknown_peer", f"peer {entry.to} is not connected", entry.to
            )
        elif receivers == 0:
            self._unavailable(entry.session, entry.to, f"relay node {node} is not listening")
        else:
            self._sent("delivered")

    def _unavailable(self, session: ClusterSession, to: str, why: str) -> None:
        self._sent("unavailable")
        self._error(
            session,
            "cluster_unavailable",
            f"peer {to} cannot be reached through the cluster: {why}",
            to,
        )

    def _error(self, session: ClusterSession, code: str, text: str, ref: str) -> None:
        self._error_sent(code)
        session.send_control(Error(text, code, ref))

    async def ask_release(self, holder: str, peer_id: str, timeout: float) -> bool:
        """Ask the node holding ``peer_id`` (as ``holder``, "<node>|<epoch>") to release
        it if its session there is silent; True once it did. False when it did not, did
        not answer within ``timeout``, or Redis failed."""
        node_id = holder.split("|", 1)[0]
        request = _wire.ReleaseRequest(
            f"{self._id_prefix}{next(self._sequence)}", self.node_id, peer_id, holder
        )
        waiter: list[Any] = [trio.Event(), False]
        self._asked[request.id] = waiter
        try:
            with trio.move_on_after(timeout):
                channel = _wire.inbox_channel(self._prefix, node_id)
                if await self._link.publish(channel, _wire.encode_inbox(request)) == 0:
                    return False
                await waiter[0].wait()
            return bool(waiter[1])
        except ClusterUnavailable:
            return False
        finally:
            del self._asked[request.id]

    async def _answer_release(self, request: _wire.ReleaseRequest) -> None:
        try:
            released = False
            if self.release_if_silent is not None:
                released = await self.release_if_silent(request.peer, request.holder)
            answer = _wire.ReleaseAnswer(request.id, request.peer, released)
            channel = _wire.inbox_channel(self._prefix, request.reply_to)
            await self._link.publish(channel, _wire.encode_inbox(answer))
        except ClusterUnavailable:
            pass  # the asking node times out and refuses the newcomer
        finally:
            self._replying -= 1

    async def _reply(self, node_id: str, msg: _wire.Undeliverable) -> None:
        channel = _wire.inbox_channel(self._prefix, node_id)
        try:
            await self._link.publish(channel, _wire.encode_inbox(msg))
        except ClusterUnavailable:
            pass  # the sender's node does not hear why; its peer gets no answer
        finally:
            self._replying -= 1

    # -- receiving --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the inbox until cancelled, subscribing again whenever Redis comes back.

        Started at once (Redis may be down); ``subscribed`` says whether it listens.
        """
        task_status.started()
        failures = 0
        async with trio.open_nursery() as replies:  # undeliverable notices, never blocking us
            while True:
                try:
                    async with self._link.subscription(self.channel) as payloads:
                        self.subscribed = True
                        self.ready.set()
                        if failures:
                            logger.info("cluster inbox %s subscribed again", self.channel)
                        failures = 0
                        async for payload in payloads:
                            self._dispatch(payload, replies)
                except ClusterUnavailable as exc:
                    if self.subscribed or failures == 0:
                        logger.warning("cluster inbox %s not subscribed: %s", self.channel, exc)
                finally:
                    self.subscribed = False
                await trio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])
                failures += 1

    def _dispatch(self, payload: str, replies: trio.Nursery) -> None:
        try:
            msg = _wire.decode_inbox_untrusted(payload)
        except _wire.ClusterParseError as exc:
            self._received("bad")
            logger.warning("bad inbox message dropped: %s", exc)
            return
        if isinstance(msg, _wire.SignalEnvelope):
            self._deliver(msg, replies)
        elif isinstance(msg, _wire.ReleaseRequest):
            self._received("release")
            if self._replying < MAX_REPLYING:
                self._replying += 1
                replies.start_soon(self._answer_release, msg)
        elif isinstance(msg, _wire.ReleaseAnswer):
            waiter = self._asked.get(msg.id)
            if waiter is not None:
                waiter[1] = msg.released
                waiter[0].set()
        elif isinstance(msg, _wire.Undeliverable):
            self._received("undeliverable")
            session = self._lookup(msg.sender)
            if session is not None:
                self._error(session, msg.code, msg.message, msg.to)
        else:
            handler = self.handlers.get(msg.kind)
            if handler is None:
                self._received("bad")
                logger.warning("inbox message of unknown kind %r dropped", msg.kind[:64])
            else:
                handler(msg)

    def _deliver(self, envelope: _wire.SignalEnvelope, replies: trio.Nursery) -> None:
        if envelope.id in self._seen:
            self._received("duplicate")
            return
        self._seen[envelope.id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        if time.time() > envelope.expires:
            self._received("expired")
            return
        try:
            msg = decode_message_untrusted(envelope.frame)
        except SignalingParseError as exc:
            self._received("bad")
            logger.warning("bad frame in inbox message dropped: %s", exc)
            return
        if not isinstance(msg, _FORWARDED) or msg.from_ != envelope.sender or msg.to != envelope.to:
            self._received("bad")
            logger.warning("inbox frame does not match its envelope: dropped")
            return
        target = self._lookup(envelope.to)
        if target is None:
            code, text = "unknown_peer", f"peer {envelope.to} is not connected"
        elif (envelope.extended and not target.has_libp2p_id) or (
            target.extended and not envelope.libp2p
        ):
            code = INCOMPATIBLE_PEER
            text = (
                f"peer {envelope.to} cannot be reached: darkswap-relay/1 peers and legacy "
                "peers whose id is not a libp2p PeerId are kept apart"
            )
        else:
            self._received("delivered")
            target.send_control(msg)
            return
        self._received(code)
        if self._replying < MAX_REPLYING:
            self._replying += 1
            notice = _wire.Undeliverable(envelope.id, envelope.sender, envelope.to, code, text)
            replies.start_soon(self._reply, envelope.reply_to, notice)

    def _received(self, result: str) -> None:
        counter = self._counters.get(("received", result))
        if counter is None:  # labels() is a lookup under a lock: once per result
            counter = self._counters[("received", result)] = self._metrics.messages_received.labels(
                result=result
            )
        counter.inc()

    def _sent(self, result: str) -> None:
        counter = self._counters.get(("sent", result))
        if counter is None:
            counter = self._counters[("sent", result)] = self._metrics.messages_sent.labels(
                result=result
            )
        counter.inc()
