"""
Tokens and access end to end, on a live ``twistd`` service and a real Redis: forged and
misused tokens are refused, tokens never reach the log or Redis, Origins are checked,
and the secret's source and the default-secret guard work as documented.
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .conftest import free_port
from .e2e import RedisMonitor, forge_token
from .live import SECRET, RawSocket, post_token, reply_reason, reply_status, start_twistd, token
from .waiting import wait_until


def _rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


FORGED = {
    "alg none": lambda: forge_token(SECRET, "room", algorithm="none"),
    "HS512": lambda: forge_token(SECRET, "room", algorithm="HS512"),
    "RS256": lambda: forge_token(_rsa_pem(), "room", algorithm="RS256"),
    "wrong key": lambda: forge_token("not-the-service-secret-but-long-enough-for-hs256", "room"),
    "default secret": lambda: forge_token("secret", "room"),
    "missing exp": lambda: token("room", expires_in=None),
    "expired": lambda: token("room", expires_in=-3600),
    "other channel": lambda: token("other"),
}


@pytest.mark.parametrize("name", FORGED)
def test_forged_or_misused_tokens_are_refused(twistd, flushed_redis, name):
    """Whatever the token's flaw, the join is refused with a reason and the socket stays open."""
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    client = RawSocket(service.port)
    reply = client.reply(client.join("room", FORGED[name]()))
    expected = "token expired" if name == "expired" else "unauthorized"
    assert (reply_status(reply), reply_reason(reply)) == ("error", expected)
    client.join_ok("room", token("room"))  # the same socket, with the secret from TANGRAM_CHANNEL_JWT_SECRET


def test_admin_tokens_need_the_admin_key(twistd, flushed_redis):
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, admin_key="the-admin-key", datetime_interval=0)
    assert post_token(service.port, {"channel": "admin"})[0] == 403
    assert post_token(service.port, {"channel": "admin"}, {"authorization": "Bearer guess"})[0] == 403
    code, minted = post_token(service.port, {"channel": "admin"}, {"authorization": "Bearer the-admin-key"})
    assert code == 200
    RawSocket(service.port).join_ok("admin", minted["token"])


def _everything_stored(redis) -> bytes:
    """Every key and value in Redis, flattened, whatever the types."""
    dump = []
    for key in redis.keys("*"):
        kind = redis.type(key)
        value = {
            b"hash": lambda: redis.hgetall(key),
            b"set": lambda: redis.smembers(key),
            b"zset": lambda: redis.zrange(key, 0, -1),
            b"string": lambda: redis.get(key),
            b"list": lambda: redis.lrange(key, 0, -1),
        }[kind]()
        dump.append(repr((key, value)).encode())
    return b"\n".join(dump)


def test_tokens_never_reach_the_log_or_redis(twistd, flushed_redis):
    """Joins with tokens in the payload, ``userToken`` and the subprotocol, and a refused one."""
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    monitor = RedisMonitor(flushed_redis.port)
    tokens = [token("room", f"user-{i}") for i in range(3)] + [token("room", "refused", expires_in=-3600)]
    RawSocket(service.port).join_ok("room", tokens[0])
    by_query = RawSocket(service.port, f"/websocket?vsn=2.0.0&userToken={tokens[1]}")
    assert reply_status(by_query.reply(by_query.join("room", None))) == "ok"
    offered = "base64url.bearer.phx." + base64.urlsafe_b64encode(tokens[2].encode()).decode().rstrip("=")
    by_protocol = RawSocket(service.port, headers={"Sec-WebSocket-Protocol": f"phoenix, {offered}"})
    assert reply_status(by_protocol.reply(by_protocol.join("room", None))) == "ok"
    refused = RawSocket(service.port)
    assert reply_status(refused.reply(refused.join("room", tokens[3]))) == "error"
    pusher = RawSocket(service.port)
    join_ref, _ = pusher.join_ok("room", tokens[0])
    assert reply_status(pusher.reply(pusher.push("room", "talk", {"hello": 1}, join_ref))) == "ok"

    marker = b"monitor-caught-up"
    flushed_redis.client().echo(marker)
    wait_until(lambda: marker in monitor.seen, 5, "MONITOR to catch up")
    monitor.close()
    commands = bytes(monitor.seen)
    stored = _everything_stored(flushed_redis.client())
    log = service.log()
    assert b"PUBLISH" in commands and b"{tangram-channel}:presence:room" in stored  # the reads saw something
    for t in tokens:
        signature = t.rsplit(".", 1)[1]
        assert signature.encode() not in commands
        assert signature.encode() not in stored
        assert signature not in log


def test_other_origins_are_refused_with_403(twistd, flushed_redis):
    service = start_twistd(
        twistd, "--redis-url", flushed_redis.url, allowed_origins="https://good.example", datetime_interval=0
    )
    assert RawSocket(service.port, headers={"Origin": "https://good.example"}).status == 101
    for origin in ("https://evil.example", "null", "https://good.example.evil.example"):
        refused = RawSocket(service.port, headers={"Origin": origin})
        assert refused.status == 403
        assert "Origin" in json.loads(refused.body)["error"]
    assert RawSocket(service.port).status == 403  # no Origin at all


def test_default_secret_is_refused_beyond_loopback(twistd, flushed_redis):
    proc = twistd(
        "--host", "0.0.0.0", "--port", str(free_port()), "--redis-url", flushed_redis.url,
        env={"TANGRAM_CHANNEL_EMBEDDED_REDIS": "false"},
    )
    assert proc.process.wait(timeout=30) != 0
    log = proc.log()
    assert "jwt_secret" in log and "TANGRAM_CHANNEL_JWT_SECRET" in log
