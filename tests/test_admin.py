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

from .browser import Browser, find_chromium
from .conftest import RunningService
from .e2e import forge_token
from .wsclient import connect, fields


@pytest.fixture
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        pytest.fail("no chromium on PATH: apt-get install chromium")
    return binary


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


def row(channel: str) -> str:
    """JS: the text of the table row of ``channel``, or null."""
    return f"document.querySelector('tr[data-channel={json.dumps(channel)}]')?.innerText ?? null"


async def log_in(browser: Browser, token: str) -> None:
    """Type the token into the page's form and press Connect, as an operator does."""
    await browser.wait_for("document.getElementById('token') !== null", what="the login form")
    await browser.evaluate(
        f"document.getElementById('token').value = {json.dumps(token)}; document.getElementById('connect').click()"
    )


@asynccontextmanager
async def console(start_service, chromium: str, profile: Path, channel: str, client_id: str
                  ) -> AsyncIterator[tuple[RunningService, Browser]]:
    """A service and its /admin page in Chromium, logged in with a token for ``channel``; the browser closes after."""
    service = await start_service(datetime_interval=0)
    browser = await Browser.open(chromium, service.base_url + "/admin", profile)
    try:
        await log_in(browser, forge_token(service.jwt_secret, channel, client_id))
        yield service, browser
    finally:
        browser.close()


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
