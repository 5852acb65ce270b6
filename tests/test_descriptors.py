"""
Open descriptors: a live ``twistd`` raises its soft ``RLIMIT_NOFILE`` to the hard one,
and at the limit refuses connections with one log line a minute and a count, and
serves again once descriptors are free. The limit's arithmetic is tested without one.
"""

from __future__ import annotations

import os
import resource
import socket
import time

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from tangram_channel.descriptors import AcceptErrors, raise_open_files_limit
from tangram_channel.metrics import Metrics

from .live import RawSocket, metric, start_twistd, token
from .waiting import wait_until


class FakeLimits:
    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse

    def get(self) -> tuple[int, int]:
        return self.limits

    def set(self, limits: tuple[int, int]) -> None:
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = limits


@pytest.mark.parametrize(
    ("soft", "hard", "refuse", "after"),
    [
        (1024, 524288, False, 524288),  # systemd's defaults
        (4096, 4096, False, 4096),
        (1024, 524288, True, 1024),  # the system said no: the soft limit stands
        (256, resource.RLIM_INFINITY, False, 256),  # macOS: infinity is no number to set
    ],
)
def test_the_soft_limit_is_raised_to_the_hard_one_where_that_can_be_done(soft, hard, refuse, after) -> None:
    limits = FakeLimits(soft, hard, refuse)
    assert raise_open_files_limit(limits.get, limits.set) == after
    assert limits.limits == ((soft, hard) if refuse or after == soft else (hard, hard))


def test_an_accept_error_that_leaves_the_connection_queued_is_logged_once_a_minute() -> None:
    """ENFILE, ENOBUFS, ENOMEM: the system's limits, not the process's; the port's other lines pass on."""
    clock, forwarded = Clock(), []
    accept_errors = AcceptErrors(Metrics(), clock, forward=forwarded.append)
    not_accepted = {"log_format": "Could not accept new connection ({acceptError})", "acceptError": "ENFILE"}
    other = {"log_format": "Port {port} closed", "port": 1}
    with capturedLogs() as events:
        for _ in range(100):
            accept_errors(not_accepted)
        accept_errors(other)
        clock.advance(61)
        accept_errors(not_accepted)
    lines = [event for event in events if event["log_namespace"] == "tangram_channel.descriptors"]
    assert [(event["log_level"].name, event["error"], event["dropped"]) for event in lines] == [
        ("error", "ENFILE", 0),
        ("error", "ENFILE", 99),
    ]
    assert forwarded == [other]


def open_files(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_the_service_raises_its_soft_descriptor_limit_to_the_hard_one(twistd, flushed_redis) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft = min(256, hard)
    service = start_twistd(
        twistd, "--redis-url", flushed_redis.url,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    assert open_files(service.process.pid) == (hard, hard)
    assert f"up to {hard} open descriptors (RLIMIT_NOFILE)" in service.log()


def test_at_the_descriptor_limit_connections_are_refused_with_one_log_line_and_counted(twistd, flushed_redis) -> None:
    """
    A client connecting in a loop to a service with all its descriptors open: Twisted
    closes each connection and once logged three lines for each (20,317 lines in 5 s).
    Now one line says so, the metric counts them, and the service serves again after.
    """
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    pid = service.process.pid
    limit = len(os.listdir(f"/proc/{pid}/fd")) + 16
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, open_files(pid)[1]))
    holders = [socket.create_connection(("127.0.0.1", service.port), timeout=5) for _ in range(32)]
    try:  # 32 connections: past the 16 free descriptors
        attempts, deadline = 0, time.monotonic() + 2
        while time.monotonic() < deadline:
            # TCP's handshake is the kernel's; the service then closes it, unless a
            # descriptor came free meanwhile (a Redis command's), and then serves it
            socket.create_connection(("127.0.0.1", service.port), timeout=5).close()
            attempts += 1
    finally:
        for holder in holders:
            holder.close()
    assert attempts >= 100
    # the service closes the holders' descriptors once it reads their end: till then a
    # request of ours would be refused too
    wait_until(lambda: len(os.listdir(f"/proc/{pid}/fd")) < limit - 8, 10, "the holders' descriptors closed")
    wait_until(lambda: metric(service.port, 'http_refusals_total{reason="descriptors"}') >= 100, 10, "refusals counted")
    log = service.log()
    assert log.count("refused connections: the process has its") == 1, log[-2000:]
    assert "EMFILE" not in log
    client = RawSocket(service.port)
    client.join_ok("room", token("room", "after"))
