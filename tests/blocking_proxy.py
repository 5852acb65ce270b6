"""
An HTTP proxy in front of the service that refuses every WebSocket upgrade with 403, as
proxies that block WebSockets do, and relays every other request (the long polls too).
For the browser tests of phoenix.js's ``longPollFallbackMs``.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from typing import Any

import pytest

# hop-by-hop headers, and those the proxy's own answer sets
_NOT_RELAYED = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "server", "date"}


class BlockingProxy:
    """``url`` leads to the service at ``target_port``; ``refused`` counts the upgrades it turned away."""

    def __init__(self, target_port: int) -> None:
        self.refused = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def relay(self) -> None:
                if self.headers.get("upgrade", "").lower() == "websocket":
                    proxy.refused += 1
                    self.send_response(403)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                upstream = http.client.HTTPConnection("127.0.0.1", target_port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_RELAYED}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    status, data, answer_headers = answer.status, answer.read(), answer.getheaders()
                except (OSError, http.client.HTTPException):  # the service stopped (a restart, the teardown)
                    status, data, answer_headers = 502, b"", []
                finally:
                    upstream.close()
                try:
                    self.send_response(status)
                    for name, value in answer_headers:
                        if name.lower() not in _NOT_RELAYED:
                            self.send_header(name, value)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the browser gave up on the request (it closes at the end of a test)
                    self.close_connection = True

            do_GET = do_POST = do_OPTIONS = relay

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def blocking_proxy():
    """``blocking_proxy(port)``: a BlockingProxy to the service on ``port``, shut down after the test."""
    proxies: list[BlockingProxy] = []

    def start(port: int) -> BlockingProxy:
        proxies.append(BlockingProxy(port))
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.close()
