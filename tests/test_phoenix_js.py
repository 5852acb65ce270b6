"""
The official phoenix.js client under Node, at Tangram's pin (1.8.9) and the newest (1.8.16),
against a real ``twistd`` service and a real Redis (driver: tests/js/phoenix_node.mjs).
"""

import json

import pytest

from tangram_channel.protocol import CLOSE_TRY_AGAIN

from .conftest import JWT_SECRET
from .e2e import forge_token
from .jsdriver import PHOENIX_VERSIONS, channel_service, presence_converges, rejoins_after_restart  # noqa: F401
from .live import TEXT, RawSocket, frame, metric, reply_status
from .test_compression import state_payload
from .waiting import wait_until

pytestmark = pytest.mark.parametrize("phoenix", PHOENIX_VERSIONS)


def test_join_broadcasts_and_push(channel_service, phoenix):
    """userToken params, join ok, JSON and binary (ArrayBuffer) broadcasts, JSON and binary pushes published as sent."""
    service = channel_service()
    listener = service.listener("from:radar:*")
    driver = service.driver("phoenix_node.mjs", "basic", PHOENIX_VERSION=phoenix)
    joined = driver.expect("joined")
    assert joined["reply"]["status"] == "ok"
    assert ":radar:" in joined["reply"]["response"]["id"]  # the agent id, <conn_id>:<topic>:<join_ref>
    driver.expect("ready")
    redis = service.redis.client()
    assert redis.publish("to:radar:json-event", '{"flight": "AFR123", "alt": [1, 2.5]}') == 1
    assert redis.publish("to:radar:binary-event", b"Hello from plugin \xff\x00") == 1
    assert driver.expect("json")["payload"] == {"flight": "AFR123", "alt": [1, 2.5]}
    binary = driver.expect("binary")
    assert binary["isArrayBuffer"] is True
    assert binary["bytes"].encode("latin1") == b"Hello from plugin \xff\x00"
    assert driver.expect("pushed") == {"step": "pushed", "status": "ok", "response": {}}
    assert json.loads(listener.next("from:radar:custom_event")) == {"request_id": "r-1", "nested": {"a": [1, 2]}}
    assert driver.expect("pushed-binary")["status"] == "ok"
    assert listener.next("from:radar:arrow-batch") == bytes([0, 1, 2, 254, 255])
    driver.finish()


def test_a_large_broadcast_reaches_ws_compressed(channel_service, phoenix):
    """ws offers permessage-deflate; Tangram-shaped state arrives intact in a fraction of its bytes."""
    service = channel_service()
    driver = service.driver("phoenix_node.mjs", "compressed", PHOENIX_VERSION=phoenix)
    assert "permessage-deflate" in driver.expect("ready")["extensions"]
    payload = state_payload()
    assert service.redis.client().publish("to:radar:state", payload) == 1
    got = driver.expect("state")
    assert got["payload"] == json.loads(payload)
    assert got["bytesRead"] < len(payload) / 5, (got["bytesRead"], len(payload))
    driver.finish()


def test_refused_joins_reach_the_client_as_errors(channel_service, phoenix):
    """An expired token and a token for another channel get "error" with a reason; the socket stays up."""
    service = channel_service()
    expired_token = forge_token(JWT_SECRET, "radar", "late", expires_in=-3600)  # well past the leeway
    driver = service.driver("phoenix_node.mjs", "refused", PHOENIX_VERSION=phoenix, EXPIRED_TOKEN=expired_token)
    expired = driver.expect("expired")
    assert expired["status"] == "error"
    assert expired["response"] == {"reason": "token expired"}
    other = driver.expect("other-channel")
    assert other["status"] == "error"
    assert other["response"] == {"reason": "unauthorized"}
    valid = driver.expect("valid")
    assert valid["reply"]["status"] == "ok"
    assert valid["connected"] is True
    driver.finish()


def test_presence_class_converges_across_clients_and_tabs(channel_service, phoenix):
    """Presence on two clients agrees; two tabs of one id are one key with two metas; leaves shrink it."""
    service = channel_service()
    events = presence_converges(service.driver("phoenix_node.mjs", "presence", PHOENIX_VERSION=phoenix, TOPIC="room"))
    # [kind, key, metas of the key outside this change, metas joining/leaving]: bob arrives
    # (maybe both tabs in one coalesced diff)
    assert ["join", "alice", 0, 1] == events[0]
    assert sum(e[3] for e in events if e[:2] == ["join", "bob"]) == 2


