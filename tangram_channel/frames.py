"""
Phoenix channel frames, as bytes, without any I/O.

Text frames hold JSON: serializer ``2.0.0`` (the default) sends the array
``[join_ref, ref, topic, event, payload]``, serializer ``1.0.0`` the object
``{"topic", "event", "payload", "ref", "join_ref"}``. Binary frames follow Phoenix's
binary serializer: every header length is one byte, so each header field is at most 255
bytes of UTF-8::

    client push       0, jr_len, ref_len, topic_len, event_len, join_ref, ref, topic, event, payload
    server broadcast  2, topic_len, event_len, topic, event, payload

Header fields from a client must be strings of Unicode scalars within ``HeaderLimits``
(a lone surrogate cannot be written as UTF-8, and presence copies refs to every member);
anything else is a ``FrameError`` whose reply echoes only the fields that passed.

A payload from a client is re-encoded without loss for Redis: key order, strings and
integers of any size survive. A payload from Redis is never decoded into objects: its
bytes are spliced into the frame once and the same frame goes to every member.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import simdjson

V1 = "1.0.0"
V2 = "2.0.0"
VERSIONS = (V1, V2)

_PUSH = 0
_BROADCAST = 2


class FrameError(Exception):
    """
    A frame that cannot be understood. ``reason`` is what the client is told; ``ref``
    and the other header fields are set when the frame carried them usable (strings
    within their caps), so the error can be answered without echoing anything else.
    ``header_read``: the frame had a header, refused field by field, so it is answered
    even where no ref could be kept.
    """

    def __init__(
        self,
        reason: str,
        join_ref: str | None = None,
        ref: str | None = None,
        topic: str | None = None,
        header_read: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.join_ref = join_ref
        self.ref = ref
        self.topic = topic
        self.header_read = header_read

    @property
    def answerable(self) -> bool:
        """Whether the client gets an error reply (with the usable fields, null for the rest)."""
        return self.header_read or self.ref is not None


@dataclass(frozen=True)
class HeaderLimits:
    """
    Caps, in bytes of UTF-8, on what a client names: presence copies refs and ids to
    every member, and refs come back in every reply. ``id`` caps the token's client id.
    The defaults are far above what phoenix.js and Tangram's frontend ever send.
    """

    topic: int = 256
    event: int = 256
    ref: int = 64
    id: int = 128


DEFAULT_LIMITS = HeaderLimits()


def field_problem(name: str, value: str, cap: int) -> str | None:
    """
    Why ``value`` cannot be the header field ``name``, in a sentence: not a string of
    Unicode scalars (a lone surrogate, which JSON's ``\\u`` escapes allow, cannot be
    written as UTF-8), or over ``cap`` bytes of UTF-8. None if it can.
    """
    # UTF-8 is never shorter than the text, so a 1 MiB ref is refused without encoding it
    if len(value) > cap:
        return f"{name} is longer than {cap} bytes"
    if value.isascii():
        return None
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{name} is not valid Unicode (it holds a lone surrogate)"
    return f"{name} is longer than {cap} bytes" if size > cap else None


# a message from a client always names its topic; an error reply to a frame whose topic
# could not be read echoes null (``Message[str | None]``)
Topic = TypeVar("Topic", bound=str | None, covariant=True)


@dataclass(frozen=True)
class Message(Generic[Topic]):
    """One Phoenix message. ``payload`` is a JSON value, or ``bytes`` for a binary push."""

    join_ref: str | None
    ref: str | None
    topic: Topic
    event: str
    payload: Any


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


# made once: json.loads and json.dumps build a new decoder or encoder on every call
# that passes options, and these run for every message
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"))


def loads(data: bytes | str) -> Any:
    """Strict JSON in UTF-8: no NaN or Infinity, no float that overflows to infinity."""
    return _DECODER.decode(data.decode("utf-8") if isinstance(data, bytes) else data)


def dumps(value: Any) -> bytes:
    """
    Compact UTF-8 JSON. Strings holding lone surrogates (legal in JSON's ``\\u``
    escapes, illegal in UTF-8) are written as escapes instead of failing.
    """
    text = _ENCODER.encode(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _ASCII_ENCODER.encode(value).encode("ascii")


def _ref_problem(name: str, value: Any, cap: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return f"{name} must be a string or null"
    return field_problem(name, value, cap)


def _name_problem(name: str, value: Any, cap: int) -> str | None:
    if not isinstance(value, str) or not value:
        return f"{name} must be a non-empty string"
    return field_problem(name, value, cap)


def _usable(value: Any, cap: int) -> str | None:
    """``value`` if a reply may echo it: a string of Unicode scalars within ``cap``."""
    return value if isinstance(value, str) and field_problem("", value, cap) is None else None


def _addressed(error: FrameError, fields: dict[str, Any], limits: HeaderLimits) -> FrameError:
    """``error`` with the header fields among ``fields`` that its reply may echo."""
    error.join_ref = _usable(fields.get("join_ref"), limits.ref)
    error.ref = _usable(fields.get("ref"), limits.ref)
    error.topic = _usable(fields.get("topic"), limits.topic) or None
    return error


def _validated(join_ref: Any, ref: Any, topic: Any, event: Any, payload: Any, limits: HeaderLimits) -> Message[str]:
    """Check the header fields' types and caps; an error keeps those a reply may echo."""
    reason = (
        _ref_problem("join_ref", join_ref, limits.ref)
        or _ref_problem("ref", ref, limits.ref)
        or _name_problem("topic", topic, limits.topic)
        or _name_problem("event", event, limits.event)
    )
    if reason is None:
        return Message(join_ref, ref, topic, event, payload)
    fields = {"join_ref": join_ref, "ref": ref, "topic": topic}
    raise _addressed(FrameError(reason, header_read=True), fields, limits)


