// The official phoenix.js client under Node, one scenario per run:
//   PHOENIX_VERSION=189|1816 SERVICE_URL=http://127.0.0.1:PORT node phoenix_node.mjs SCENARIO
// Steps and commands: see lib.mjs. tests/test_phoenix_js.py drives every scenario.

import {
  bytesOf, command, join, loadPhoenix, mintToken, next, opened, push, report, run, socketUrl,
  transportOptions
} from "./lib.mjs";

const phoenix = await loadPhoenix();
const { Socket, Presence } = phoenix;
// TRANSPORT=longpoll|fallback: the same scenarios over phoenix.js's LongPoll
const transport = transportOptions(phoenix);
// with a fallback the WebSocket's error comes first, and only the open that follows counts
const FALLBACK = process.env.TRANSPORT === "fallback";
const TOPIC = process.env.TOPIC || "radar";

/** A connected socket carrying the frontend's `params: {userToken}`, and its id. */
async function connectAs(id = undefined, options = {}) {
  const { id: clientId, token } = await mintToken("system", id);
  const socket = new Socket(socketUrl(), { ...transport, params: { userToken: token }, ...options });
  socket.connect();
  await (FALLBACK ? new Promise(resolve => socket.onOpen(resolve)) : opened(socket));
  return { socket, id: clientId };
}

/** Join TOPIC with a token minted for it and the client's id. */
async function joinTopic(socket, id, topic = TOPIC) {
  const { token } = await mintToken(topic, id);
  const channel = socket.channel(topic, { token });
  return { channel, reply: await join(channel) };
}

/**
 * A socket that reports every open and close, and its TOPIC channel, joining, that
 * reports every join reply (rejoins included): not connected yet, so that handlers
 * can be added first.
 */
async function reportingJoin() {
  const counts = { open: 0, join: 0 };
  const { token, id } = await mintToken("system");
  const socket = new Socket(socketUrl(), { ...transport, params: { userToken: token } });
  socket.onOpen(() => report("open", { count: ++counts.open }));
  socket.onClose(event => report("close", { code: event.code }));
  const channel = socket.channel(TOPIC, { token: (await mintToken(TOPIC, id)).token });
  channel.join()
    .receive("ok", () => report("join", { count: ++counts.join, status: "ok" }))
    .receive("error", response => report("join", { count: ++counts.join, status: "error", response }));
  return { socket, channel };
}

