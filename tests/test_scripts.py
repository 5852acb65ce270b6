"""The Lua scripts run by SHA, and sent whole only to a Redis that does not know them."""

from __future__ import annotations

from tangram_channel.scripts import Script

from .fakes import FakeRedis


def test_a_script_is_sent_whole_once_then_run_by_its_sha():
    redis = FakeRedis()
    script = Script("retire")
    replies = [script.run(redis, [b"nodes", b"node:a"], [b"a"]) for _ in range(2)]
    assert [d.result for d in replies] == [1, 1]
    assert [command[:2] for command in redis.commands] == [
        ("EVALSHA", script.sha),  # NOSCRIPT: this Redis never saw it
        ("EVAL", script.body),
        ("EVALSHA", script.sha),
    ]


def test_a_redis_that_forgot_the_script_gets_it_again():
    redis = FakeRedis()
    script = Script("retire")
    script.run(redis, [b"nodes", b"node:a"], [b"a"])
    redis.server.script_flush()
    del redis.commands[:]
    assert script.run(redis, [b"nodes", b"node:a"], [b"a"]).result == 1
    assert [command[0] for command in redis.commands] == ["EVALSHA", "EVAL"]


def test_an_error_of_the_script_itself_is_not_sent_again():
    redis = FakeRedis()
    redis.server.set(b"channels", b"not a set")  # list.lua's SMEMBERS fails on it
    script = Script("list")
    errors: list[str] = []
    for _ in range(2):
        script.run(redis, [b"channels"], [b"{tangram-channel}:"]).addErrback(lambda f: errors.append(str(f.value)))
    assert len(errors) == 2 and all("WRONGTYPE" in error for error in errors), errors
    assert [command[0] for command in redis.commands] == ["EVALSHA", "EVAL", "EVALSHA"]
