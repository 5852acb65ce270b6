"""
Blocking helpers for end-to-end tests that drive a live service from plain test code:
a raw-socket WebSocket client that can send any frame (bad ones included) and read
every frame back, join tokens signed in the test, and a ``twistd`` service that is
ready once it has reached Redis.

A raw socket instead of a WebSocket library because these tests must send what no
library would (bad UTF-8, unmasked frames, odd fragments) and must be able to stop
reading on purpose.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable
from typing import Any

from .conftest import free_port, wait_for_port
from .waiting import wait_until
from .e2e import forge_token

SECRET = "robust-tests-secret-long-enough-for-hs256-and-hs512-keys-0123456789"

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def token(channel: str, client_id: str = "client", **options: Any) -> str:
    """A join token for services from ``start_twistd`` (see ``forge_token`` for ``options``)."""
    return forge_token(SECRET, channel, client_id, **options)


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    """One WebSocket frame as a client sends it (masked unless told otherwise)."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    bit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    if n:
        stream = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return head + key + payload


class FrameParser:
    """Splits the server's byte stream into ``(fin, opcode, payload)`` frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bool, int, bytes]]:
        self._buffer += data
        frames = []
        while True:
            parsed = self._one()
            if parsed is None:
                return frames
            frames.append(parsed)

    def _one(self) -> tuple[bool, int, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        n, start = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, start = struct.unpack_from("!H", buf, 2)[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, start = struct.unpack_from("!Q", buf, 2)[0], 10
        if len(buf) < start + n:
            return None
        parsed = (bool(buf[0] & 0x80), buf[0] & 0x0F, bytes(buf[start : start + n]))
        del buf[: start + n]
        return parsed


class Closed(Exception):
    """The server closed the WebSocket; ``code`` is its close code (None: no close frame)."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed with {code}")
        self.code = code


def upgrade_request(path: str, headers: dict[str, str] | None = None) -> bytes:
    """The HTTP upgrade a browser would send for ``path``; ``headers`` add to or replace it."""
    fields = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        **(headers or {}),
    }
    lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


class RawSocket:
    """
    One WebSocket to a live service. ``status`` and ``headers`` are the upgrade's answer;
    ``recv()`` returns the next message (text decoded from JSON, binary as bytes) and
    raises ``Closed`` at a close frame or end of stream.
    """

    def __init__(
        self,
        port: int,
        path: str = "/websocket?vsn=2.0.0",
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.vsn = "1.0.0" if "vsn=1.0.0" in path else "2.0.0"
        self.parser = FrameParser()
        self.pending: list[tuple[bool, int, bytes]] = []
        self._ref = 0
        self.sock.sendall(upgrade_request(path, headers))
        self.status, self.headers, self.body = self._read_response()

    def _read_response(self) -> tuple[int, dict[str, str], bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1]) if lines[0] else 0
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 101:
            self.pending = self.parser.feed(rest)
            return status, headers, b""
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, headers, rest

    # sending

    def send_frame(self, opcode: int, payload: bytes, **options: Any) -> None:
        self.sock.sendall(frame(opcode, payload, **options))

    def send_json(self, value: Any) -> None:
        self.send_frame(TEXT, json.dumps(value).encode())

    def next_ref(self) -> str:
        self._ref += 1
        return str(self._ref)

    def push(self, topic: str, event: str, payload: Any, join_ref: str | None = None) -> str:
        ref = self.next_ref()
        if self.vsn == "1.0.0":
            self.send_json({"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": join_ref})
        else:
            self.send_json([join_ref, ref, topic, event, payload])
        return ref

    def join(self, topic: str, join_token: str | None) -> str:
        """Send a join (join_ref = ref) and return its ref, without waiting."""
        ref = self.next_ref()
        payload = {} if join_token is None else {"token": join_token}
        if self.vsn == "1.0.0":
            self.send_json({"topic": topic, "event": "phx_join", "payload": payload, "ref": ref, "join_ref": ref})
        else:
            self.send_json([ref, ref, topic, "phx_join", payload])
        return ref

    def join_ok(self, topic: str, join_token: str) -> tuple[str, dict[str, Any]]:
        """Join and return ``(join_ref, presence_state)``; fails unless the join is accepted."""
        ref = self.join(topic, join_token)
        reply = self.reply(ref)
        assert reply_status(reply) == "ok", reply
        state = self.until(lambda m: event_of(m) == "presence_state")
        return ref, payload_of(state)

    # receiving

    def recv_frame(self, timeout: float | None = None) -> tuple[bool, int, bytes]:
        if timeout is not None:
            self.sock.settimeout(timeout)
        while not self.pending:
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            if not data:
                raise Closed(None)
            self.pending = self.parser.feed(data)
        return self.pending.pop(0)

    def recv(self, timeout: float | None = None) -> Any:
        """The next data message (fragments joined); pings are answered, pongs skipped."""
        parts, kind = [], None
        while True:
            fin, opcode, payload = self.recv_frame(timeout)
            if opcode == CLOSE:
                raise Closed(struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None)
            if opcode == PING:
                self.send_frame(PONG, payload)
                continue
            if opcode == PONG:
                continue
            kind = kind if opcode == CONTINUATION else opcode
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                return data if kind == BINARY else json.loads(data)

    def until(self, predicate: Callable[[Any], bool], timeout: float = 5.0) -> Any:
        """The next message for which ``predicate`` holds; others are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching message")
            message = self.recv(left)
            if predicate(message):
                return message

    def reply(self, ref: str, timeout: float = 5.0) -> Any:
        return self.until(lambda m: event_of(m) == "phx_reply" and ref_of(m) == ref, timeout)

    def close_code(self, timeout: float = 5.0) -> int | None:
        """Read (and drop) everything up to the server's close; its code, or None without one."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.recv(max(deadline - time.monotonic(), 0.01))
        except Closed as closed:
            return closed.code

    def close(self) -> None:
        self.sock.close()


