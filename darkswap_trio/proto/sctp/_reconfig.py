"""RFC 6525 stream reset, the part WebRTC uses to close data channels.

Outgoing: streams queued by ``reset_streams`` wait until none of their messages is
still unsent (the request names the last TSN assigned), then one request is
outstanding at a time, retransmitted on its timer with the same sequence number
until the peer answers "performed" / "nothing to do" / a denial.
Incoming: a peer request is performed once every TSN up to its ``last_tsn`` has
arrived; until then the peer is told "in progress" and the reset waits here.
"""

from __future__ import annotations

from collections import deque

from ._chunks import OutgoingResetRequest, ReconfigChunk, ReconfigResponse, UnknownReconfigParam
from ._events import OutgoingStreamsReset, SctpEvent, StreamsReset
from ._sender import SctpSender
from ._streams import MASK32, SctpReceiver, unwrap32

RESULT_NOTHING_TO_DO = 0
RESULT_PERFORMED = 1
RESULT_DENIED = 2
RESULT_BAD_SEQUENCE = 5
RESULT_IN_PROGRESS = 6


class StreamResetter:
    """Both directions of stream reset; writes RE-CONFIG chunks into ``control``."""

    def __init__(self, sender: SctpSender, events: deque[SctpEvent], control: list[bytes]) -> None:
        self._sender = sender
        self._events = events
        self._control = control
        self._receiver: SctpReceiver | None = None
        self.queued: list[int] = []  # outgoing streams waiting for a request
        self.outstanding: OutgoingResetRequest | None = None
        self.deadline: float | None = None
        self._backoff = 1
        self._next_request_seq = 0
        self._expected_peer_seq = 0
        self._deferred: OutgoingResetRequest | None = None  # peer request awaiting data
        self._last_response: ReconfigResponse | None = None

    def start(self, local_initial_tsn: int, receiver: SctpReceiver) -> None:
        """The association is set up: sequence numbers start at the initial TSNs."""
        self._receiver = receiver
        self._next_request_seq = local_initial_tsn & MASK32
        self._expected_peer_seq = (receiver.cum_tsn + 1) & MASK32

    # --- outgoing --------------------------------------------------------------------

    def request(self, stream_ids: list[int]) -> None:
        for sid in stream_ids:
            if sid not in self.queued:
                self.queued.append(sid)

    def poll(self, now: float) -> None:
        """Send a request for the queued streams whose data has all been handed out."""
        if self.outstanding is not None or not self.queued or self._receiver is None:
            return
        ready = tuple(s for s in self.queued if not self._sender.has_unsent(s))
        if not ready:
            return
        self.outstanding = OutgoingResetRequest(
            self._next_request_seq,
            (self._expected_peer_seq - 1) & MASK32,
            (self._sender.next_tsn - 1) & MASK32,
            ready,
        )
        self._backoff = 1
        self._send(self.outstanding)
        self.deadline = now + self._sender.rtt.rto

    def handle_timeout(self, now: float) -> None:
        self._backoff = min(self._backoff * 2, 64)
        self.deadline = now + min(self._sender.rtt.rto * self._backoff, self._sender.rtt.rto_max)
        if self.outstanding is not None:
            self._send(self.outstanding)

    def _on_response(self, response: ReconfigResponse) -> None:
        request = self.outstanding
        if request is None or response.response_seq != request.request_seq:
            return
        if response.result == RESULT_IN_PROGRESS:
            return  # the timer retransmits the request later
        self.outstanding = None
        self.deadline = None
        self._next_request_seq = (self._next_request_seq + 1) & MASK32
        accepted = response.result in (RESULT_PERFORMED, RESULT_NOTHING_TO_DO)
        if accepted:
            self._sender.reset_ssn(request.streams)
        self.queued = [s for s in self.queued if s not in request.streams]
        self._events.append(OutgoingStreamsReset(request.streams, accepted))

    # --- incoming --------------------------------------------------------------------

    def handle_chunk(self, chunk: ReconfigChunk) -> None:
        for param in chunk.params:
            if isinstance(param, OutgoingResetRequest):
                self._on_request(param)
            elif isinstance(param, ReconfigResponse):
                self._on_response(param)
            elif param.param_type in (14, 15, 17, 18) and len(param.value) >= 4:
                # Incoming/TSN reset and stream additions are not implemented: denied.
                self._respond(int.from_bytes(param.value[:4], "big"), RESULT_DENIED)

    def _on_request(self, request: OutgoingResetRequest) -> None:
        seq = request.request_seq
        if seq == self._expected_peer_seq:
            self._expected_peer_seq = (seq + 1) & MASK32
            if self._deferred is not None:
                # A new request while one waits: the old one is answered as a denial.
                self._respond(self._deferred.request_seq, RESULT_DENIED)
            self._deferred = request
            if not self.after_data():
                self._respond(seq, RESULT_IN_PROGRESS)
        elif seq == (self._expected_peer_seq - 1) & MASK32:
            # A retransmission: answer again.
            if self._deferred is not None and self._deferred.request_seq == seq:
                self._respond(seq, RESULT_IN_PROGRESS)
            elif self._last_response is not None and self._last_response.response_seq == seq:
                self._send(self._last_response)
        else:
            self._respond(seq, RESULT_BAD_SEQUENCE)

    def after_data(self) -> bool:
        """Perform a deferred peer request once its data is in; True if performed."""
        request = self._deferred
        receiver = self._receiver
        if request is None or receiver is None:
            return False
        if unwrap32(request.last_tsn, receiver.cum_tsn) > receiver.cum_tsn:
            return False
        self._deferred = None
        receiver.reset_streams(request.streams)
        self._events.append(StreamsReset(request.streams))
        self._respond(request.request_seq, RESULT_PERFORMED)
        return True

    def _respond(self, seq: int, result: int) -> None:
        response = ReconfigResponse(seq, result)
        if result != RESULT_IN_PROGRESS:
            self._last_response = response
        self._send(response)

    def _send(self, param: OutgoingResetRequest | ReconfigResponse | UnknownReconfigParam) -> None:
        self._control.append(ReconfigChunk([param]).encode())
