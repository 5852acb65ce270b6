"""
phoenix.js's LongPoll transport (``transport: LongPoll``) at Tangram's pin (1.8.9) and the
newest (1.8.16), under Node, against a real ``twistd`` service and a real Redis: the
scenarios of test_phoenix_js.py that every transport must pass, over ``/longpoll``.
"""

import json
import urllib.request

import pytest

from .conftest import JWT_SECRET
from .e2e import forge_token
from .blocking_proxy import blocking_proxy  # noqa: F401
from .jsdriver import PHOENIX_VERSIONS, channel_service, presence_converges, rejoins_after_restart  # noqa: F401
from .nginx import documented_nginx  # noqa: F401

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
    assert driver.expect("opens")["count"] == 1
    driver.finish()


def test_presence_converges_across_long_poll_clients_and_tabs(channel_service, phoenix):
    """
    Presence over long polls: two clients agree, two tabs of one id are one key with two
    metas, leaves shrink it. A long-poll client that disconnects says nothing: its
    presence goes when its session expires, here after 2 s without a poll.
    """
    service = channel_service(longpoll_poll_timeout=0.5, longpoll_session_timeout=2)
    presence_converges(
        service.driver("phoenix_node.mjs", "presence", PHOENIX_VERSION=phoenix, TOPIC="room", TRANSPORT="longpoll")
    )


def test_refused_joins_reach_a_long_poll_client_as_errors(channel_service, phoenix):
    """A token for another channel gets "error" with a reason; the session stays up and a valid join follows."""
    service = channel_service()
    expired_token = forge_token(JWT_SECRET, "radar", "late", expires_in=-3600)
    driver = service.driver(
        "phoenix_node.mjs", "refused", PHOENIX_VERSION=phoenix, EXPIRED_TOKEN=expired_token, TRANSPORT="longpoll"
    )
    assert driver.expect("expired")["response"] == {"reason": "token expired"}
    assert driver.expect("other-channel")["response"] == {"reason": "unauthorized"}
    valid = driver.expect("valid")
    assert valid["reply"]["status"] == "ok"
    assert valid["connected"] is True
    driver.finish()


@pytest.mark.parametrize("workers", [1, 2])
def test_long_poll_client_reconnects_and_rejoins_after_a_service_restart(channel_service, phoenix, workers):
    """After a restart the session is gone (410): phoenix.js opens another, rejoins, gets presence_state and broadcasts."""
    service = channel_service(workers=workers)
    rejoins_after_restart(
        service, service.driver("phoenix_node.mjs", "restart", PHOENIX_VERSION=phoenix, TRANSPORT="longpoll")
    )


def test_long_poll_client_on_two_workers(channel_service, phoenix):
    """
    ``workers = 2``: phoenix.js's polls and POSTs go out on whatever connections its fetch
    pool has, which the kernel spreads over both workers; the session's worker serves them all.
    """
    service = channel_service(workers=2)
    listener = service.listener("from:radar:*")
    driver = service.driver("phoenix_node.mjs", "pushes", PHOENIX_VERSION=phoenix, TRANSPORT="longpoll")
    joined = driver.expect("joined")
    assert joined["longpoll"] is True and joined["reply"]["status"] == "ok"
    driver.expect("ready")
    # the worker that holds no member gets it too (presence and broadcasts go through Redis)
    assert service.redis.client().publish("to:radar:json-event", '{"n": 1}') >= 1
    assert driver.expect("json")["payload"] == {"n": 1}
    assert driver.expect("pushed")["status"] == "ok"
    assert json.loads(listener.next("from:radar:custom_event")) == {"request_id": "r-1", "nested": {"a": [1, 2]}}
    assert driver.expect("pushed-binary")["status"] == "ok"
    assert driver.expect("opens")["count"] == 1  # no request met a worker that did not know the session
    driver.finish()


def test_long_polls_through_the_documented_nginx(channel_service, documented_nginx, phoenix):
    """docs/deploy.rst's nginx block passes all three long-poll paths, and phoenix.js's LongPoll works through it."""
    service = channel_service()
    nginx = documented_nginx(service.port)
    for path in ("/longpoll", "/socket/longpoll", "/websocket/longpoll"):
        with urllib.request.urlopen(f"{nginx.url}{path}?vsn=2.0.0", timeout=10) as answer:
            assert json.load(answer)["status"] == 410, path
    driver = service.driver(
        "phoenix_node.mjs", "pushes", PHOENIX_VERSION=phoenix, TRANSPORT="longpoll", SERVICE_URL=nginx.url
    )
    joined = driver.expect("joined")
    assert joined["longpoll"] is True and joined["reply"]["status"] == "ok"
    driver.expect("ready")
    assert service.redis.client().publish("to:radar:json-event", '{"via": "nginx"}') == 1
    assert driver.expect("json")["payload"] == {"via": "nginx"}
    assert driver.expect("pushed")["status"] == "ok"
    assert driver.expect("pushed-binary")["status"] == "ok"
    assert driver.expect("opens")["count"] == 1
    driver.finish()


def test_fallback_to_long_polls_when_a_proxy_refuses_websockets(channel_service, blocking_proxy, phoenix):
    """``longPollFallbackMs`` under Node: the upgrade is refused (403 from the proxy), phoenix.js falls back."""
    service = channel_service()
    proxy = blocking_proxy(service.port)
    listener = service.listener("from:radar:*")
    driver = service.driver("phoenix_node.mjs", "pushes", PHOENIX_VERSION=phoenix, TRANSPORT="fallback",
                            SERVICE_URL=proxy.url)
    joined = driver.expect("joined")
    assert joined["longpoll"] is True and joined["reply"]["status"] == "ok"
    driver.expect("ready")
    assert service.redis.client().publish("to:radar:json-event", '{"n": 1}') == 1
    assert driver.expect("json")["payload"] == {"n": 1}
    assert driver.expect("pushed")["status"] == "ok"
    assert json.loads(listener.next("from:radar:custom_event")) == {"request_id": "r-1", "nested": {"a": [1, 2]}}
    assert driver.expect("pushed-binary")["status"] == "ok"
    assert driver.expect("opens")["count"] == 1
    driver.finish()
    assert proxy.refused >= 1

