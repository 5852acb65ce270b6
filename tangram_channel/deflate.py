"""
permessage-deflate (RFC 7692) as this service speaks it, without I/O.

The service answers every offer it takes with ``server_no_context_takeover``: each
message it sends is a raw-deflate stream of its own, so a broadcast is compressed once
and the same frame bytes go to every compressing member, as the uncompressed frame
does. No socket keeps a compressor. It asks for ``client_no_context_takeover``, so the
inflater a socket needs for a compressed message from its client is freed once that
message is read (``LeanDeflate``); an idle socket holds no zlib state at all.

Inflation is bounded by ``max_message_size`` here, whatever the Autobahn: a message is
inflated at most one byte past what is left of it, and one that passes it closes the
socket with 1009 (``LeanDeflate.decompress_message_data``). Autobahn 24.4 inflated each
frame up to the limit and did not count across frames (GHSA-hxp9-w8x3-p566); later ones
bound it as this does.

Messages shorter than ``Compression.min_size`` go out uncompressed (RSV1 clear), as
does any message deflate would not make smaller.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from autobahn.websocket.compress import (
    PerMessageDeflate,
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)

# zlib's default: Tangram-shaped state JSON shrinks to 0.15x in about 0.5 ms per 55 KB, paid once per broadcast
LEVEL = 6
MAX_WINDOW_BITS = 15
_TAIL = b"\x00\x00\xff\xff"


@dataclass(frozen=True)
class Compression:
    """Whether to negotiate permessage-deflate, and the smallest message worth compressing."""

    enabled: bool = True
    min_size: int = 256


def deflate(payload: bytes, window_bits: int = MAX_WINDOW_BITS) -> bytes:
    """``payload`` as one message's compressed data: a fresh raw-deflate stream, its sync-flush tail removed."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -window_bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[: -len(_TAIL)]


def server_frame(payload: bytes, is_binary: bool, compressed: bool = False) -> bytes:
    """
    One unmasked WebSocket frame (RFC 6455 5.2), as autobahn's ``PreparedMessage``
    builds it, without its object per frame: a broadcast is framed once, but once per
    message. ``compressed``: ``payload`` is deflated data, flagged with RSV1.
    """
    return frame_header(len(payload), is_binary, compressed) + payload


def text_frame_around(head: bytes, payload: bytes, tail: bytes) -> bytes:
    """``server_frame`` of a text message in three parts, each copied once (``frames.splice_parts``)."""
    return b"".join((frame_header(len(head) + len(payload) + len(tail), False), head, payload, tail))


_SHORT_SIZE = struct.Struct("!BBH").pack
_LONG_SIZE = struct.Struct("!BBQ").pack


def frame_header(size: int, is_binary: bool, compressed: bool = False) -> bytes:
    """The header of ``server_frame``, for a payload of ``size`` bytes written after it."""
    opcode = (0x82 if is_binary else 0x81) | (0x40 if compressed else 0)
    if size < 126:
        return bytes((opcode, size))
    if size < 65536:
        return _SHORT_SIZE(opcode, 126, size)
    return _LONG_SIZE(opcode, 127, size)


def compressed_frame(payload: bytes, is_binary: bool, window_bits: int, min_size: int) -> bytes:
    """A frame of ``payload`` deflated, or plain if it is under ``min_size`` or deflate does not shrink it."""
    if len(payload) >= min_size:
        data = deflate(payload, window_bits)
        if len(data) < len(payload):
            return server_frame(data, is_binary, compressed=True)
    return server_frame(payload, is_binary)


def accept_offer(offers: list[Any], max_message_size: int) -> PerMessageDeflateOfferAccept | None:
    """
    The first permessage-deflate offer, accepted with no context takeover
    both ways (``SharedFrameAccept``), or None. Autobahn's factory calls this during the
    opening handshake with the offers it parsed.
    """
    for offer in offers:
        if not isinstance(offer, PerMessageDeflateOffer):
            continue
        # Autobahn parses only windows raw deflate can compress with (9 to 15 bits)
        return SharedFrameAccept(
            offer,
            request_no_context_takeover=offer.accept_no_context_takeover,
            no_context_takeover=True,
            window_bits=offer.request_max_window_bits or MAX_WINDOW_BITS,
            max_message_size=max_message_size,
        )
    return None


class SharedFrameAccept(PerMessageDeflateOfferAccept):
    """
    Autobahn's accept, whose response names ``server_no_context_takeover`` even when the
    client did not ask (RFC 7692 7.1.1.1 allows it): Autobahn writes it only when asked,
    and without it a client could expect context carried from one message to the next.
    """

    def get_extension_string(self) -> str:
        response: str = super().get_extension_string()
        if self.no_context_takeover and not self.offer.request_no_context_takeover:
            response += "; server_no_context_takeover"
        return response


class LeanDeflate(PerMessageDeflate):
    """
    Autobahn's permessage-deflate for one socket, keeping no zlib object between
    messages when neither side takes context over: an idle socket then costs nothing.
    """

    @classmethod
    def adopt(cls, negotiated: PerMessageDeflate) -> LeanDeflate:
        """Ours, with the parameters Autobahn negotiated."""
        return cls(
            negotiated._is_server,
            negotiated.server_no_context_takeover,
            negotiated.client_no_context_takeover,
            negotiated.server_max_window_bits,
            negotiated.client_max_window_bits,
            negotiated.mem_level,
            negotiated.max_message_size,
        )

    # what a message past max_message_size (the socket closes with 1009), and one that
    # does not inflate (1007), are reported to: set by the socket
    too_large: Callable[[int], None] = staticmethod(lambda inflated: None)
    corrupt: Callable[[str], object] = staticmethod(lambda why: None)
    _inflated = 0  # bytes of the current message inflated so far
    _refused = False  # the current message passed the limit: the rest is not inflated

    def start_decompress_message(self) -> None:
        super().start_decompress_message()
        self._inflated = 0
        self._refused = False

    def decompress_message_data(self, data: bytes, max_output_len: int | None = None) -> bytes:
        """
        ``data`` inflated, at most one byte past what the message has left: a message
        that would pass ``max_message_size`` costs no more than it, however it deflates
        (1 MB of zeros deflates to 1 KB).
        """
        if self._refused:
            return b""
        left = (self.max_message_size or 2**62) - self._inflated
        if max_output_len is not None:
            left = min(left, max_output_len)
        try:
            out: bytes = self._decompressor.decompress(data, max(left, 0) + 1)
        except zlib.error as error:
            self._refused = True
            self.corrupt(f"received WebSocket message cannot be decompressed: {error}")
            return b""
        self._inflated += len(out)
        if len(out) > left:
            self._refused = True
            self.too_large(self._inflated)
            return b""
        return out

    def end_decompress_message(self) -> None:
        if not self._refused:  # a refused message's stream was left midway
            super().end_decompress_message()
        if self._is_server and self.client_no_context_takeover:
            self._decompressor = None

    def end_compress_message(self) -> bytes:
        data: bytes = super().end_compress_message()
        if self._is_server and self.server_no_context_takeover:
            self._compressor = None
        return data