# Reading messages of either serializer


def _field(message: Any, index: int, name: str) -> Any:
    if isinstance(message, list):
        return message[index]
    if isinstance(message, dict):
        return message.get(name)
    return None


def ref_of(message: Any) -> Any:
    return _field(message, 1, "ref")


def topic_of(message: Any) -> Any:
    return _field(message, 2, "topic")


def event_of(message: Any) -> Any:
    return _field(message, 3, "event")


def payload_of(message: Any) -> Any:
    return _field(message, 4, "payload")


def reply_status(message: Any) -> str:
    return payload_of(message)["status"]


def reply_reason(message: Any) -> str | None:
    return payload_of(message)["response"].get("reason")


def post_token(port: int, body: dict, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """``POST /token`` with ``body`` as JSON: the status and the JSON answer, errors included."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/token", json.dumps(body).encode(),
        {"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# A service in a subprocess

# free_port() closes its socket before twistd binds the port: a program outside the
# suite may take it in between (the workers' ports are apart), and twistd then exits at once
PORT_TRIES = 3


def start_twistd(
    twistd: Callable[..., Any],
    *args: str,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    **settings: Any,
):
    """
    ``twistd -n tangram-channel`` on a free port with ``settings`` as
    TANGRAM_CHANNEL_<KEY> variables, returned once it has reached Redis
    (``proc.port`` is its port); ``preexec_fn`` runs in the child before twistd.
    """
    environ = {"TANGRAM_CHANNEL_JWT_SECRET": SECRET, "TANGRAM_CHANNEL_EMBEDDED_REDIS": "false"}
    environ.update({f"TANGRAM_CHANNEL_{k.upper()}": str(v) for k, v in settings.items()})
    environ.update(env or {})
    for _ in range(PORT_TRIES):
        port = free_port()
        proc = twistd("--port", str(port), *args, env=environ, preexec_fn=preexec_fn)
        proc.port = port
        wait_until(lambda: "connected to Redis" in proc.log() or proc.process.poll() is not None, 10.0, "twistd up")
        # another test's process took the free port between our look and twistd's bind
        if proc.process.poll() is None or "Address already in use" not in proc.log():
            break
    wait_for_port(port)
    proc.wait_for_log("connected to Redis")
    return proc


def metric(port: int, sample: str) -> float:
    """One sample of the service's ``/metrics``, named without the prefix, labels included."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"tangram_channel_{sample} "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {sample}")


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")