const scenarios = {
  /** Join, one JSON and one binary broadcast from Redis, one JSON and one binary push. */
  async basic() {
    const { socket, id } = await connectAs();
    const { channel, reply } = await joinTopic(socket, id);
    report("joined", { id, reply });
    const json = next(channel, "json-event");
    const binary = next(channel, "binary-event");
    report("ready");
    report("json", { payload: await json });
    const bytes = await binary;
    report("binary", { isArrayBuffer: bytes instanceof ArrayBuffer, bytes: bytesOf(bytes) });
    report("pushed", await push(channel, "custom_event", { request_id: "r-1", nested: { a: [1, 2] } }));
    const raw = new Uint8Array([0, 1, 2, 254, 255]).buffer;
    report("pushed-binary", await push(channel, "arrow-batch", raw));
    socket.disconnect();
  },

  /**
   * What every transport carries (binary broadcasts cannot ride in a long poll's JSON):
   * join, a JSON broadcast from Redis, a JSON and a binary push with their acks.
   */
  async pushes() {
    const { socket, id } = await connectAs();
    let opens = 1;  // a session lost (410) shows as another open
    socket.onOpen(() => opens++);
    const { channel, reply } = await joinTopic(socket, id);
    report("joined", { id, reply, longpoll: socket.conn instanceof phoenix.LongPoll });
    const json = next(channel, "json-event");
    report("ready");
    report("json", { payload: await json });
    report("pushed", await push(channel, "custom_event", { request_id: "r-1", nested: { a: [1, 2] } }));
    const raw = new Uint8Array([0, 1, 2, 254, 255]).buffer;
    report("pushed-binary", await push(channel, "arrow-batch", raw));
    report("opens", { count: opens });
    socket.disconnect();
  },

  /** ws offers permessage-deflate by default: what was agreed, and a large broadcast inflated, with the bytes read for it. */
  async compressed() {
    const { socket, id } = await connectAs();
    const { channel } = await joinTopic(socket, id);
    const conn = socket.conn;
    const before = conn._socket.bytesRead;
    const state = next(channel, "state");
    report("ready", { extensions: conn.extensions });
    const payload = await state;
    report("state", { payload, bytesRead: conn._socket.bytesRead - before });
    socket.disconnect();
  },

  /** Joins refused by the token reach the client as "error" replies; the socket stays usable. */
  async refused() {
    const { socket, id } = await connectAs();
    const expired = socket.channel(TOPIC, { token: process.env.EXPIRED_TOKEN });
    report("expired", await join(expired));
    expired.leave();
    const { token: elsewhere } = await mintToken("elsewhere", id);
    const wrong = socket.channel(TOPIC, { token: elsewhere });
    report("other-channel", await join(wrong));
    wrong.leave();
    const { reply } = await joinTopic(socket, id);
    report("valid", { reply, connected: socket.isConnected() });
    socket.disconnect();
  },

  /** Presence on alice and on bob's second tab while bob's two tabs come and go. */
  async presence() {
    const clients = {};
    for (const name of ["alice", "bob-tab-1", "bob-tab-2"]) {
      const id = name.split("-")[0];
      const { socket } = await connectAs(id);
      const { token } = await mintToken(TOPIC, id);
      const channel = socket.channel(TOPIC, { token });
      const presence = new Presence(channel);
      const client = { socket, channel, presence, events: [], syncs: [] };
      presence.onJoin((key, current, joined) =>
        client.events.push(["join", key, current ? current.metas.length : 0, joined.metas.length]));
      presence.onLeave((key, current, left) =>
        client.events.push(["leave", key, current ? current.metas.length : 0, left.metas.length]));
      presence.onSync(() => client.syncs.splice(0).forEach(check => check()));
      const reply = await join(channel);
      if (reply.status !== "ok") throw new Error(`${name} join: ${JSON.stringify(reply)}`);
      clients[name] = client;
    }
    const view = client => Object.fromEntries(
      client.presence.list((key, { metas }) => [key, metas.length]));
    const until = (client, wanted) => new Promise(resolve => {
      const check = () => {
        if (JSON.stringify(view(client)) === JSON.stringify(wanted)) resolve(view(client));
        else client.syncs.push(check);
      };
      check();
    });
    const everyone = { alice: 1, bob: 2 };
    report("converged", {
      alice: await until(clients.alice, everyone),
      bob: await until(clients["bob-tab-2"], everyone)
    });
    clients["bob-tab-1"].socket.disconnect();
    report("one-tab-left", {
      alice: await until(clients.alice, { alice: 1, bob: 1 }),
      bob: await until(clients["bob-tab-2"], { alice: 1, bob: 1 })
    });
    clients["bob-tab-2"].socket.disconnect();
    report("bob-gone", { alice: await until(clients.alice, { alice: 1 }) });
    report("events", { alice: clients.alice.events });
    clients.alice.socket.disconnect();
  },

  /**
   * A socket heartbeating every HEARTBEAT_MS joins, then a silent one; once the silent one
   * is closed as idle, the heartbeating one (idle but for heartbeats for longer) must not
   * be: a push round trip on it comes after any close the service sent it.
   */
  async heartbeat() {
    const closes = [];
    const beating = await connectAs(undefined, { heartbeatIntervalMs: Number(process.env.HEARTBEAT_MS) });
    beating.socket.onClose(event => closes.push(event.code));
    const { channel, reply } = await joinTopic(beating.socket, beating.id);
    report("joined", { reply });
    const silent = await connectAs(undefined, { heartbeatIntervalMs: 600000 });
    const silentClosed = new Promise(resolve => silent.socket.onClose(event => resolve(event.code)));
    report("silent-joined", { reply: (await joinTopic(silent.socket, silent.id)).reply });
    report("silent-closed", { code: await silentClosed });
    report("pushed", await push(channel, "still-here", {}));
    report("beating", { closes });
    silent.socket.disconnect();
    beating.socket.disconnect();
  },

  /** Report every open, close, join reply, presence_state and broadcast until told "done". */
  async restart() {
    const counts = { presence_state: 0, broadcast: 0 };
    const { socket, channel } = await reportingJoin();
    channel.on("presence_state", state => report("presence_state", { count: ++counts.presence_state, keys: Object.keys(state) }));
    channel.on("news", payload => report("broadcast", { count: ++counts.broadcast, payload }));
    socket.connect();
    await command("done");
    socket.disconnect();
  },

  /**
   * Join TOPIC; on each "push" command push a message of PAD bytes and report its
   * reply (a push that no reply answers times out after 5 s, well after a reconnect and
   * a rejoin); report every open, close and join reply until told "done".
   */
  async refusedPush() {
    const { socket, channel } = await reportingJoin();
    socket.connect();
    const pad = "p".repeat(Number(process.env.PAD));
    let pushes = command("push");
    const done = command("done");
    while (true) {
      const next = await Promise.race([pushes, done]);
      if (next.command === "done") break;
      channel.push("big", { n: next.n, pad }, 5000)
        .receive("ok", () => report("pushed", { n: next.n, status: "ok" }))
        .receive("error", response => report("pushed", { n: next.n, status: "error", response }))
        .receive("timeout", () => report("pushed", { n: next.n, status: "timeout" }));
      pushes = command("push");
    }
    socket.disconnect();
  },

  /** Join TOPIC; report every message but replies; push on "push" commands until "done". */
  async listen() {
    const { socket, id } = await connectAs();
    const { token } = await mintToken(TOPIC, id);
    const channel = socket.channel(TOPIC, { token });
    const onMessage = channel.onMessage.bind(channel);
    channel.onMessage = (event, payload, ref) => {
      if (event !== "phx_reply") report("message", { event, payload });
      return onMessage(event, payload, ref);
    };
    report("joined", { reply: await join(channel) });
    let pushes = command("push");
    const done = command("done");
    while (true) {
      const next = await Promise.race([pushes, done]);
      if (next.command === "done") break;
      report("pushed", await push(channel, next.event, next.payload));
      pushes = command("push");
    }
    socket.disconnect();
  },

  /** Phoenix 1.8's authToken: the token rides in Sec-WebSocket-Protocol; joins carry none. */
  async authtoken() {
    const { token, id } = await mintToken("system");
    const socket = new Socket(socketUrl(), { ...transport, authToken: token });
    socket.connect();
    await opened(socket);
    report("open", { protocol: socket.conn.protocol });
    const channel = socket.channel("system", {});
    report("joined", { id, reply: await join(channel) });
    report("pushed", await push(channel, "custom_event", { via: "authToken" }));
    socket.disconnect();
  },

  /**
   * vsn 1.0.0. phoenix.js 1.8 ships only the V2 serializer, but `encode`/`decode` are
   * documented Socket options: these two are phoenix.js's own V1 serializer as it shipped
   * before 1.3 (JSON objects both ways).
   */
  async v1() {
    const frames = [];
    const socket = new Socket(socketUrl(), {
      ...transport,
      vsn: "1.0.0",
      params: { userToken: (await mintToken("system")).token },
      encode: (message, callback) => callback(JSON.stringify(message)),
      decode: (raw, callback) => {
        const message = JSON.parse(raw);
        frames.push(Array.isArray(message) ? "array" : "object");
        return callback(message);
      }
    });
    socket.connect();
    await opened(socket);
    const channel = socket.channel(TOPIC, { token: (await mintToken(TOPIC)).token });
    report("joined", { reply: await join(channel) });
    const json = next(channel, "json-event");
    report("ready");
    report("json", { payload: await json });
    report("pushed", { ...(await push(channel, "custom_event", { vsn: 1 })), frames: [...new Set(frames)] });
    socket.disconnect();
  }
};

run(async () => {
  const scenario = scenarios[process.argv[2]];
  if (!scenario) throw new Error(`unknown scenario ${process.argv[2]}`);
  await scenario();
});
