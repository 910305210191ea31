"""SCTP over DTLS (RFC 8261, RFC 9260) as a sans-IO association: chunks, handshake, sender, receiver, stream reset.

Drivers use only the names below; the underscored modules are the association's parts."""

from ._association import SctpAssociation as SctpAssociation
from ._chunks import Chunk as Chunk
from ._chunks import DataChunk as DataChunk
from ._events import BufferedAmountLow as BufferedAmountLow
from ._events import Closed as Closed
from ._events import Connected as Connected
from ._events import MessageReceived as MessageReceived
from ._events import OutgoingStreamsReset as OutgoingStreamsReset
from ._events import SctpEvent as SctpEvent
from ._events import SctpState as SctpState
from ._events import SctpStatistics as SctpStatistics
from ._events import StreamsReset as StreamsReset
from ._packets import CommonHeader as CommonHeader
from ._packets import parse_packet_untrusted as parse_packet_untrusted
