"""
RFC 6455 conformance: the Autobahn Testsuite cases, driven by ``kosoku`` (pinned in
the ``test`` extra), against ``twistd -n tangram-channel`` with its echo endpoint on.

The compression cases (12.*, 13.*: RFC 7692) are 216, and all of them take five
minutes on two cores, as long as the rest of the suite: by default the four smallest
message sizes of each group (12.*.1 to 12.*.4, 13.*.1 to 13.*.4: every payload kind and
every negotiation, 48 cases) run; ``TANGRAM_CONFORMANCE_ALL=1`` runs the 216.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

from .live import RawSocket, start_twistd

ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL"}


def run_kosoku(twistd, redis_url: str, reports: Path, *selection: str) -> dict[str, dict]:
    """The verdict of every case ``selection`` (kosoku's -i/-x options) picks, against a fresh service."""
    service = start_twistd(
        twistd, "--redis-url", redis_url, conformance_echo="true", max_message_size=20_000_000,
        datetime_interval=0,
    )
    kosoku = Path(sys.executable).parent / "kosoku"
    command = [str(kosoku), f"ws://127.0.0.1:{service.port}/conformance", *selection, "-p", "2", "-o", str(reports)]
    subprocess.run(command, check=True, timeout=600, stdout=subprocess.DEVNULL)
    (cases,) = json.loads((reports / "index.json").read_text()).values()
    verdicts = collections.Counter(case["behavior"] for case in cases.values())
    print(f"\n{len(cases)} cases: {dict(verdicts)}")
    return cases


def assert_all_pass(cases: dict[str, dict]) -> None:
    failed = {name: case["behavior"] for name, case in cases.items() if case["behavior"] not in ACCEPTED}
    assert not failed
    closing = {name: case["behaviorClose"] for name, case in cases.items() if case["behaviorClose"] not in ACCEPTED}
    assert not closing


def test_autobahn_cases_all_pass(twistd, flushed_redis, tmp_path):
    cases = run_kosoku(twistd, flushed_redis.url, tmp_path / "reports", "-x", "12.*", "-x", "13.*")
    assert len(cases) == 301
    assert_all_pass(cases)


def test_autobahn_compression_cases_pass(twistd, flushed_redis, tmp_path):
    if os.environ.get("TANGRAM_CONFORMANCE_ALL") == "1":
        selection, expected = ["-i", "12.*", "-i", "13.*"], 216
    else:
        sizes = range(1, 5)
        groups = [(12, kind) for kind in range(1, 6)] + [(13, offer) for offer in range(1, 8)]
        selection = [option for a, b in groups for size in sizes for option in ("-i", f"{a}.{b}.{size}")]
        expected = 48
    cases = run_kosoku(twistd, flushed_redis.url, tmp_path / "reports", *selection)
    assert len(cases) == expected
    assert_all_pass(cases)


def test_the_echo_endpoint_exists_only_when_asked_for(twistd, flushed_redis):
    """The echo answers anything: a production service must not serve it."""
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    assert RawSocket(service.port, "/conformance").status == 404
