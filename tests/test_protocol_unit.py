"""The pure parts of the WebSocket layer: the Phoenix 1.8 subprotocol token and the bad-frame counter."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from autobahn.websocket.protocol import PreparedMessage

from tangram_channel import protocol
from tangram_channel.frames import V1, V2, FrameError, splice, splice_parts
from tangram_channel.deflate import server_frame, text_frame_around
from tangram_channel.protocol import PhoenixFactory, subprotocol_token

from .fakes import World, offered, rejected_frames


@pytest.mark.parametrize("token", ["a", "ab", "abc", "eyJhbGciOiJIUzI1NiJ9.e30.sig", "tôken/+?"])
def test_the_subprotocol_token_is_decoded_without_padding(token: str) -> None:
    assert subprotocol_token(["phoenix", offered(token)]) == token


@pytest.mark.parametrize(
    "protocols",
    [
        [],
        ["phoenix"],
        ["phoenix", "bearer.phx.abc"],
        ["phoenix", "base64url.bearer.phx." + base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("=")],
    ],
)
def test_no_or_unreadable_subprotocol_token_is_none(protocols: list[str]) -> None:
    assert subprotocol_token(protocols) is None


def test_bad_frames_are_counted_and_logged_at_most_once_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World()
    factory = PhoenixFactory(hub=world.hub, clock=world.clock)
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(protocol.log, "observer", events.append)
    for _ in range(5):
        factory.frame_rejected(FrameError("invalid JSON"))
        world.clock.advance(10)
    assert rejected_frames(factory.metrics) == 5
    assert len(events) == 1
    world.clock.advance(20)
    factory.frame_rejected(FrameError("invalid JSON"))
    assert rejected_frames(factory.metrics) == 6
    assert len(events) == 2


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
@pytest.mark.parametrize("is_binary", [False, True])
def test_a_broadcast_is_framed_as_autobahn_frames_it(size: int, is_binary: bool) -> None:
    """Each length encoding of RFC 6455 (7 bits, 16, 64) and both opcodes, byte for byte."""
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    expected = PreparedMessage(payload, is_binary, applyMask=False, doNotCompress=True).payloadHybi
    assert server_frame(payload, is_binary) == expected


@pytest.mark.parametrize("size", [0, 90, 126, 65535, 65536])
@pytest.mark.parametrize("vsn", [V1, V2])
@pytest.mark.parametrize("topic", ["streaming-c1", 'a"b\\c', "salle:été"])
def test_a_text_frame_around_a_push_is_the_frame_of_the_whole_push(size: int, vsn: str, topic: str) -> None:
    """The direct framing of a push (its parts copied once) is byte for byte autobahn's frame of ``splice``."""
    payload = b'{"pad":"%s"}' % (b"x" * size)
    whole = splice(None, topic, "tick", payload, vsn)
    expected = PreparedMessage(whole, False, applyMask=False, doNotCompress=True).payloadHybi
    assert text_frame_around(*splice_parts(None, topic, "tick", payload, vsn)) == expected
