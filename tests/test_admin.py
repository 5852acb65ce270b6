"""
The admin console at ``/admin`` (issue 7, point 5; issue 16, point 8): served as one
static page, and, in headless Chromium against a real service and Redis, it logs in with
an admin token, shows agents by their user id, rates and charts after real traffic, and
takes the two actions, each confirmed in the page. Screenshots go to the test's tmp_path.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet.task import LoopingCall

from .admin_console import chromium, logged_in, row, text_of  # noqa: F401
from .browser import Browser
from .conftest import RunningService
from .e2e import forge_token
from .waiting import sleep
from .wsclient import PhoenixTestClient, connect, fields


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


def cell(channel: str, column: int) -> str:
    """JS: the text of cell ``column`` (0: channel, 1: members, 2: in/s, 3: out/s, 4: agents) of ``channel``'s row."""
    return f"document.querySelector('tr[data-channel={json.dumps(channel)}]')?.cells[{column}].textContent"


def chip(agent: str) -> str:
    """JS: the agent's element in the table (its user id, with the agent id as its title)."""
    return f"document.querySelector('.agent[data-agent={json.dumps(agent)}]')"


async def joined_visitor(service: RunningService) -> tuple[PhoenixTestClient, str]:
    """A client joined to ``room`` with a token whose id is ``visitor``, and its agent id."""
    visitor = await connect(service.ws_url)
    reply = await visitor.reply(visitor.join("room", forge_token(service.jwt_secret, "room", "visitor")))
    return visitor, fields(reply)[4]["response"]["id"]


