// Tangram's frontend flows with the official phoenix.js, under Node:
//   PHOENIX_VERSION=189|1816 SERVICE_URL=http://127.0.0.1:PORT node tangram_flows.mjs
// TangramLikeClient below is our own code following what Tangram's RealtimeApi
// (tangram_core api.ts) does on the wire: a `system` token minted without id gives the
// connection id and the socket's userToken; every other topic gets a token minted with that
// id; "topic:event" strings split at the last colon; request() pushes with a request_id and
// waits for `<event>_result` carrying the same request_id. The plugin side is
// tests/plugins/tangram_plugin.py.

import { WebSocket, loadPhoenix, mintToken, report, run, socketUrl } from "./lib.mjs";

const { Socket } = await loadPhoenix();

class TangramLikeClient {
  constructor() {
    this.channels = new Map(); // topic -> Promise<Channel>, so concurrent callers share one join
  }

  async connect() {
    const { id, token } = await mintToken("system");
    this.connectionId = id;
    this.socket = new Socket(socketUrl(), { transport: WebSocket, params: { userToken: token } });
    await new Promise((resolve, reject) => {
      this.socket.onOpen(resolve);
      this.socket.onError(reject);
      this.socket.connect();
    });
    return id;
  }

  static split(topicEvent) {
    const at = topicEvent.lastIndexOf(":");
    if (at <= 0) throw new Error(`not topic:event: ${topicEvent}`);
    return [topicEvent.slice(0, at), topicEvent.slice(at + 1)];
  }

  channel(topic) {
    if (!this.channels.has(topic)) {
      this.channels.set(topic, (async () => {
        const { id, token } = await mintToken(topic, this.connectionId);
        if (id !== this.connectionId) throw new Error(`token for ${topic} names ${id}`);
        const channel = this.socket.channel(topic, { token });
        await new Promise((resolve, reject) => {
          channel.join()
            .receive("ok", resolve)
            .receive("error", reason => reject(new Error(`join ${topic}: ${JSON.stringify(reason)}`)))
            .receive("timeout", () => reject(new Error(`join ${topic}: timeout`)));
        });
        return channel;
      })());
    }
    return this.channels.get(topic);
  }

  async subscribe(topicEvent, callback) {
    const [topic, event] = TangramLikeClient.split(topicEvent);
    (await this.channel(topic)).on(event, callback);
  }

  async publish(topicEvent, payload) {
    const [topic, event] = TangramLikeClient.split(topicEvent);
    (await this.channel(topic)).push(event, payload);
  }

  async request(topicEvent, payload) {
    const [topic, event] = TangramLikeClient.split(topicEvent);
    const channel = await this.channel(topic);
    const requestId = `${this.connectionId}-${Math.random().toString(36).slice(2)}`;
    return new Promise(resolve => {
      const ref = channel.on(`${event}_result`, message => {
        if (!message || message.request_id !== requestId) return;
        channel.off(`${event}_result`, ref);
        resolve({ requestId, data: message.data });
      });
      channel.push(event, { ...payload, request_id: requestId });
    });
  }
}

function signal() {
  let resolve;
  const promise = new Promise(r => { resolve = r; });
  return { promise, resolve };
}

run(async () => {
  const client = new TangramLikeClient();
  const id = await client.connect();
  report("connected", { id });

  const nodes = {};
  const streamed = [];
  const firstNode = signal();
  const firstFrame = signal();
  const datalink = signal();
  await Promise.all([
    client.subscribe("system:update-node", payload => {
      nodes[payload.el] = payload.value;
      if (nodes.uptime !== undefined && nodes.info_utc !== undefined) firstNode.resolve();
    }),
    // a second subscriber of the same topic at the same time, as two plugins do: one join
    client.subscribe("system:update-node", () => {}),
    client.subscribe(`streaming-${id}:new-jet1090-data`, payload => {
      streamed.push(payload);
      firstFrame.resolve();
    }),
    client.subscribe("datalink:feed:message", datalink.resolve)
  ]);
  report("subscribed", { topics: [...client.channels.keys()] });

  await client.publish("system:join-streaming", { connectionId: id });
  await client.publish("system:bound-box", {
    connectionId: id, northEastLat: 52.1, northEastLng: 8.2, southWestLat: 45.3, southWestLng: -1.7,
    selectedEntities: [{ id: "39c4a1", typeName: "jet1090_aircraft" }]
  });

  const search = await client.request("jet1090:search", { query: "AFR" });
  report("search", search);

  await firstFrame.promise;
  const frame = streamed[0];
  report("streamed", {
    count: frame.count,
    aircraft: frame.aircraft.length,
    bytes: JSON.stringify(frame).length,
    first: frame.aircraft[0]
  });
  await firstNode.promise;
  report("update-node", { nodes });
  report("datalink", { payload: await datalink.promise });
  client.socket.disconnect();
});
