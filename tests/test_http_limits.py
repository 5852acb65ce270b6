"""
What a live ``twistd`` service reads of an HTTP request, and how long it waits for it:
bodies over the limit are refused before they are read, a request head dribbled byte by
byte and an idle keep-alive connection are closed, and ``max_connections_per_ip`` caps
the connections of one address, HTTP and WebSocket alike.
"""

from __future__ import annotations

import io
import json
import selectors
import socket
import time
import urllib.request
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tangram_channel.protocol import PhoenixFactory
from tangram_channel.web import MAX_TOKEN_REQUEST, PeerConnections, make_site

from .fakes import World
from .live import RawSocket, reply_status, start_twistd, token
from .waiting import wait_until


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the service sends until it closes the connection (10 s at most)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def readable(sock: socket.socket, timeout: float) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(timeout))


@pytest.fixture
def service(twistd, flushed_redis):
    return start_twistd(
        twistd, "--redis-url", flushed_redis.url, datetime_interval=0, request_head_timeout=0.5, http_idle_timeout=1
    )


@pytest.mark.parametrize("path", ["/token", "/websocket?vsn=2.0.0", "/no/such/path"])
def test_a_declared_oversized_body_is_refused_before_it_is_sent(service, path):
    sock = connect(service.port)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n"
        "Content-Type: application/json\r\nContent-Length: 300000000\r\n\r\n".encode()
    )
    # not a byte of the body sent: the answer and the close come on the headers alone
    answer = read_until_closed(sock)
    status, body = status_and_body(answer)
    assert status == 413
    assert str(MAX_TOKEN_REQUEST) in json.loads(body)["error"]
    assert b"\r\naccess-control-allow-origin: *\r\n" in answer  # a page can read why


def test_a_long_poll_batch_may_be_as_large_as_max_message_size_and_no_larger(twistd, flushed_redis):
    """
    A long-poll POST carries frames: its bound is max_message_size, not the 64 KiB of the
    other paths (the channel reads the request target from twisted.web's ``_path``).
    """
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0, max_message_size=200_000)
    for path in ("/longpoll", "/socket/longpoll", "/websocket/longpoll"):
        sock = connect(service.port)
        sock.sendall(
            f"POST {path}?vsn=2.0.0&token=gone HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
            f"Content-Length: 100000\r\nConnection: close\r\n\r\n".encode() + b"[" * 100_000
        )
        status, body = status_and_body(read_until_closed(sock))
        assert (status, json.loads(body)) == (200, {"status": 410}), path
    sock = connect(service.port)
    sock.sendall(
        b"POST /longpoll?vsn=2.0.0&token=gone HTTP/1.1\r\nHost: x\r\nContent-Length: 200001\r\n\r\n"
    )
    status, body = status_and_body(read_until_closed(sock))
    assert status == 413 and "200000" in json.loads(body)["error"]


