"""
Shutdown of a live ``twistd`` service with 1,000 joined clients: SIGTERM closes every
socket with 1012 (so clients reconnect elsewhere), withdraws their presence from Redis
and exits 0.
"""

from __future__ import annotations

import signal
import time

from tangram_channel.naming import KEY_PREFIX as PREFIX

from .live import RawSocket, event_of, reply_status, start_twistd, token

CLIENTS = 1000
TOPICS = 100


def test_sigterm_closes_1000_sockets_with_1012_withdraws_presence_and_exits_0(twistd, flushed_redis):
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    clients = [RawSocket(service.port) for _ in range(CLIENTS)]
    refs = [c.join(f"t{i % TOPICS}", token(f"t{i % TOPICS}", f"client-{i}")) for i, c in enumerate(clients)]
    for client, ref in zip(clients, refs):
        assert reply_status(client.reply(ref, timeout=30)) == "ok"
        client.until(lambda m: event_of(m) == "presence_state")
    redis = flushed_redis.client()
    entries = sum(redis.hlen(key) for key in redis.keys(PREFIX + "presence:*"))
    assert entries == CLIENTS

    sent = time.monotonic()
    service.process.send_signal(signal.SIGTERM)
    code = service.process.wait(timeout=30)
    took = time.monotonic() - sent
    codes = [client.close_code(timeout=5) for client in clients]
    print(f"\nSIGTERM with {CLIENTS} joined clients: exited {code} after {took:.2f}s")

    assert code == 0
    assert codes == [1012] * CLIENTS
    assert redis.keys(PREFIX + "presence:*") == []
    assert took < 5


def test_a_second_sigterm_during_shutdown_changes_nothing(twistd, flushed_redis):
    """A process manager that signals the group as well as the parent: one shutdown, exit 0, no traceback."""
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    client = RawSocket(service.port)
    assert reply_status(client.reply(client.join("room", token("room", "ops-1")), timeout=10)) == "ok"
    service.process.send_signal(signal.SIGTERM)
    service.wait_for_log("received SIGTERM, shutting down")
    service.process.send_signal(signal.SIGTERM)  # while it closes sockets and withdraws presence
    assert service.process.wait(timeout=15) == 0
    assert client.close_code(timeout=5) == 1012
    log = service.log()
    assert log.count("received SIGTERM, shutting down") == 1
    assert "Traceback" not in log and "ReactorNotRunning" not in log
