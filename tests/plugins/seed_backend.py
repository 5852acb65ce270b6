"""
The backend example of Tangram's docs/architecture/channel.md, run as a plugin process.

Kept as written except for what cannot run as written: the example awaits, so ``redis``
is redis-py's asyncio client; it runs inside ``main()``; and it connects to the tests'
private Redis (REDIS_PORT) instead of the default 127.0.0.1:6379, which tests never touch.
"""

import asyncio
import json
import os

import redis.asyncio as redis


async def main() -> None:
    r = redis.Redis(port=int(os.environ["REDIS_PORT"]))

    # Send message to frontend clients
    await r.publish('to:system:update', json.dumps({
        'type': 'message',
        'message': 'Update from backend'
    }))

    # Listen for messages from frontend
    p = r.pubsub()
    await p.psubscribe('from:system:*')
    async for message in p.listen():
        if message['type'] == 'pmessage':
            print(f"Received: {message['data']}")


asyncio.run(main())
