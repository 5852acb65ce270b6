"""
The admin console behind the nginx block of docs/deploy.rst (issue 16, point 3): that
block keeps ``/metrics`` for monitoring hosts, and the console, which used to scrape it,
showed "sockets NaN" and "Redis down" there. It must show real numbers.
"""

from __future__ import annotations

import re

import pytest_twisted
import treq

from .admin_console import chromium, logged_in, text_of  # noqa: F401
from .e2e import forge_token
from .nginx import documented_nginx  # noqa: F401
from .wsclient import connect


@pytest_twisted.ensureDeferred
async def test_console_behind_the_documented_nginx_shows_real_numbers(
    start_service, documented_nginx, chromium, tmp_path
):
    """Through the guide's nginx: /metrics is refused, the console shows sockets, Redis up and rates; then, with
    nginx gone, "unavailable"."""
    service = await start_service(datetime_interval=0)
    nginx = documented_nginx(service.port)
    proxy = nginx.url
    assert (await treq.get(proxy + "/metrics")).code == 403  # what the guide's block does to other hosts
    assert (await treq.get(proxy + "/admin/stats")).code == 401  # passed through, and still guarded

    visitor = await connect(proxy.replace("http:", "ws:") + "/websocket")
    await visitor.reply(visitor.join("room", forge_token(service.jwt_secret, "room", "visitor")))
    token = forge_token(service.jwt_secret, "admin", "operator")
    async with logged_in(chromium, proxy + "/admin", tmp_path / "profile", token) as browser:
        await browser.wait_for(f"{text_of('status')} === 'connected'", what="login through nginx")
        await browser.wait_for(f"{text_of('sockets')} === '2'", what="the console's and the visitor's sockets")
        assert await browser.evaluate(text_of("redis")) == "up"
        rate = await browser.wait_for(f"/\\d/.test({text_of('rate-in')}) && {text_of('rate-in')}", what="a rate")
        assert re.fullmatch(r"\d+\.\d/s", rate)
        assert re.fullmatch(r"\d+\.\d/s", await browser.evaluate(text_of("rate-out")))
        await browser.screenshot(tmp_path / "behind-nginx.png")
        assert (tmp_path / "behind-nginx.png").stat().st_size > 1000

        nginx.stop()  # the proxy gone: the numbers say so, instead of NaN, 0 or "Redis down"
        for shown in ("sockets", "redis", "rate-in", "bytes-out"):
            await browser.wait_for(f"{text_of(shown)} === 'unavailable'", what=shown)
    visitor.close()