async def screenshot(browser: Browser, path: Path) -> None:
    await browser.screenshot(path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and path.stat().st_size > 1000


@pytest_twisted.ensureDeferred
async def test_console_shows_agents_by_user_id_and_not_itself(start_service, chromium, tmp_path):
    """A client's join shows its token's id (agent id on hover); the console is no member; a leave removes the row."""
    async with console(start_service, chromium, tmp_path / "profile", "admin", "operator") as (service, browser):
        await browser.wait_for(f"{text_of('status')} === 'connected'", what="login")
        assert await browser.evaluate("document.getElementById('dashboard').hidden") is False
        await browser.wait_for(f"{cell('admin', 1)} === '0'", what="the admin channel, without the console")

        visitor, agent = await joined_visitor(service)
        await browser.wait_for(f"{chip(agent)}?.textContent.startsWith('visitor')", what="the visitor by its id")
        assert await browser.evaluate(f"{chip(agent)}.title") == agent
        assert await browser.evaluate(cell("room", 1)) == "1"
        assert await browser.evaluate(text_of("members")) == "1"
        await browser.wait_for(f"{text_of('sockets')} === '2'", what="the socket count")
        await screenshot(browser, tmp_path / "agents.png")

        visitor.close()
        await visitor.closed
        await browser.wait_for(f"{row('room')} === null", what="the visitor's leave")


@pytest_twisted.ensureDeferred
async def test_console_shows_rates_and_charts_after_real_traffic(start_service, chromium, redis_server, tmp_path):
    """While a client pushes and a plugin broadcasts: the channel's rates, this node's rates and the charts move."""
    async with console(start_service, chromium, tmp_path / "profile", "admin", "operator") as (service, browser):
        visitor, _ = await joined_visitor(service)
        plugin = redis_server.client()

        def traffic() -> None:
            visitor.push("room", "note", {"text": "x" * 100})
            plugin.publish("to:room:news", json.dumps({"text": "y" * 100}))

        loop = LoopingCall(traffic)
        loop.start(0.05)
        try:
            await browser.wait_for(f"parseFloat({cell('room', 2)}) > 0 && parseFloat({cell('room', 3)}) > 0",
                                   what="the room's rates")
            await browser.wait_for(f"parseFloat({text_of('bytes-in')}) > 0 && parseFloat({text_of('rate-out')}) > 0",
                                   what="this node's rates")
            # two samples five seconds apart make the first point of each rate's line
            await browser.wait_for("document.getElementById('chart-messages').dataset.points >= 2", timeout=20,
                                   what="a messages chart")
            await browser.wait_for(f"parseFloat({text_of('last-messages')}) > 0", timeout=10, what="a charted rate")
        finally:
            loop.stop()
        lines = await browser.evaluate("[...document.querySelectorAll('#chart-messages polyline')].length")
        assert lines == 2
        assert await browser.evaluate("document.querySelector('#chart-sockets polyline').getAttribute('points')")
        await screenshot(browser, tmp_path / "traffic.png")
        visitor.close()


async def answer_dialog(browser: Browser, button: str, tmp_path: Path) -> str:
    """Wait for the page's confirmation, screenshot it, press ``button`` (yes/no); the question."""
    await browser.wait_for("document.getElementById('confirm').open", what="the confirmation")
    question = await browser.evaluate(text_of("confirm-text"))
    await screenshot(browser, tmp_path / f"confirm-{button}.png")
    await browser.evaluate(f"document.getElementById('confirm-{button}').click()")
    return question


@pytest_twisted.ensureDeferred
async def test_console_publish_is_confirmed_and_reaches_a_joined_client(start_service, chromium, tmp_path):
    """Publish from the page: cancelled, nothing arrives; confirmed, the joined client gets the message."""
    async with console(start_service, chromium, tmp_path / "profile", "admin", "operator") as (service, browser):
        visitor, _ = await joined_visitor(service)
        await browser.wait_for(row("room"), what="the room")
        await browser.evaluate(
            "document.getElementById('publish-channel').value = 'room';"
            "document.getElementById('publish-payload').value = '{\"msg\": \"from the console\"}';"
            "document.getElementById('publish-button').click()"
        )
        assert await answer_dialog(browser, "no", tmp_path) == "Publish test to room?"
        await browser.wait_for(f"{text_of('action-result')} === 'cancelled'", what="the cancel")
        await browser.evaluate("document.getElementById('publish-button').click()")
        await answer_dialog(browser, "yes", tmp_path)
        frame = await visitor.until(lambda f: fields(f)[3] == "test")
        assert fields(frame) == (None, None, "room", "test", {"msg": "from the console"})
        await sleep(0.3)
        assert not [f for f in visitor.frames.pending if fields(f)[3] == "test"], "the cancelled publish went out"
        await browser.wait_for(f"{text_of('action-result')}.startsWith('publish: done')", what="the result")
        await screenshot(browser, tmp_path / "published.png")
        visitor.close()


@pytest_twisted.ensureDeferred
async def test_console_disconnect_is_confirmed_and_closes_the_client(start_service, chromium, tmp_path):
    """The agent's disconnect button asks, by the user's id, then the client's socket is closed and its row goes."""
    async with console(start_service, chromium, tmp_path / "profile", "admin", "operator") as (service, browser):
        visitor, agent = await joined_visitor(service)
        await browser.wait_for(f"{chip(agent)}?.textContent.startsWith('visitor')", what="the visitor by its id")
        await browser.evaluate(f"{chip(agent)}.querySelector('button.disconnect').click()")
        assert await answer_dialog(browser, "yes", tmp_path) == f"Disconnect visitor ({agent})?"
        assert await visitor.wait_closed() == 1008
        await browser.wait_for(f"{row('room')} === null", what="the visitor gone")
        await browser.wait_for(f"{text_of('action-result')}.startsWith('disconnect: done')", what="the result")
        await screenshot(browser, tmp_path / "disconnected.png")


@pytest_twisted.ensureDeferred
async def test_console_refuses_a_token_for_another_channel(start_service, chromium, tmp_path):
    """A token that is not for admin: the page says the join was refused and shows no table."""
    async with console(start_service, chromium, tmp_path / "profile", "room", "intruder") as (_, browser):
        status = await browser.wait_for("document.getElementById('status').textContent", what="the refusal")
        assert status == "join refused: unauthorized"
        assert await browser.evaluate("document.getElementById('dashboard').hidden") is True
