"""
A backend plugin speaking plain Redis pub/sub (async redis-py), doing on the wire what
Tangram's plugins do: the system plugin's ``to:system:update-node`` ticks, jet1090's search
(``from:jet1090:search`` answered on ``to:jet1090:search_result`` with the request's
``request_id``) and its per-client stream (``from:system:join-streaming`` and
``bound-box`` in, ``to:streaming-<id>:new-jet1090-data`` out, a few hundred KB per frame),
and the datalink feed on the colon topic ``datalink:feed``.

Started by tests/test_tangram_flows.py with REDIS_PORT; prints one JSON step per line for
what it received.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import redis.asyncio as redis

AIRCRAFT = 1500  # about 200 bytes each: a frame of about 300 KB
INTERVAL = 0.2


def report(step: str, **data: Any) -> None:
    print(json.dumps({"step": step, **data}), flush=True)


def aircraft(n: int) -> dict[str, Any]:
    return {
        "icao24": f"{0x39C000 + n:06x}",
        "callsign": f"AFR{n:04d}",
        "registration": f"F-G{n:04d}",
        "typecode": "A320",
        "latitude": 43.0 + n / 1000,
        "longitude": 1.0 + n / 1000,
        "altitude": 35000,
        "groundspeed": 450.5,
        "track": 271.3,
        "lastseen": int(time.time() * 1_000_000),
    }


class Plugin:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.clients: dict[str, dict[str, Any] | None] = {}  # connection id -> bounding box

    async def listen(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.psubscribe("from:system:*", "from:jet1090:*")
        report("subscribed")
        async for message in pubsub.listen():
            if message["type"] != "pmessage":
                continue
            channel = message["channel"].decode()
            payload = json.loads(message["data"])
            if channel == "from:system:join-streaming":
                self.clients.setdefault(payload["connectionId"], None)
                report("join-streaming", payload=payload)
            elif channel == "from:system:bound-box":
                self.clients[payload["connectionId"]] = payload
                report("bound-box", payload=payload)
            elif channel == "from:jet1090:search":
                report("search", payload=payload)
                found = [
                    {"state": aircraft(n), "score": 1.0 - n / 10}
                    for n in range(3)
                    if payload["query"].upper() in aircraft(n)["callsign"]
                ]
                await self.redis.publish(
                    "to:jet1090:search_result", json.dumps({"request_id": payload["request_id"], "data": found})
                )

    async def stream(self) -> None:
        while True:
            for connection_id in list(self.clients):
                frame = {"count": AIRCRAFT, "aircraft": [aircraft(n) for n in range(AIRCRAFT)]}
                await self.redis.publish(f"to:streaming-{connection_id}:new-jet1090-data", json.dumps(frame))
            await asyncio.sleep(INTERVAL)

    async def system_and_datalink(self) -> None:
        counter = 0
        while True:
            await self.redis.publish("to:system:update-node", json.dumps({"el": "uptime", "value": f"0:00:{counter:02d}"}))
            await self.redis.publish("to:system:update-node", json.dumps({"el": "info_utc", "value": int(time.time() * 1000)}))
            await self.redis.publish(
                "to:datalink:feed:message", json.dumps({"label": "H1", "flight": "AFR123", "text": "POS N43 E001"})
            )
            counter += 1
            await asyncio.sleep(INTERVAL)


async def main() -> None:
    plugin = Plugin(redis.Redis(port=int(os.environ["REDIS_PORT"])))
    await asyncio.gather(plugin.listen(), plugin.stream(), plugin.system_and_datalink())


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
