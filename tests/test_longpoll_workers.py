"""
Long-poll sessions under ``workers = 2``: every request of a session is served, whichever
worker the kernel hands its connection to (the others forward it to the session's own).
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


def test_every_request_of_a_session_is_served_by_whichever_worker_gets_it(twistd, flushed_redis):
    proc = start_twistd(twistd, "--redis-url", flushed_redis.url, workers=2, datetime_interval=0,
                        longpoll_poll_timeout=0.2)
    wait_until(lambda: proc.log().count("connected to Redis") >= 2, what="workers connected")
    session = call(proc.port, "GET", "")["token"]
    join = json.dumps(["1", "1", "room", "phx_join", {"token": token("room", "alice")}]).encode()
    assert call(proc.port, "POST", f"token={session}", join) == {"status": 200}
    seen: list[Any] = []
    for n in range(20):  # with two workers, 20 connections all on the owner: 1 in 500,000
        heartbeat = json.dumps([None, str(n), "phoenix", "heartbeat", {}]).encode()
        assert call(proc.port, "POST", f"token={session}", heartbeat) == {"status": 200}
        answer = call(proc.port, "GET", f"token={session}")
        assert answer["status"] in (200, 204) and answer["token"] == session
        seen += [json.loads(m) for m in answer["messages"]]
    replies = {m[1]: m[4]["status"] for m in seen if m[3] == "phx_reply"}
    assert replies == {"1": "ok", **{str(n): "ok" for n in range(20)}}
