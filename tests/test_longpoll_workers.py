"""
Long-poll sessions across processes: under ``workers = 2`` every request of a session is
served, whichever worker the kernel hands its connection to, and with
``longpoll_route_host`` whichever node a load balancer sends it to (the others forward it
to the session's own).
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

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