def decode_text(data: bytes, vsn: str, limits: HeaderLimits = DEFAULT_LIMITS) -> Message[str]:
    """Parse a text frame of serializer ``vsn``."""
    try:
        value = loads(data)
    except (ValueError, RecursionError) as e:
        raise FrameError(f"invalid JSON: {e}"[:200]) from None
    if vsn == V1:
        if not isinstance(value, dict):
            raise FrameError("a 1.0.0 frame must be a JSON object")
        if not {"topic", "event", "payload", "ref"} <= value.keys():
            raise _addressed(FrameError("a 1.0.0 frame needs topic, event, payload and ref"), value, limits)
        return _validated(
            value.get("join_ref"), value["ref"], value["topic"], value["event"], value["payload"], limits
        )
    if not isinstance(value, list) or len(value) != 5:
        error = FrameError("a 2.0.0 frame must be an array of 5 elements")
        if isinstance(value, list):
            raise _addressed(error, dict(zip(("join_ref", "ref", "topic"), value)), limits)
        raise error
    join_ref, ref, topic, event, payload = value
    return _validated(join_ref, ref, topic, event, payload, limits)


def decode_binary(data: bytes, limits: HeaderLimits = DEFAULT_LIMITS) -> Message[str]:
    """Parse a binary push from a client."""
    if len(data) < 5 or data[0] != _PUSH:
        raise FrameError("binary frame is not a push")
    lengths = data[1:5]
    start = 5
    fields: list[str] = []
    problem = None
    for length in lengths:
        end = start + length
        if end > len(data):
            problem = "binary frame is shorter than its header says"
            break
        try:
            fields.append(data[start:end].decode("utf-8"))
        except UnicodeDecodeError:
            problem = "binary frame header is not UTF-8"
            break
        start = end
    if problem is not None:
        # the fields before the bad one can still address the error reply
        usable = dict(zip(("join_ref", "ref", "topic"), (field or None for field in fields)))
        raise _addressed(FrameError(problem), usable, limits)
    join_ref, ref, topic, event = fields
    return _validated(join_ref or None, ref or None, topic, event, data[start:], limits)


def encode(message: Message[str | None], vsn: str) -> bytes:
    """A text frame for one client."""
    if vsn == V1:
        return dumps(
            {
                "topic": message.topic,
                "event": message.event,
                "payload": message.payload,
                "ref": message.ref,
                "join_ref": message.join_ref,
            }
        )
    return dumps([message.join_ref, message.ref, message.topic, message.event, message.payload])


def reply(
    join_ref: str | None, ref: str | None, topic: str | None, status: str, response: Any
) -> Message[str | None]:
    return Message(join_ref, ref, topic, "phx_reply", {"status": status, "response": response})


# documents up to this size are checked by one parser kept for the process (its
# buffers grow to the largest document it has checked and stay so); a larger one gets a
# parser of its own, freed with it
PARSER_KEEPS_BYTES = 64 * 1024
_PARSER = simdjson.Parser(max_capacity=PARSER_KEEPS_BYTES)


def is_json_document(payload: bytes) -> bool:
    """
    Whether a Redis payload is a JSON object or array in valid UTF-8 (sent as text).

    Every message from Redis is checked, so it is checked without being decoded:
    simdjson validates in place, where orjson built every value as a Python object
    (2 KB of aircraft state: 1.8 against 5.7 us, and 52-76 with ``json``). What
    simdjson refuses is asked of ``loads`` too, whose rules stay the ones that count:
    simdjson refuses escaped lone surrogates, which JSON and browsers allow, and
    integers past 64 bits.
    """
    head = payload[:1]
    if head not in (b"{", b"[") and payload.lstrip()[:1] not in (b"{", b"["):
        return False
    parser = _PARSER if len(payload) <= PARSER_KEEPS_BYTES else simdjson.Parser()
    try:
        parser.parse(payload)  # the document it answers is dropped at once: the parser is free again
        return True
    except (ValueError, RuntimeError):
        pass
    try:
        loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return True


