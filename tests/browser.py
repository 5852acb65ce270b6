"""
Headless Debian ``chromium`` driven over the Chrome DevTools Protocol, in the reactor.

No browser package of its own: the page's WebSocket debugger URL is opened with the
tests' WebSocket client, and CDP's JSON commands go over it.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import treq

from .waiting import eventually
from .wsclient import PhoenixTestClient, connect


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """One headless Chromium showing one page."""

    def __init__(self, process: subprocess.Popen[bytes], page: PhoenixTestClient) -> None:
        self.process = process
        self.page = page
        self._ids = itertools.count(1)

    @classmethod
    async def open(cls, binary: str, url: str, profile: Path) -> Browser:
        """Start Chromium on ``url``; ``profile`` is its fresh user-data directory."""
        process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={profile}", "--window-size=1100,700", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Chromium writes the port it chose here once it listens
        active = profile / "DevToolsActivePort"
        await eventually(lambda: active.exists() and len(active.read_text().splitlines()) >= 2, 20, "Chromium")
        port = int(active.read_text().splitlines()[0])
        targets = json.loads(await (await treq.get(f"http://127.0.0.1:{port}/json/list")).content())
        page = next(t for t in targets if t["type"] == "page")
        return cls(process, await connect(page["webSocketDebuggerUrl"]))

    async def command(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one CDP command and return its result; events in between are dropped."""
        ident = next(self._ids)
        self.page.send_raw(json.dumps({"id": ident, "method": method, "params": params}))
        answer = await self.page.until(lambda m: m.get("id") == ident, timeout=20)
        assert "error" not in answer, answer
        return answer["result"]

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = await self.command("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0, what: str = "the page") -> Any:
        """Poll an expression until it is truthy; its value."""
        return await eventually(lambda: self.evaluate(expression), timeout, f"{what}: {expression}", 0.05)

    async def screenshot(self, path: Path) -> None:
        data = (await self.command("Page.captureScreenshot", format="png"))["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.page.close()
        self.process.kill()
        self.process.wait()
