"""
Long-poll sessions across processes: under ``workers = 2`` every request of a session is
served, whichever worker the kernel hands its connection to, and with
``longpoll_route_host`` whichever node a load balancer sends it to (the others forward it
to the session's own).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from .live import start_twistd, token
from .waiting import wait_until


def call(port: int, method: str, query: str, body: bytes | None = None) -> Any:
    """One request on a connection of its own, so the kernel picks a worker each time."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/longpoll?vsn=2.0.0&{query}",
        data=body,
        method=method,
        headers={"content-type": "application/x-ndjson", "connection": "close"},
    )
    with urllib.request.urlopen(request, timeout=15) as answer:
        return json.load(answer)


def exercise(ports: list[int]) -> None:
    """Open a session on the first port, then join, heartbeat and poll 20 times, port after port."""
    session = call(ports[0], "GET", "")["token"]
    join = json.dumps(["1", "1", "room", "phx_join", {"token": token("room", "alice")}]).encode()
    assert call(ports[-1], "POST", f"token={session}", join) == {"status": 200}
    seen: list[Any] = []
    for n in range(20):
        heartbeat = json.dumps([None, str(n), "phoenix", "heartbeat", {}]).encode()
        assert call(ports[n % len(ports)], "POST", f"token={session}", heartbeat) == {"status": 200}
        answer = call(ports[(n + 1) % len(ports)], "GET", f"token={session}")
        assert answer["status"] in (200, 204) and answer["token"] == session
        seen += [json.loads(m) for m in answer["messages"]]
    replies = {m[1]: m[4]["status"] for m in seen if m[3] == "phx_reply"}
    assert replies == {"1": "ok", **{str(n): "ok" for n in range(20)}}


def test_every_request_of_a_session_is_served_by_whichever_worker_gets_it(twistd, flushed_redis):
    proc = start_twistd(twistd, "--redis-url", flushed_redis.url, workers=2, datetime_interval=0,
                        longpoll_poll_timeout=0.2)
    wait_until(lambda: proc.log().count("connected to Redis") >= 2, what="workers connected")
    exercise([proc.port])  # with two workers, 42 connections all on the owner: 1 in 10^12


def test_every_request_of_a_session_is_served_by_whichever_node_gets_it(twistd, flushed_redis):
    """Two nodes on one Redis, as behind a load balancer without sticky sessions."""
    nodes = [
        start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0, longpoll_poll_timeout=0.2,
                     longpoll_route_host="127.0.0.1")
        for _ in range(2)
    ]
    exercise([node.port for node in nodes])


def test_a_route_port_serves_sessions_it_holds_and_opens_none(twistd, flushed_redis):
    """
    The route port a token names is reachable by anyone who can reach that address: it
    answers the session's requests, but opens no session (that would skip the service
    port's Origin check and count against the forwarder's address) and knows no forged one.
    """
    node = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0, longpoll_poll_timeout=0.2,
                        longpoll_route_host="127.0.0.1")
    session = call(node.port, "GET", "")["token"]
    name = session.split(".")[0]
    host, _, port = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode().rpartition(":")
    assert host == "127.0.0.1" and int(port) != node.port
    route = int(port)
    assert call(route, "GET", f"token={session}")["status"] in (200, 204)  # its own session: served
    with pytest.raises(urllib.error.HTTPError) as refused:
        call(route, "GET", "")
    assert refused.value.code == 403 and json.load(refused.value)["error"] == "sessions are opened on the service port"
    forged = session[:-2] + ("AA" if not session.endswith("AA") else "BB")
    assert call(route, "GET", f"token={forged}") == {"status": 410}