class Broadcast:
    """
    One message for every member of a topic, encoded at most once per serializer.

    ``payload`` is JSON bytes when ``is_text``, else raw bytes for a binary frame, whose
    one-byte header lengths are checked here: a Broadcast can always be framed.
    """

    __slots__ = ("topic", "event", "payload", "is_text", "_frames")

    def __init__(self, topic: str, event: str, payload: bytes, is_text: bool) -> None:
        if not is_text and (len(topic.encode("utf-8")) > 255 or len(event.encode("utf-8")) > 255):
            raise FrameError("topic or event longer than 255 bytes cannot be sent in a binary frame")
        self.topic = topic
        self.event = event
        self.payload = payload
        self.is_text = is_text
        self._frames: dict[str, bytes] | None = None  # made on first use: most go to one socket, framed directly

    @classmethod
    def from_value(cls, topic: str, event: str, value: Any) -> Broadcast:
        return cls(topic, event, dumps(value), True)

    def frame(self, vsn: str) -> bytes:
        """The frame bytes for serializer ``vsn``."""
        key = vsn if self.is_text else "binary"
        cached = self._frames
        if cached is None:
            cached = self._frames = {}
        frame = cached.get(key)
        if frame is None:
            frame = b"".join(self.text_parts(vsn)) if self.is_text else self._binary_frame()
            cached[key] = frame
        return frame

    def text_parts(self, vsn: str) -> tuple[bytes, bytes, bytes]:
        """A text broadcast's frame for ``vsn`` in parts (``splice_parts``), for a caller that adds a header."""
        return splice_parts(None, self.topic, self.event, self.payload, vsn)

    def _binary_frame(self) -> bytes:
        topic, event = self.topic.encode("utf-8"), self.event.encode("utf-8")
        return bytes((_BROADCAST, len(topic), len(event))) + topic + event + self.payload


class Burst:
    """
    Broadcasts to one topic that go to each member together, in order, in one write.

    ``prepared`` is for the transport layer to cache its own framing of the whole burst
    per serializer, so that framing too is paid once, not once per member.
    """

    __slots__ = ("broadcasts", "prepared")

    def __init__(self, broadcasts: list[Broadcast]) -> None:
        self.broadcasts = broadcasts
        self.prepared: dict[str, bytes] = {}


# strings JSON writes as they are, between quotes: printable ASCII but " and \
_PLAIN = re.compile(r'[ !#-\[\]-~]*')


# names whose broadcast head is remembered (``_broadcast_head``): longer ones are rare
# and each would hold its own bytes in the cache
_HEAD_NAME_LIMIT = 512


@functools.lru_cache(maxsize=4096)
def _broadcast_head(topic: str, event: str) -> bytes | None:
    """``[null,null,"<topic>","<event>",`` when both need no escaping, else None."""
    if _PLAIN.fullmatch(topic) and _PLAIN.fullmatch(event):
        return b'[null,null,"%s","%s",' % (topic.encode(), event.encode())
    return None


def splice(join_ref: str | None, topic: str, event: str, payload: bytes, vsn: str) -> bytes:
    """A server push (no ``ref``) around payload JSON that is already encoded."""
    # one copy of the payload, not one per ``+``: a presence_state may be megabytes
    return b"".join(splice_parts(join_ref, topic, event, payload, vsn))


def splice_parts(join_ref: str | None, topic: str, event: str, payload: bytes, vsn: str) -> tuple[bytes, bytes, bytes]:
    """
    ``splice``'s push as what goes before the payload, the payload and what goes after,
    for a caller that joins them with more (a WebSocket header): the payload is copied once.
    """
    if vsn == V2 and join_ref is None and len(topic) + len(event) <= _HEAD_NAME_LIMIT:
        # a broadcast's usual head, made once per topic and event, not once per message
        head = _broadcast_head(topic, event)
        if head is not None:
            return head, payload, b"]"
    if vsn == V1:
        return (
            b'{"topic":%s,"event":%s,"payload":' % (dumps(topic), dumps(event)),
            payload,
            b',"ref":null,"join_ref":%s}' % dumps(join_ref),
        )
    return dumps([join_ref, None, topic, event])[:-1] + b",", payload, b"]"