def test_heartbeats_keep_an_idle_socket_open(channel_service, phoenix):
    """
    With idle_timeout 1 s a silent client is closed, and one that joined before it and
    only sent heartbeats since is still open then: no fixed idle time, the silent
    socket's close is the proof that the timeout has passed for both.
    """
    service = channel_service(idle_timeout=1)
    driver = service.driver("phoenix_node.mjs", "heartbeat", PHOENIX_VERSION=phoenix, HEARTBEAT_MS="250")
    assert driver.expect("joined")["reply"]["status"] == "ok"
    assert driver.expect("silent-joined")["reply"]["status"] == "ok"
    assert driver.expect("silent-closed")["code"] == 4000  # idle
    assert driver.expect("pushed")["status"] == "ok"
    assert driver.expect("beating")["closes"] == []
    driver.finish()


def test_client_reconnects_and_rejoins_after_a_service_restart(channel_service, phoenix):
    """After a restart on the same port: reconnect, rejoin, presence_state again, broadcasts again."""
    service = channel_service()
    close = rejoins_after_restart(service, service.driver("phoenix_node.mjs", "restart", PHOENIX_VERSION=phoenix))
    assert close["code"] != 1000


def test_auth_token_option_rides_in_the_subprotocol(channel_service, phoenix):
    """Phoenix 1.8 ``authToken``: handshake accepted with subprotocol "phoenix"; a join without token uses it."""
    service = channel_service()
    listener = service.listener("from:system:*")
    driver = service.driver("phoenix_node.mjs", "authtoken", PHOENIX_VERSION=phoenix)
    assert driver.expect("open")["protocol"] == "phoenix"
    joined = driver.expect("joined")
    assert joined["reply"]["status"] == "ok"
    assert ":system:" in joined["reply"]["response"]["id"]
    assert driver.expect("pushed")["status"] == "ok"
    assert json.loads(listener.next("from:system:custom_event")) == {"via": "authToken"}
    driver.finish()


def test_vsn_1_object_frames(channel_service, phoenix):
    """
    ``vsn=1.0.0``: phoenix.js 1.8 has no V1 serializer of its own (serializer.js is V2 only),
    so the client gets its documented ``encode``/``decode`` options set to the JSON-object
    serializer phoenix.js shipped before 1.3. Every frame the service sends is an object.
    """
    service = channel_service()
    driver = service.driver("phoenix_node.mjs", "v1", PHOENIX_VERSION=phoenix)
    assert driver.expect("joined")["reply"]["status"] == "ok"
    driver.expect("ready")
    assert service.redis.client().publish("to:radar:json-event", "[1, 2, 3]") == 1
    assert driver.expect("json")["payload"] == [1, 2, 3]
    pushed = driver.expect("pushed")
    assert pushed["status"] == "ok"
    assert pushed["frames"] == ["object"]
    driver.finish()


def test_a_push_refused_while_messages_arriving_fill_their_pool_is_retried_after_a_reconnect(channel_service, phoenix):
    """
    A raw socket holds most of ``max_partial_message_bytes`` with a message it has not
    finished; phoenix.js's next large push cannot be held, so its socket is closed with
    1013. The client reconnects and rejoins on its own, the refused push is not answered
    (it times out, and never reaches Redis), and once the holder is done the same push
    goes through.
    """
    service = channel_service(max_partial_message_bytes=1024 * 1024)
    listener = service.listener("from:radar:big")
    driver = service.driver("phoenix_node.mjs", "refusedPush", PHOENIX_VERSION=phoenix, PAD="400000")
    assert driver.expect("join") == {"step": "join", "count": 1, "status": "ok"}
    holder = RawSocket(service.port)
    join_ref, _ = holder.join_ok("radar", forge_token(JWT_SECRET, "radar", "holder"))
    held = frame(TEXT, json.dumps([join_ref, "9", "radar", "held", {"pad": "h" * 900_000}]).encode())
    holder.sock.sendall(held[:-1000])
    wait_until(lambda: metric(service.port, "partial_message_bytes") > 800_000, 10.0, "the holder's message drawn")

    driver.send("push", n=1)
    assert driver.expect("close")["code"] == CLOSE_TRY_AGAIN
    assert driver.expect("open") == {"step": "open", "count": 2}
    assert driver.expect("join") == {"step": "join", "count": 2, "status": "ok"}
    assert driver.expect("pushed") == {"step": "pushed", "n": 1, "status": "timeout"}

    holder.sock.sendall(held[-1000:])
    assert reply_status(holder.reply("9", timeout=10)) == "ok"
    driver.send("push", n=2)
    assert driver.expect("pushed") == {"step": "pushed", "n": 2, "status": "ok"}
    assert json.loads(listener.next("from:radar:big"))["n"] == 2  # the refused push never reached Redis
    driver.send("done")
    driver.finish()
