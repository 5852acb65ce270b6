"""End to end over real sockets and a real Redis: the five-minute walk-through."""

import pytest_twisted

from .e2e import mint
from .wsclient import connect


@pytest_twisted.ensureDeferred
async def test_join_broadcast_and_push(start_service, flushed_redis):
    service = await start_service(datetime_interval=0)
    token = (await mint(service.base_url, "system"))["token"]
    client = await connect(service.ws_url + "?vsn=2.0.0")
    ref = client.join("system", token)
    reply = await client.reply(ref)
    assert reply[4]["status"] == "ok"
    state = await client.next()
    assert state[3] == "presence_state"
    redis = flushed_redis.client()
    assert redis.publish("to:system:test", '{"msg":"hi"}') == 1
    frame = await client.until(lambda f: f[3] == "test")
    assert frame == [None, None, "system", "test", {"msg": "hi"}]
    client.close()
    await client.closed