def test_a_chunked_body_is_refused_as_it_grows_past_the_limit(service):
    sock = connect(service.port)
    sock.sendall(
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"
    sent = 0
    try:
        # never the last chunk: only a service that stops reading answers at all
        while not readable(sock, 0.01) and sent < 64 * MAX_TOKEN_REQUEST:
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, body = status_and_body(read_until_closed(sock))
    assert status == 413
    assert json.loads(body)["error"]
    # the service still serves the next client
    neighbour = connect(service.port)
    neighbour.sendall(b'POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 19\r\n'
                      b'Connection: close\r\n\r\n{"channel": "room"}')
    status, body = status_and_body(read_until_closed(neighbour))
    assert status == 200 and json.loads(body)["channel"] == "room"
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{service.port}/metrics", timeout=10).read().decode()
    assert 'tangram_channel_http_refusals_total{reason="body too large"} 1.0' in metrics


def test_a_dribbled_upgrade_is_closed_at_the_head_deadline_and_spares_open_sockets(service):
    neighbour = RawSocket(service.port)
    neighbour.join_ok("room", token("room", "neighbour"))
    slow = connect(service.port)
    slow.sendall(b"GET /websocket?vsn=2.0.0 HTTP/1.1\r\n")
    started = time.monotonic()
    answer = b""
    try:
        # one header line every 0.1 s: never silent long enough for an idle timeout
        while time.monotonic() - started < 20 and not readable(slow, 0.1):
            slow.sendall(b"X-Slow: 1\r\n")
        answer = read_until_closed(slow)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert answer.startswith(b"HTTP/1.1 408 ")
    # the neighbour has been open far longer than the head deadline
    ref = neighbour.push("room", "talk", {"still": "here"})
    assert reply_status(neighbour.reply(ref)) == "ok"


def test_an_idle_keep_alive_connection_is_closed(service):
    sock = connect(service.port)
    sock.settimeout(20)
    sock.sendall(b"GET /no/such/path HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = read_until_closed(sock)  # the 404, then the close after http_idle_timeout
    assert answer.startswith(b"HTTP/1.1 404 ")


def test_connections_past_max_connections_per_ip_are_closed_at_accept(twistd, flushed_redis):
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0, max_connections_per_ip=2)
    websocket = RawSocket(service.port)
    assert websocket.status == 101
    keep_alive = connect(service.port)
    keep_alive.sendall(b"GET /no/such/path HTTP/1.1\r\nHost: x\r\n\r\n")
    assert keep_alive.recv(65536).startswith(b"HTTP/1.1 404 ")
    assert read_until_closed(connect(service.port)) == b""  # a third, of either kind, is refused
    websocket.close()

    def answered() -> bool:
        sock = connect(service.port)
        sock.sendall(b"GET /no/such/path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return read_until_closed(sock).startswith(b"HTTP/1.1 404 ")

    # the WebSocket's place is free once the service has seen it close
    wait_until(answered, 10, "the closed WebSocket's place to be free")
    second_websocket = RawSocket(service.port)
    assert second_websocket.status == 101
    assert read_until_closed(connect(service.port)) == b""


def test_peer_connections_count_each_address_up_to_the_limit():
    peers = PeerConnections(2)
    assert peers.admit("10.0.0.1") and peers.admit("10.0.0.1")
    assert not peers.admit("10.0.0.1")
    assert peers.admit("10.0.0.2")
    peers.release("10.0.0.1")
    assert peers.admit("10.0.0.1")


# the channel in memory, on a fake clock


def channel_on(clock: Clock, **limits: Any) -> tuple[Any, StringTransport]:
    world = World()
    site = make_site(factory=PhoenixFactory(hub=world.hub, clock=clock), tokens=world.tokens, reactor=clock, **limits)
    channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def test_a_chunked_body_is_held_in_memory_and_only_up_to_the_limit():
    channel, transport = channel_on(Clock())
    channel.dataReceived(b"POST /token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    channel.dataReceived(b"%x\r\n" % (4 * MAX_TOKEN_REQUEST) + b" " * (4 * MAX_TOKEN_REQUEST) + b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert transport.disconnecting
    content = channel.requests[-1].content
    assert isinstance(content, io.BytesIO) and len(content.getvalue()) == MAX_TOKEN_REQUEST + 1


def test_an_oversized_body_gets_no_100_continue_but_413():
    channel, transport = channel_on(Clock())
    channel.dataReceived(b"POST /token HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 65537\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in transport.value()
    assert transport.disconnecting


def test_the_head_deadline_runs_from_the_first_byte_to_the_end_of_the_headers():
    clock = Clock()
    channel, transport = channel_on(clock, request_head_timeout=10)
    clock.advance(30)  # silence before the first byte is the idle timeout's business
    channel.dataReceived(b"GET /no/such/path HTTP/1.1\r\n")
    for _ in range(9):
        clock.advance(1)
        channel.dataReceived(b"X-Slow: 1\r\n")
    channel.dataReceived(b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 404 ") and not transport.disconnecting
    transport.clear()
    channel.dataReceived(b"GET /no/such/path HTTP/1.1\r\n")  # the next request has a deadline of its own
    clock.pump([1] * 10)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and transport.disconnecting
