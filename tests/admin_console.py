"""
The admin console in headless Chromium: the page opened and logged in as an operator
does, and what its table and numbers show.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from .browser import Browser, find_chromium


@pytest.fixture
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        pytest.fail("no chromium on PATH: apt-get install chromium")
    return binary


def row(channel: str) -> str:
    """JS: the text of the table row of ``channel``, or null (parenthesized: ``??`` binds looser than ``===``)."""
    return f"(document.querySelector('tr[data-channel={json.dumps(channel)}]')?.innerText ?? null)"


def text_of(element_id: str) -> str:
    """JS: the text of the element ``element_id``."""
    return f"document.getElementById({json.dumps(element_id)}).textContent"


async def log_in(browser: Browser, token: str) -> None:
    """Type the token into the page's form and press Connect, as an operator does.

    The form is parsed before the script that handles it, and through a proxy the page can
    arrive in two reads: a click before the script has run is lost, so wait for the parse."""
    await browser.wait_for(
        "document.getElementById('token') !== null && document.readyState !== 'loading'", what="the form and its script"
    )
    await browser.evaluate(
        f"document.getElementById('token').value = {json.dumps(token)}; document.getElementById('connect').click()"
    )


@asynccontextmanager
async def logged_in(chromium: str, page_url: str, profile: Path, token: str) -> AsyncIterator[Browser]:
    """The console at ``page_url`` in Chromium, logged in with ``token``; the browser closes after."""
    browser = await Browser.open(chromium, page_url, profile)
    try:
        await log_in(browser, token)
        yield browser
    finally:
        browser.close()
