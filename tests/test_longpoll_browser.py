"""
phoenix.js's long polling in headless Chromium, from a page on another origin, against a
real ``twistd`` and Redis: ``transport: LongPoll``, and ``longPollFallbackMs`` behind a
proxy that refuses the WebSocket upgrade.
"""

import json

import pytest

from .blocking_proxy import blocking_proxy  # noqa: F401
from .jsdriver import PHOENIX_VERSIONS, channel_service, page_server  # noqa: F401

pytestmark = pytest.mark.parametrize("phoenix", PHOENIX_VERSIONS)


def exchange(service, browser, listener) -> None:
    """Joined over long polls, a Redis broadcast shown, a push acked and published."""
    joined = browser.expect("joined")
    assert joined["longpoll"] is True
    assert ":radar:" in joined["response"]["id"]
    assert service.redis.client().publish("to:radar:message", json.dumps({"text": "AFR123 at FL350"})) == 1
    assert browser.expect("shown")["text"] == "AFR123 at FL350"
    browser.send("push", text="hello over long polls")
    pushed = browser.expect("pushed")
    assert pushed["status"] == "ok"
    assert pushed["opens"] == 1  # over long polls from the start (or the fallback): no session lost
    assert json.loads(listener.next("from:radar:custom_event")) == {"from": "chromium", "text": "hello over long polls"}
    browser.send("done")
    browser.finish()


def test_long_poll_transport_in_chromium(channel_service, page_server, phoenix):
    service = channel_service()
    page = page_server("cross_origin.html", phoenix)
    listener = service.listener("from:radar:*")
    browser = service.driver("browser.mjs", f"{page.url}?service={service.url}&transport=longpoll")
    exchange(service, browser, listener)


def test_fallback_to_long_polls_when_a_proxy_refuses_websockets(channel_service, page_server, blocking_proxy, phoenix):
    """``longPollFallbackMs``: the upgrade is refused (403 from the proxy), phoenix.js falls back and joins."""
    service = channel_service()
    proxy = blocking_proxy(service.port)
    page = page_server("cross_origin.html", phoenix)
    listener = service.listener("from:radar:*")
    browser = service.driver("browser.mjs", f"{page.url}?service={proxy.url}&fallback=3000")
    exchange(service, browser, listener)
    assert proxy.refused >= 1  # it did try the WebSocket first


def test_fallback_on_two_workers(channel_service, page_server, blocking_proxy, phoenix):
    """The browser's XMLHttpRequest polls, spread by the kernel over two workers, all reach the session."""
    service = channel_service(workers=2)
    proxy = blocking_proxy(service.port)
    page = page_server("cross_origin.html", phoenix)
    listener = service.listener("from:radar:*")
    browser = service.driver("browser.mjs", f"{page.url}?service={proxy.url}&fallback=3000")
    exchange(service, browser, listener)
