"""
Idle long-poll sessions: N clients open a session on ``/longpoll``, join their own
``streaming-<id>`` channel (``--system``: ``system`` as well), take the join's answer and
leave one poll waiting, as phoenix.js's LongPoll does between messages.

Prints JSON: the server's RSS before and after, and per session. Polls are held for
60 s here (``longpoll_poll_timeout``), so every session has its waiting request and its
HTTP connection while it is measured.

    python benchmarks/longpoll_idle.py --clients 2000
"""

from __future__ import annotations

import argparse
import json
import socket
import time

import harness as h


def request(sock: socket.socket, method: str, path: str, body: bytes = b"") -> None:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n"
    if body:
        head += "Content-Type: application/x-ndjson\r\n"
    sock.sendall(head.encode() + b"\r\n" + body)


def answer(sock: socket.socket) -> dict:
    """One HTTP/1.1 answer with a Content-Length, read whole; its JSON body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return json.loads(body)


def open_session(port: int, cid: str, channels: list[str]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    request(sock, "GET", f"/longpoll?vsn=2.0.0&userToken={h.token(cid, 'system')}")
    token = answer(sock)["token"]
    joins = [json.dumps([str(n), str(n), ch, "phx_join", {"token": h.token(cid, ch)}]).encode()
             for n, ch in enumerate(channels, 1)]
    request(sock, "POST", f"/longpoll?vsn=2.0.0&token={token}", b"\n".join(joins))
    assert answer(sock)["status"] == 200
    replies: list[str] = []
    while len(replies) < 2 * len(channels):  # each join's reply and presence_state
        request(sock, "GET", f"/longpoll?vsn=2.0.0&token={token}")
        replies += answer(sock)["messages"]
    request(sock, "GET", f"/longpoll?vsn=2.0.0&token={token}")  # left waiting
    return sock


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=2000)
    p.add_argument("--system", action="store_true", help="join system as well (its presence grows with N)")
    p.add_argument("--settle", type=float, default=2.0)
    args = p.parse_args()
    h.prepare()
    h.raise_fd_limit()
    env = {"TANGRAM_CHANNEL_LONGPOLL_POLL_TIMEOUT": "60", "TANGRAM_CHANNEL_LONGPOLL_SESSION_TIMEOUT": "120",
           "TANGRAM_CHANNEL_DATETIME_INTERVAL": "0"}
    with h.redis_server() as (redis_url, _redis):
        port = h.free_port()
        server = h.start_ours(port, redis_url, env=env)
        try:
            time.sleep(1)
            before = server.usage()
            started = time.monotonic()
            sockets = [open_session(port, f"c{i}", (["system"] if args.system else []) + [f"streaming-c{i}"])
                       for i in range(args.clients)]
            opened_s = time.monotonic() - started
            time.sleep(args.settle)
            after = server.usage()
            result = {
                "clients": args.clients,
                "channels": "system+streaming" if args.system else "streaming",
                "open_and_join_s": round(opened_s, 2),
                "rss_before_kb": before.rss_kb,
                "rss_after_kb": after.rss_kb,
                "kb_per_session": round((after.rss_kb - before.rss_kb) / args.clients, 1),
            }
            print(json.dumps(result))
            for sock in sockets:
                sock.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
