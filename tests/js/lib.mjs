// Shared by the Node drivers: loading a pinned phoenix.js, talking to pytest.
//
// A driver prints one JSON object per line on stdout, {"step": name, ...data}, and reads
// commands from pytest the same way on stdin, {"command": name, ...data}. pytest decides
// when Redis publishes happen and when the service restarts; the driver only reports what
// the real client saw.

import { createInterface } from "node:readline";
import WebSocket from "ws";

export { WebSocket };

/** The phoenix.js module of one pinned version: "189" or "1816" (package phoenix189, ...). */
export async function loadPhoenix(version = process.env.PHOENIX_VERSION) {
  if (!version) throw new Error("PHOENIX_VERSION is not set");
  return import(`phoenix${version}`);
}

/**
 * The Socket options for the transport TRANSPORT names: "longpoll" is phoenix.js's own
 * LongPoll (fetch under Node); "fallback" the ws package's WebSocket with
 * longPollFallbackMs; anything else, that WebSocket alone.
 */
export function transportOptions(phoenix) {
  if (process.env.TRANSPORT === "longpoll") return { transport: phoenix.LongPoll };
  if (process.env.TRANSPORT === "fallback") return { transport: WebSocket, longPollFallbackMs: 3000 };
  return { transport: WebSocket };
}

/** The service's base URL (http://host:port), from SERVICE_URL. */
export function serviceUrl() {
  const url = process.env.SERVICE_URL;
  if (!url) throw new Error("SERVICE_URL is not set");
  return url;
}

/** The WebSocket endpoint for `new Socket(...)` (phoenix.js appends /websocket). */
export function socketUrl() {
  return serviceUrl().replace(/^http/, "ws");
}

export function report(step, data = {}) {
  process.stdout.write(JSON.stringify({ step, ...data }) + "\n");
}

const pending = [];
const waiters = [];
createInterface({ input: process.stdin }).on("line", line => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  const waiter = waiters.findIndex(w => w.name === command.command);
  if (waiter >= 0) waiters.splice(waiter, 1)[0].resolve(command);
  else pending.push(command);
});

/** Wait until pytest sends the command `name`; resolves to its data. */
export function command(name) {
  const index = pending.findIndex(c => c.command === name);
  if (index >= 0) return Promise.resolve(pending.splice(index, 1)[0]);
  return new Promise(resolve => waiters.push({ name, resolve }));
}

/** POST /token as the frontend does. */
export async function mintToken(channel, id = undefined) {
  const body = { channel };
  if (id !== undefined) body.id = id;
  const response = await fetch(`${serviceUrl()}/token`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body)
  });
  if (!response.ok) throw new Error(`POST /token: ${response.status}`);
  return response.json();
}

/** Resolve when the socket opens, reject on its first error. */
export function opened(socket) {
  return new Promise((resolve, reject) => {
    socket.onOpen(resolve);
    socket.onError(error => reject(new Error(`socket error: ${error && error.message || error}`)));
  });
}

/** channel.join(), as a promise of {status, response}: "ok", "error" and "timeout" all resolve. */
export function join(channel, timeout) {
  return new Promise(resolve => {
    channel
      .join(timeout)
      .receive("ok", response => resolve({ status: "ok", response }))
      .receive("error", response => resolve({ status: "error", response }))
      .receive("timeout", () => resolve({ status: "timeout" }));
  });
}

/** channel.push(), as a promise of {status, response}. */
export function push(channel, event, payload) {
  return new Promise(resolve => {
    channel
      .push(event, payload)
      .receive("ok", response => resolve({ status: "ok", response }))
      .receive("error", response => resolve({ status: "error", response }))
      .receive("timeout", () => resolve({ status: "timeout" }));
  });
}

/** The next `event` on `channel`. */
export function next(channel, event) {
  return new Promise(resolve => {
    const ref = channel.on(event, payload => {
      channel.off(event, ref);
      resolve(payload);
    });
  });
}

/** Bytes of an ArrayBuffer payload as a latin-1 string pytest can compare. */
export function bytesOf(buffer) {
  return Buffer.from(buffer).toString("latin1");
}

/** Run `main`, report its failure as a step and exit non-zero; exit 0 on success. */
export function run(main) {
  main().then(
    () => process.exit(0),
    error => {
      report("failed", { error: String(error && error.stack || error) });
      process.exit(1);
    }
  );
}
