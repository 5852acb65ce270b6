"""
A real browser: headless Debian Chromium (tests/js/browser.mjs) runs phoenix.js in a page
served from another origin than the service, against a real ``twistd`` and Redis.
"""

import json

import pytest

from .jsdriver import PHOENIX_VERSIONS, channel_service, page_server  # noqa: F401


@pytest.mark.parametrize("phoenix", PHOENIX_VERSIONS)
def test_page_from_another_origin_mints_joins_shows_and_pushes(channel_service, page_server, phoenix):
    """fetch('/token') across origins (CORS), join, a Redis broadcast shown in the DOM, a push published."""
    service = channel_service()
    page = page_server("cross_origin.html", phoenix)
    listener = service.listener("from:radar:*")
    browser = service.driver("browser.mjs", f"{page.url}?service={service.url}")
    assert browser.expect("token")["origin"] == page.url.rstrip("/")
    joined = browser.expect("joined")
    assert ":radar:" in joined["response"]["id"]
    # Chromium offers permessage-deflate: accepted without context takeover either way
    extensions = [part.strip() for part in joined["extensions"].split(";")]
    assert extensions[0] == "permessage-deflate", joined["extensions"]
    assert {"server_no_context_takeover", "client_no_context_takeover"} <= set(extensions), joined["extensions"]
    assert service.redis.client().publish("to:radar:message", json.dumps({"text": "AFR123 at FL350"})) == 1
    assert browser.expect("shown")["text"] == "AFR123 at FL350"
    aircraft = "AFR" + ",".join(f"{i:04d}" for i in range(2000))  # 10 KB: sent compressed, shown whole
    assert service.redis.client().publish("to:radar:message", json.dumps({"text": aircraft})) == 1
    assert browser.expect("shown")["text"] == aircraft
    browser.send("push", text="hello from the page")
    assert browser.expect("pushed")["status"] == "ok"
    assert json.loads(listener.next("from:radar:custom_event")) == {"from": "chromium", "text": "hello from the page"}
    browser.send("read")
    dom = browser.expect("dom")
    assert dom["title"] == "pushed"
    assert "AFR123 at FL350" in dom["text"]
    browser.send("done")
    browser.finish()


@pytest.mark.parametrize("socket_allowed", [True, False], ids=["page-origin-allowed", "page-origin-refused"])
def test_origin_settings_as_a_browser_meets_them(channel_service, page_server, socket_allowed):
    """cors_origins naming the page lets it mint; allowed_origins decides whether its socket opens."""
    page = page_server("cross_origin.html", "1816")
    origin = page.url.rstrip("/")
    service = channel_service(
        cors_origins=origin, allowed_origins=origin if socket_allowed else "http://elsewhere.example"
    )
    browser = service.driver("browser.mjs", f"{page.url}?service={service.url}")
    assert browser.expect("token")["origin"] == origin
    if socket_allowed:
        assert ":radar:" in browser.expect("joined")["response"]["id"]
    else:
        browser.expect("socket-error")
        assert not [step for step in browser.seen if step["step"] == "joined"]
    browser.send("done")
    browser.finish()
