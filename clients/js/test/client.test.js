// The JS client against a real gateway process (started here on free ports), in Node with its
// WHATWG WebSocket (--experimental-websocket): the same WebSocket API as a browser's, so these
// tests drive the code path pages use.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  CloseCode, ConnectionClosed, QueueFull, RequestError, Switchboard, ToolError, memoryStorage,
} from "../switchboard.js";
import { API_TOKEN, Gateway, Proxy, jwt, until } from "./_gateway.js";

const FAST = { initial: 20, max: 200, factor: 2, jitter: 1, rateLimited: 50 };

function client(url, options = {}) {
  return new Switchboard(url, { storage: memoryStorage(), backoff: FAST, ...options });
}

describe("one gateway, memory broker", () => {
  let gw;
  const open = [];
  const make = (url, options) => { const c = client(url, options); open.push(c); return c; };

  before(async () => { gw = await new Gateway({ HISTORY_LIMIT: "50", SESSION_TTL: "60" }).start(); });
  after(async () => {
    for (const c of open) await c.close();
    await gw.stop();
  });

  test("connects, requests and replies, chat, ping, subscribe, broadcast", async () => {
    const sb = make(gw.ws, { clientId: "js-basic", clientType: "node" });
    const states = [];
    for (const name of ["connecting", "connected"]) sb.on(name, () => states.push(name));
    const info = await sb.connect();
    assert.equal(info.client_id, "js-basic");
    assert.equal(info.resumed, false);
    assert.deepEqual(states, ["connecting", "connected"]);
    assert.equal(sb.state, "connected");

    const pong = await sb.ping();
    assert.equal(pong.type, "pong");
    const answer = await sb.chat("hello");
    assert.equal(answer.type, "chat_response");
    assert.equal(answer.data.content, "Echo: hello");
    const joined = await sb.subscribe("news");
    assert.equal(joined.data.channel, "news");
    assert.equal(joined.data.channel_count, 1);
    const got = sb.once("deploy", { timeout: 5000 });
    const { status } = await gw.call("POST", "/broadcast",
                                     { message_type: "deploy", data: { v: 2 }, channel: "news" });
    assert.equal(status, 200);
    const frame = await got;
    assert.equal(frame.channel, "news");
    assert.equal(frame.data.v, 2);
    assert.equal(sb.lastSeq, frame.seq);

    await assert.rejects(sb.request("subscribe", {}), (err) => err instanceof RequestError
      && err.code === "invalid_field");
    await assert.rejects(sb.request("no_such_type", {}), (err) => err.code === "unknown_type");
    const timeout = sb.request("tool_result", { call_id: "x" }, { expect: "never", timeout: 1 });
    await assert.rejects(timeout, (err) => err.name === "TimeoutError"
      || err instanceof RequestError);
    await assert.rejects(sb.ping({ signal: AbortSignal.abort(new Error("stop it")) }),
                         /stop it/);
    const sum = await sb.callTool("calculate", { expression: "2*21" });
    assert.equal(sum.result, 42);
    await assert.rejects(sb.callTool("nope"), ToolError);
  });

  test("answers POST /call_tool through a registered tool, and unknown tools with an error", async () => {
    const sb = make(gw.ws, { clientId: "js-tools" });
    sb.tools.register("get_weather", async ({ city }, { callId }) => {
      assert.ok(callId);
      return { city, celsius: 21 };
    });
    sb.tools.register("boom", () => { throw new TypeError("no weather today"); });
    await sb.connect();
    let r = await gw.call("POST", "/call_tool",
                          { client_id: "js-tools", tool_name: "get_weather", params: { city: "Oslo" } });
    assert.equal(r.status, 200);
    assert.deepEqual(r.body.result, { city: "Oslo", celsius: 21 });
    r = await gw.call("POST", "/call_tool", { client_id: "js-tools", tool_name: "boom" });
    assert.equal(r.body.success, false);
    assert.equal(r.body.error, "TypeError: no weather today");
    r = await gw.call("POST", "/call_tool", { client_id: "js-tools", tool_name: "other", timeout: 5 });
    assert.equal(r.body.success, false);
    assert.match(r.body.error, /unknown tool other/);
  });

  test("permission prompts go through onPermission", async () => {
    const asked = [];
    const sb = make(gw.ws, { onPermission: (prompt) => { asked.push(prompt.data.tool_name); return true; } });
    await sb.connect();
    const result = await sb.callTool("notify_all", { message: "hi" });
    assert.deepEqual(asked, ["notify_all"]);
    assert.ok(result);
    sb.onPermission(() => false);
    await assert.rejects(sb.callTool("notify_all", { message: "hi" }), /permission denied/);
  });

  test("stream() yields the chunks of POST /stream/{client_id}", async () => {
    const sb = make(gw.ws, { clientId: "js-stream" });
    await sb.connect();
    const chunks = [];
    const reading = (async () => { for await (const c of sb.stream("answer-1")) chunks.push(c); })();
    const body = new ReadableStream({
      start(controller) {
        for (const piece of ["Hel", "lo, ", "world"]) controller.enqueue(new TextEncoder().encode(piece));
        controller.close();
      },
    });
    const resp = await fetch(`${gw.api}/stream/js-stream?reply_to=answer-1`, {
      method: "POST", body, duplex: "half",
      headers: { Authorization: `Bearer ${API_TOKEN}`, "Content-Type": "text/plain" } });
    assert.equal(resp.status, 200);
    await reading;
    assert.equal(chunks.join(""), "Hello, world");
    // frames() is an async iterator too
    const it = sb.frames("message");
    await gw.call("POST", "/send_message", { client_id: "js-stream", content: "via frames()" });
    const { value } = await it.next();
    assert.equal(value.data.content, "via frames()");
    await it.return();
  });

  test("exactly once and in order across TCP cuts; resume survives a new client object", async () => {
    const proxy = await new Proxy(() => gw.wsPort).start();
    const storage = memoryStorage();
    const sb = make(proxy.ws, { clientId: "js-cuts", storage });
    const seen = [];
    sb.on("message", (f) => seen.push(f.data.n));
    await sb.connect();
    const total = 120;
    for (let n = 0; n < total; n += 1) {
      const r = await gw.call("POST", "/send_message", { client_id: "js-cuts", content: "x", data: { n } });
      assert.ok(r.status === 200 || r.status === 202, JSON.stringify(r));
      if (n % 30 === 15) proxy.cut();
    }
    await until(() => seen.length >= total, { what: "every message" });
    assert.deepEqual(seen, [...Array(total).keys()]);
    assert.ok(sb.stats.reconnects >= 3, JSON.stringify(sb.stats));
    assert.ok(sb.stats.resumes >= 3);

    // A page reload: a new client with the same storage resumes the same session.
    await sb.close();
    await gw.call("POST", "/send_message", { client_id: "js-cuts", content: "x", data: { n: total } });
    const again = make(proxy.ws, { clientId: "js-cuts", storage });
    const later = [];
    again.on("message", (f) => later.push(f.data.n));
    const info = await again.connect();
    assert.equal(info.resumed, true);
    assert.equal(info.recovered, true);
    await until(() => later.length === 1);
    assert.deepEqual(later, [total]);
    await proxy.close();
  });

  test("4001 (session ended) stops for good; 4003 starts a fresh session", async () => {
    const sb = make(gw.ws, { clientId: "js-ended" });
    await sb.connect();
    const failed = sb.once("failed");
    await gw.call("DELETE", "/clients/js-ended");
    const event = await failed;
    assert.equal(event.code, CloseCode.SESSION_ENDED);
    assert.equal(sb.state, "failed");
    assert.equal(sb.sessionToken, null); // forgotten: a new client would not try to resume
    assert.throws(() => sb.send("ping"), ConnectionClosed);

    const storage = memoryStorage();
    storage.setItem("switchboard:" + gw.ws + ":js-stale",
                    JSON.stringify({ clientId: "js-stale", sessionToken: "forged", lastSeq: 9 }));
    const stale = make(gw.ws, { clientId: "js-stale", storage });
    const lost = [];
    stale.on("recovery_failed", (e) => lost.push(e.reason));
    const info = await stale.connect();
    assert.equal(info.resumed, false);
    assert.equal(info.client_id, "js-stale");
    assert.deepEqual(lost, ["session_lost"]);
    assert.equal(stale.lastSeq, 0);
  });

  test("recovered: false when history no longer reaches back", async () => {
    const proxy = await new Proxy(() => gw.wsPort).start();
    const sb = make(proxy.ws, { clientId: "js-gap" });
    await sb.connect();
    const events = [];
    sb.on("recovery_failed", (e) => events.push(e));
    const resumed = sb.once("resumed", { timeout: 10000 });
    proxy.freeze(); // nothing reaches the client meanwhile
    for (let n = 0; n < 60; n += 1) {
      await gw.call("POST", "/send_message", { client_id: "js-gap", content: String(n) });
    }
    proxy.thaw();
    proxy.cut();
    const info = await resumed;
    assert.equal(info.recovered, false);
    assert.deepEqual(events.map((e) => e.reason), ["history_gap"]);
    await proxy.close();
  });

  test("a bounded queue while disconnected, flushed in order on reconnect", async () => {
    const proxy = await new Proxy(() => gw.wsPort).start();
    const sb = make(proxy.ws, { clientId: "js-queue", maxQueue: 3, backoff: { ...FAST, initial: 300, max: 300, jitter: 0 } });
    await sb.connect();
    const down = sb.once("disconnected");
    proxy.cut();
    await down;
    const gone = sb.chat("never sent", { timeout: 20 });
    await assert.rejects(gone, (err) => err.name === "TimeoutError");
    assert.equal(sb.queued, 0); // a request that timed out is not sent later
    const replies = [sb.chat("one"), sb.chat("two"), sb.chat("three")];
    assert.equal(sb.queued, 3);
    assert.throws(() => sb.send("ping"), QueueFull);
    const answers = await Promise.all(replies);
    assert.deepEqual(answers.map((a) => a.data.content), ["Echo: one", "Echo: two", "Echo: three"]);
    assert.equal(sb.queued, 0);
    await proxy.close();
  });

  test("a dead connection is found by an application ping and replaced", async () => {
    const proxy = await new Proxy(() => gw.wsPort).start();
    const sb = make(proxy.ws, { clientId: "js-dead", idleTimeout: 200, pingTimeout: 300 });
    await sb.connect();
    const lost = sb.once("disconnected", { timeout: 5000 });
    proxy.freeze(); // the socket stays open, nothing arrives: a NAT that forgot us
    const event = await lost;
    assert.equal(event.code, CloseCode.ABNORMAL);
    assert.match(event.reason, /no answer to ping/);
    proxy.thaw();
    const back = await sb.once("connected", { timeout: 5000 });
    assert.equal(back.resumed, true);
    await proxy.close();
  });
});

