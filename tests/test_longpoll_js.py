"""
phoenix.js's LongPoll transport (``transport: LongPoll``) at Tangram's pin (1.8.9) and the
newest (1.8.16), under Node, against a real ``twistd`` service and a real Redis: the
scenarios of test_phoenix_js.py that every transport must pass, over ``/longpoll``.
"""

import json

import pytest

from .jsdriver import PHOENIX_VERSIONS, channel_service  # noqa: F401

pytestmark = pytest.mark.parametrize("phoenix", PHOENIX_VERSIONS)


def test_join_broadcast_and_pushes_with_acks(channel_service, phoenix):
    """Over long polls: join ok, a JSON broadcast, a JSON and a binary push acked and published as sent."""
    service = channel_service()
    listener = service.listener("from:radar:*")
    driver = service.driver("phoenix_node.mjs", "pushes", PHOENIX_VERSION=phoenix, TRANSPORT="longpoll")
    joined = driver.expect("joined")
    assert joined["longpoll"] is True
    assert joined["reply"]["status"] == "ok"
    assert ":radar:" in joined["reply"]["response"]["id"]
    driver.expect("ready")
    assert service.redis.client().publish("to:radar:json-event", '{"flight": "AFR123", "alt": [1, 2.5]}') == 1
    assert driver.expect("json")["payload"] == {"flight": "AFR123", "alt": [1, 2.5]}
    assert driver.expect("pushed") == {"step": "pushed", "status": "ok", "response": {}}
    assert json.loads(listener.next("from:radar:custom_event")) == {"request_id": "r-1", "nested": {"a": [1, 2]}}
    assert driver.expect("pushed-binary")["status"] == "ok"
    assert listener.next("from:radar:arrow-batch") == bytes([0, 1, 2, 254, 255])
    driver.finish()
