"""
The seed's own examples (Tangram's docs/architecture/channel.md) work as written: the
JavaScript snippet in headless Chromium, the Python backend snippet as a plugin process,
and the curl and redis-cli commands.
"""

import datetime
import json

import pytest

from .jsdriver import JS_DIR, PHOENIX_VERSIONS, STEP_TIMEOUT, channel_service  # noqa: F401
from .waiting import wait_until


@pytest.mark.parametrize("phoenix", PHOENIX_VERSIONS)
def test_js_snippet_and_python_backend_snippet(channel_service, phoenix):
    """The JS snippet joins on /websocket, logs datetimes and pushes; the backend snippet's update arrives and it receives pushes."""
    service = channel_service(datetime_interval=0.2)
    listener = service.listener("from:*")
    browser = service.driver(
        "browser.mjs",
        f"{service.url}/snippet.html",
        f"{service.url}/snippet.html={JS_DIR / 'pages' / 'seed_snippet.html'}",
        f"{service.url}/phoenix.js={JS_DIR / 'node_modules' / f'phoenix{phoenix}' / 'priv' / 'static' / 'phoenix.js'}",
    )
    assert browser.expect("endpoint")["url"].startswith(f"ws://127.0.0.1:{service.port}/websocket/websocket?")
    assert browser.expect("console", lambda s: s["text"].startswith("Join"))["text"].startswith("Joined successfully")
    line = browser.expect("console", lambda s: s["text"].startswith("Current time: "))["text"]
    assert datetime.datetime.fromisoformat(line.removeprefix("Current time: ")).tzinfo is not None
    assert json.loads(listener.next("from:system:custom_event")) == {"message": "Hello from client"}

    redis = service.redis.client()
    patterns = redis.pubsub_numpat()
    backend = service.driver("seed_backend.py")
    assert browser.expect("update")["payload"] == {"type": "message", "message": "Update from backend"}
    wait_until(lambda: redis.pubsub_numpat() > patterns, STEP_TIMEOUT, "the plugin's subscription")
    browser.send("push-again")
    assert backend.expect("stdout")["line"] == "Received: b'{\"message\":\"Hello from client\"}'"
    browser.send("done")
    browser.finish()


def test_readme_curl_and_redis_cli_commands(channel_service):
    """curl mints the documented token; redis-cli psubscribe sees both directions; redis-cli publish reaches a client."""
    service = channel_service()
    curl = service.command(
        "curl", "-sS", "-X", "POST", f"http://localhost:{service.port}/token",
        "-H", "Content-Type: application/json",
        "-d", '{"channel": "system", "id": "client1"}',
    )
    minted = json.loads(curl.expect("stdout")["line"])
    assert minted["id"] == "client1" and minted["channel"] == "system" and minted["token"].startswith("eyJ")
    curl.finish()

    cli = ["redis-cli", "-p", str(service.redis.port)]
    from_clients = service.command(*cli, "psubscribe", "from:*")
    to_clients = service.command(*cli, "psubscribe", "to:*")
    for subscriber in (from_clients, to_clients):
        subscriber.expect("stdout", lambda s: s["line"] == "1")  # psubscribe, pattern, count
    client = service.driver("phoenix_node.mjs", "listen", PHOENIX_VERSION="1816", TOPIC="system")
    assert client.expect("joined")["reply"]["status"] == "ok"

    publish = service.command(*cli, "publish", "to:system:test", '{"type":"message","message":"Test from Redis"}')
    assert publish.expect("stdout")["line"] == "2"  # the service and the psubscribe "to:*" above
    publish.finish()
    message = client.expect("message", lambda s: s["event"] == "test")
    assert message["payload"] == {"type": "message", "message": "Test from Redis"}
    to_clients.expect("stdout", lambda s: s["line"] == "to:system:test")  # past the service's to:admin:*
    assert to_clients.expect("stdout")["line"] == '{"type":"message","message":"Test from Redis"}'

    client.send("push", event="custom_event", payload={"message": "Hello from client"})
    assert client.expect("pushed")["status"] == "ok"
    from_clients.expect("stdout", lambda s: s["line"] == "from:system:custom_event")
    assert from_clients.expect("stdout")["line"] == '{"message":"Hello from client"}'
    client.send("done")
    client.finish()