describe("users, channels and presence (CHANNEL_RULES)", () => {
  let gw;
  const open = [];
  const make = (options) => { const c = client(gw.ws, options); open.push(c); return c; };
  const rules = {
    "room:*": { subscribe: "any", publish: "any", presence: true, join_leave: true, history: 2 },
    "*": { subscribe: "any" },
  };

  before(async () => { gw = await new Gateway({ CHANNEL_RULES: JSON.stringify(rules) }).start(); });
  after(async () => {
    for (const c of open) await c.close();
    await gw.stop();
  });

  test("two tabs of one user, publish, presence, join events, history, send to the user", async () => {
    const tabs = [make({ userId: "ann" }), make({ userId: "ann" })];
    for (const tab of tabs) {
      await tab.connect();
      assert.equal(tab.userId, "ann");
      await tab.subscribe("room:1");
    }
    assert.notEqual(tabs[0].clientId, tabs[1].clientId);
    const bo = make({ userId: "bo" });
    await bo.connect();
    const joined = tabs[0].once("join", { timeout: 5000 });
    await bo.subscribe("room:1");
    const join = await joined;
    assert.deepEqual(join.data, { channel: "room:1", client_id: bo.clientId, user_id: "bo" });

    const arriving = tabs[1].once("publication", { timeout: 5000 });
    const published = await bo.publish("room:1", { text: "hello" });
    assert.equal(published.type, "published");
    assert.equal(published.data.recipients, 3);
    const publication = await arriving;
    assert.deepEqual(publication.data, { text: "hello" });
    assert.deepEqual(publication.from, { client_id: bo.clientId, user_id: "bo" });
    assert.equal(publication.message_id, published.data.message_id);

    const present = await tabs[0].presence("room:1");
    assert.equal(present.data.count, 3);
    assert.deepEqual(present.data.users, ["ann", "bo"]);
    const recent = await bo.channelHistory("room:1");
    assert.deepEqual(recent.data.frames.map((f) => f.data.text), ["hello"]);

    await assert.rejects(bo.publish("news", { text: "no" }), (err) => err instanceof RequestError
      && err.code === "forbidden_channel" && /CHANNEL_RULES|nobody/.test(err.frame.data.reason));

    const got = tabs.map((tab) => tab.once("message", { timeout: 5000 }));
    const { status, body } = await gw.call("POST", "/send_message", { user_id: "ann", content: "hi" });
    assert.equal(status, 200);
    assert.equal(body.delivered, 2);
    for (const frame of await Promise.all(got)) assert.equal(frame.message_id, body.message_id);

    const left = tabs[0].once("leave", { timeout: 5000 });
    await bo.unsubscribe("room:1");
    assert.equal((await left).data.client_id, bo.clientId);
  });
});

