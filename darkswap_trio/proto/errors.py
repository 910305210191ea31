"""The ParseError family: the only exceptions a parser of untrusted input may raise.

Every function that reads bytes or text from the network (named ``*_untrusted`` or
documented as such) converts whatever goes wrong inside it into a subclass of
:class:`ParseError`, so callers can contain bad input with a single ``except``.
"""

from __future__ import annotations


class ParseError(ValueError):
    """Untrusted input could not be parsed or violates the protocol."""


class SignalingParseError(ParseError):
    """A signaling frame (JSON or binary) is malformed.

    ``code`` is the protocol error code to answer with (docs/PROTOCOL.md section 6).
    """

    code: str = "bad_frame"


class PeerIdError(ParseError):
    """A peer id string is not a valid libp2p PeerId."""


class StunParseError(ParseError):
    """A STUN message is malformed."""


class DtlsParseError(ParseError):
    """A DTLS record is malformed."""


class SctpParseError(ParseError):
    """An SCTP packet or chunk is malformed."""


class DcepParseError(ParseError):
    """A DCEP message is malformed."""


class SdpParseError(ParseError):
    """An SDP description is malformed."""


class WebSocketParseError(ParseError):
    """A WebSocket handshake or frame is malformed."""


class TurnParseError(ParseError):
    """A TURN message (STUN-framed request or indication, ChannelData, TCP framing) is malformed."""


class GossipParseError(ParseError):
    """A topic (gossip) frame is malformed."""
