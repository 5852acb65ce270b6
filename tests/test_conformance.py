"""
RFC 6455 conformance: the Autobahn Testsuite cases, driven by ``kosoku`` (pinned in
the ``test`` extra), against ``twistd -n tangram-channel`` with its echo endpoint on.
The compression cases (12.*, 13.*) are left out: the service does not offer
permessage-deflate.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

from .live import RawSocket, start_twistd

ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL"}


def test_autobahn_cases_all_pass(twistd, flushed_redis, tmp_path):
    service = start_twistd(
        twistd, "--redis-url", flushed_redis.url, conformance_echo="true", max_message_size=20_000_000,
        datetime_interval=0,
    )
    kosoku = Path(sys.executable).parent / "kosoku"
    command = [
        str(kosoku), f"ws://127.0.0.1:{service.port}/conformance", "-x", "12.*", "-x", "13.*", "-p", "2",
        "-o", str(tmp_path / "reports"),
    ]
    subprocess.run(command, check=True, timeout=300, stdout=subprocess.DEVNULL)

    (cases,) = json.loads((tmp_path / "reports" / "index.json").read_text()).values()
    verdicts = collections.Counter(case["behavior"] for case in cases.values())
    print(f"\n{len(cases)} cases: {dict(verdicts)}")
    assert len(cases) == 301
    failed = {name: case["behavior"] for name, case in cases.items() if case["behavior"] not in ACCEPTED}
    assert not failed
    closing = {name: case["behaviorClose"] for name, case in cases.items() if case["behaviorClose"] not in ACCEPTED}
    assert not closing


def test_the_echo_endpoint_exists_only_when_asked_for(twistd, flushed_redis):
    """The echo answers anything: a production service must not serve it."""
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    assert RawSocket(service.port, "/conformance").status == 404
