// Opens one page in headless Debian Chromium (through playwright-core, never a downloaded
// browser) and relays between it and pytest:
//   node browser.mjs PAGE_URL [ROUTE_URL=FILE ...]
// - the page calls window.reportStep({step, ...}) and console.log; both become step lines
//   ("console" steps carry the text);
// - a {"command": "read"} line reports the page's title and body text as a "dom" step;
//   any other command is handed to window.onCommand(command) in the page;
// - ROUTE_URL=FILE answers requests for ROUTE_URL with FILE, so a page can live on the
//   service's own origin (the seed's snippet uses a relative socket URL).
// Exits 0 after a "done" command, 1 when the page throws or reports "failed" before it.

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { extname, join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run"
];
const TYPES = { ".html": "text/html", ".js": "text/javascript" };

function report(step, data = {}) {
  process.stdout.write(JSON.stringify({ step, ...data }) + "\n");
}

const [pageUrl, ...routes] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), "tangram-chromium-"));
let context;

let finishing;

// The first call decides the exit code: a page error raised while the browser closes
// after "done" must not turn a passed run into a failure.
function finish(code) {
  finishing ??= (async () => {
    if (context) await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
    process.exit(code);
  })();
  return finishing;
}

process.on("unhandledRejection", error => {
  if (finishing) return;
  report("failed", { error: `unhandled rejection: ${error && error.stack || error}` });
  finish(1);
});

try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: FLAGS
  });
  report("launched", { version: context.browser() ? context.browser().version() : null });
  const page = context.pages()[0] || await context.newPage();
  if (routes.length) {
    // A routed document has no network address, so Chromium's Local Network Access checks
    // treat it as public and block its socket to 127.0.0.1; a page really served from the
    // service's host would be loopback. Grant what that page would have.
    await context.grantPermissions(["local-network-access"]);
  }
  for (const route of routes) {
    const [url, file] = route.split("=");
    await page.route(url, r => r.fulfill({
      status: 200, contentType: TYPES[extname(file)] || "application/octet-stream", body: readFileSync(file)
    }));
  }
  page.on("console", message => report("console", { text: message.text() }));
  page.on("pageerror", error => { report("failed", { error: `page error: ${error.stack || error}` }); finish(1); });
  await page.exposeFunction("reportStep", data => {
    report(data.step, data);
    if (data.step === "failed") finish(1);
  });
  createInterface({ input: process.stdin }).on("line", async line => {
    if (!line.trim()) return;
    const command = JSON.parse(line);
    try {
      if (command.command === "done") await finish(0);
      else if (command.command === "read") {
        report("dom", { title: await page.title(), text: await page.innerText("body") });
      } else await page.evaluate(c => window.onCommand(c), command);
    } catch (error) {
      report("failed", { error: String(error.stack || error) });
      await finish(1);
    }
  });
  await page.goto(pageUrl);
  report("loaded", { url: page.url() });
} catch (error) {
  report("failed", { error: String(error.stack || error) });
  await finish(1);
}
