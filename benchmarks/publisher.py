"""
W5's publisher, in its own process: R messages/s of S bytes of JSON to each of N
``to:streaming-c<i>:<event>`` channels, as one plugin per client would publish them; with
``--topic NAME``, R messages/s to the one channel ``to:NAME:<event>`` (the fan-out
workloads, W1-W4).

Messages go round-robin over the channels at N x R per second, evenly spaced (channel i's
messages are offset by i/N of a period, so the channels do not all fire at once), written
to Redis as raw RESP, pipelined: every message already due goes out in one write and the
replies are read as they come, so the publisher can keep pace well past what one
``PUBLISH`` per round trip allows. Each payload's ``"t"`` is its publish time in
microseconds since the epoch, stamped when the write that carries it is built.

Writes are at least ``--write-interval`` apart (1 ms): what falls due meanwhile waits
for the next write. A write per message (10,000 a second in W5) cost the publisher 37 %
of a core and Redis 18 us per message, on a 2-core machine that the service under test
shares with them. A message's latency counts, as before, from the write that carries
it: the wait for that write (up to the interval) is not in it.

Prints one JSON line at the end: messages published, seconds taken, the achieved rate,
how late the latest message went out, and the replies read (one per PUBLISH).

    python benchmarks/publisher.py --redis-port P --channels 1000 --rate 10 --duration 10
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import time

BATCH = 2000  # messages per write at most, so a late publisher catches up in bounded writes


def command(topic: bytes, payload: bytes) -> bytes:
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(topic), topic, len(payload), payload)


def payload(seq: int, size: int) -> tuple[bytes, bytes]:
    """The parts around the publish time of a message of about ``size`` bytes."""
    head = b'{"t":'
    tail = b',"seq":%d,"kind":"state","pad":"' % seq
    pad = max(0, size - len(head) - 16 - len(tail) - 2)
    return head, tail + b"x" * pad + b'"}'


def publish(
    sock: socket.socket,
    channels: int,
    rate: float,
    duration: float,
    size: int,
    event: str,
    topic: str | None = None,
    write_interval: float = 0.0,
) -> dict:
    if topic is not None:
        topics, channels = [f"to:{topic}:{event}".encode()], 1
    else:
        topics = [f"to:streaming-c{i}:{event}".encode() for i in range(channels)]
    head, tail = payload(0, size)
    total = int(channels * rate * duration)
    interval = 1 / (channels * rate)
    sent = replies = 0
    max_late = 0.0
    start = time.monotonic()
    while sent < total:
        now = time.monotonic()
        due = min(total, int((now - start) / interval) + 1, sent + BATCH)
        if due > sent:
            max_late = max(max_late, now - (start + sent * interval))
            stamp = b"%d" % (time.time_ns() // 1000)
            body = head + stamp + tail
            sock.sendall(b"".join(command(topics[k % channels], body) for k in range(sent, due)))
            sent = due
        replies += read_replies(sock, block=False)
        wait = max(start + sent * interval, now + write_interval) - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    elapsed = time.monotonic() - start
    deadline = time.monotonic() + 30
    while replies < total and time.monotonic() < deadline:
        replies += read_replies(sock, block=True)
    return {"published": sent, "seconds": elapsed, "rate": sent / elapsed if elapsed else None,
            "target_rate": channels * rate, "max_late_s": max_late, "replies": replies}


def read_replies(sock: socket.socket, block: bool) -> int:
    """Integer replies read now (one line each); waits up to a second for some when ``block``."""
    if block and not select.select([sock], [], [], 1.0)[0]:
        return 0
    try:
        data = sock.recv(1 << 20, socket.MSG_DONTWAIT)  # the socket stays blocking for sendall
    except BlockingIOError:
        return 0
    if not data:
        raise ConnectionError("Redis closed the publisher's connection")
    if b"-" in data:  # the replies are integers: a minus is an error reply
        raise RuntimeError(f"Redis refused a PUBLISH: {data[:200]!r}")
    return data.count(b"\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--channels", type=int, default=1, help="streaming-c<i> channels (without --topic)")
    p.add_argument("--topic", help="publish to this one channel instead")
    p.add_argument("--rate", type=float, required=True, help="messages per second per channel")
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--payload-bytes", type=int, default=2048)
    p.add_argument("--event", default="tick")
    p.add_argument("--write-interval", type=float, default=0.001, help="seconds between writes at least")
    args = p.parse_args()
    with socket.create_connection(("127.0.0.1", args.redis_port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        result = publish(sock, args.channels, args.rate, args.duration, args.payload_bytes, args.event, args.topic,
                         args.write_interval)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
