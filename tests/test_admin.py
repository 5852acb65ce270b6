"""
The admin console at ``/admin`` (issue 7, point 5): served as one static page, and,
in headless Chromium against a real service and Redis, it logs in with an admin token
and shows a client's join and leave live.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_twisted
import treq

from .admin_console import chromium, logged_in, row  # noqa: F401
from .browser import Browser
from .conftest import RunningService
from .e2e import forge_token
from .wsclient import connect, fields


@pytest_twisted.ensureDeferred
async def test_admin_page_is_one_static_page_with_a_strict_policy(start_service):
    """GET /admin: the HTML page, no outside scripts allowed; deeper paths are 404."""
    service = await start_service(datetime_interval=0)
    response = await treq.get(service.base_url + "/admin")
    body = (await response.content()).decode()
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    assert "default-src 'none'" in response.headers.getRawHeaders("content-security-policy")[0]
    assert '<input id="token"' in body and "<script src" not in body
    assert (await treq.get(service.base_url + "/admin/other")).code == 404


@pytest_twisted.ensureDeferred
async def test_stats_answer_only_an_admin_token(start_service):
    """GET /admin/stats: 401 without a token or with a token for another channel; JSON for an admin token."""
    service = await start_service(datetime_interval=0)
    url = service.base_url + "/admin/stats"
    for headers in ({}, {"authorization": "Bearer " + forge_token(service.jwt_secret, "room", "visitor")},
                    {"authorization": "Bearer " + forge_token("another-secret-that-is-long-enough!!", "admin")}):
        response = await treq.get(url, headers=headers)
        assert response.code == 401, headers
        assert "secret" not in (await response.text())
    visitor = await connect(service.ws_url)
    await visitor.reply(visitor.join("room", forge_token(service.jwt_secret, "room", "visitor")))
    response = await treq.get(url, headers={"authorization": "Bearer " + forge_token(service.jwt_secret, "admin")})
    stats = json.loads(await response.content())
    assert response.code == 200
    assert stats["sockets"] == 1 and stats["joins"] == 1 and stats["redis_connected"] is True
    assert stats["messages_in"] == 1 and stats["bytes_in"] > 0 and stats["messages_out"] >= 2
    visitor.close()


@asynccontextmanager
async def console(start_service, chromium: str, profile: Path, channel: str, client_id: str
                  ) -> AsyncIterator[tuple[RunningService, Browser]]:
    """A service and its /admin page in Chromium, logged in with a token for ``channel``; the browser closes after."""
    service = await start_service(datetime_interval=0)
    token = forge_token(service.jwt_secret, channel, client_id)
    async with logged_in(chromium, service.base_url + "/admin", profile, token) as browser:
        yield service, browser


@pytest_twisted.ensureDeferred
async def test_console_logs_in_and_shows_a_client_join_and_leave(start_service, chromium, tmp_path):
    """Log in with an admin token; a client's join appears in the table with its agent, its leave removes it."""
    async with console(start_service, chromium, tmp_path / "profile", "admin", "operator") as (service, browser):
        await browser.wait_for("document.getElementById('status').textContent === 'connected'", what="login")
        assert await browser.evaluate("document.getElementById('dashboard').hidden") is False
        await browser.wait_for(row("admin"), what="the admin channel listed")

        visitor = await connect(service.ws_url)
        reply = await visitor.reply(visitor.join("room", forge_token(service.jwt_secret, "room", "visitor")))
        agent = fields(reply)[4]["response"]["id"]
        # channel.add (an empty row) comes first, then channel.join fills it in
        expected = "\t".join(["room", "1", agent])
        await browser.wait_for(f"{row('room')} === {json.dumps(expected)}", what="the visitor's join")
        await browser.wait_for("document.getElementById('sockets').textContent === '2'", what="the socket count")
        await browser.screenshot(tmp_path / "admin.png")
        assert (tmp_path / "admin.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

        visitor.close()
        await visitor.closed
        await browser.wait_for(f"{row('room')} === null", what="the visitor's leave")


@pytest_twisted.ensureDeferred
async def test_console_refuses_a_token_for_another_channel(start_service, chromium, tmp_path):
    """A token that is not for admin: the page says the join was refused and shows no table."""
    async with console(start_service, chromium, tmp_path / "profile", "room", "intruder") as (_, browser):
        status = await browser.wait_for("document.getElementById('status').textContent", what="the refusal")
        assert status == "join refused: unauthorized"
        assert await browser.evaluate("document.getElementById('dashboard').hidden") is True