describe("a restarted gateway (memory broker: the session is gone)", () => {
  test("re-subscribes after the fresh session and keeps receiving", async () => {
    const gw = await new Gateway().start();
    const sb = client(gw.ws, { clientId: "js-resub" });
    try {
      await sb.connect();
      await sb.subscribe("alerts");
      const reset = sb.once("recovery_failed", { timeout: 20000 });
      await gw.restart(); // 1001, then resume → 4003 → a new session
      assert.equal((await reset).reason, "session_lost");
      await until(async () => (await gw.call("GET", "/channels")).body.channels
        .some((c) => c.channel === "alerts"), { what: "re-subscription" });
      const got = sb.once("alert", { timeout: 5000 });
      await gw.call("POST", "/broadcast", { message_type: "alert", channel: "alerts", data: {} });
      assert.equal((await got).channel, "alerts");
    } finally {
      await sb.close();
      await gw.stop();
    }
  });
});

describe("JWT auth (WS_AUTH=jwt)", () => {
  const secret = "a-jwt-secret-of-at-least-thirty-two-bytes!";

  test("4010 and the token's exp: getToken() is asked again and the session resumes", async () => {
    const gw = await new Gateway({ WS_AUTH: "jwt", WS_JWT_SECRET: secret }).start();
    let issued = 0;
    // refreshBefore 0: the server closes with 4010 at exp; then a refresh well before exp.
    const sb = client(gw.ws, {
      refreshBefore: 0,
      getToken: async () => { issued += 1; return jwt(secret, "js-jwt", 2); },
    });
    const seen = [];
    sb.on("message", (f) => seen.push(f.data.content));
    // Every connect and drop is recorded from the start: a reconnect that happens while the
    // test awaits something else is still seen (no event can slip between two once() calls).
    const connects = [];
    const drops = [];
    sb.on("connected", (e) => connects.push(e));
    sb.on("disconnected", (e) => drops.push(e));
    try {
      await sb.connect();
      await until(() => drops.length >= 1, { what: "the close at the token's exp" });
      assert.ok(drops[0].code === CloseCode.TOKEN_EXPIRED || drops[0].code === CloseCode.GOING_AWAY,
                JSON.stringify(drops[0]));
      // From the next connection on, refresh 1.5 s before exp (at most half the token's life).
      sb.refreshBefore = 1500;
      await until(() => connects.length >= 2, { what: "the reconnect with a new token" });
      assert.equal(connects[1].resumed, true);
      assert.ok(issued >= 2);
      await gw.call("POST", "/send_message", { user_id: "js-jwt", content: "still here" });
      await until(() => seen.includes("still here"));

      // The client reconnects before the server has to close it: 1001 from the client, not
      // 4010 from the server, and the session resumes with a newly issued token.
      await until(() => connects.length >= 3, { what: "the refresh before exp" });
      assert.equal(drops[1].code, CloseCode.GOING_AWAY, JSON.stringify(drops[1]));
      assert.equal(connects[2].resumed, true);
      assert.ok(issued >= 3);
    } finally {
      await sb.close();
      await gw.stop();
    }
  });

  test("without getToken, 4010 stops the client", async () => {
    const gw = await new Gateway({ WS_AUTH: "jwt", WS_JWT_SECRET: secret }).start();
    const sb = client(gw.ws, { token: await jwt(secret, "js-jwt-static", 1) });
    try {
      await sb.connect();
      const failed = await sb.once("failed", { timeout: 10000 });
      assert.equal(failed.code, CloseCode.TOKEN_EXPIRED);
    } finally {
      await sb.close();
      await gw.stop();
    }
  });
});
