// switchboard-client: the browser / Node client of the Switchboard gateway.
//
// Plain ES module, no dependencies, no build step. Types: switchboard.d.ts beside this file.
// Full API: clients/js/README.md. In short:
//
//   import { Switchboard } from "http://127.0.0.1:9004/switchboard.js";
//   const sb = new Switchboard("ws://127.0.0.1:9004/", { clientType: "browser" });
//   sb.on("message", (frame) => console.log(frame.seq, frame.data.content));
//   sb.tools.register("get_location", async () => ({ lat: 48.85, lon: 2.35 }));
//   await sb.connect();
//
// What it does for you: the gateway's close-code policy (stop, resume, new session, new
// token, back off), exponential backoff with full jitter, resume with session_token +
// last_seq kept in sessionStorage (one session per tab, across reloads), exactly-once
// delivery to handlers per seq, re-subscription after a fresh session, a bounded outgoing
// queue while disconnected, a dead-connection timer (an application `ping` when nothing
// arrived for a while: browsers never show the server's WebSocket pings to code), and token
// refresh through getToken() on close 4010 and before the token's `exp`.

/** Close codes the gateway sends (server/errors.py CloseCode) plus the standard ones a client
 * sees. */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED_DATA: 1003,
  ABNORMAL: 1006,
  INVALID_DATA: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  REPLACED: 4000,
  SESSION_ENDED: 4001,
  INVALID_SESSION: 4003,
  SLOW_CONSUMER: 4008,
  RATE_LIMITED: 4009,
  TOKEN_EXPIRED: 4010,
  IDLE_TIMEOUT: 4011,
  TOO_MANY_SESSIONS: 4012,
});

/** What the client does after a close code (see {@link closeAction}). */
export const CloseAction = Object.freeze({
  RESUME: "resume",
  BACKOFF: "backoff",
  NEW_TOKEN: "new_token",
  FRESH_SESSION: "fresh_session",
  STOP: "stop",
});

const STOP_CODES = new Set([1000, 1002, 1003, 1007, 1008, 4000, 4001, 4012]);

/**
 * The reconnect policy of the wire contract (the same table as the Python client's
 * `close_action`; both are checked against clients/scenarios.json).
 * @param {number | null | undefined} code
 */
export function closeAction(code) {
  if (code != null && STOP_CODES.has(code)) return CloseAction.STOP;
  if (code === CloseCode.INVALID_SESSION) return CloseAction.FRESH_SESSION;
  if (code === CloseCode.RATE_LIMITED) return CloseAction.BACKOFF;
  if (code === CloseCode.TOKEN_EXPIRED) return CloseAction.NEW_TOKEN;
  return CloseAction.RESUME;
}

/** Reconnect delays in milliseconds: capped exponential, with full jitter by default. */
export const DEFAULT_BACKOFF = Object.freeze({
  initial: 500, max: 20000, factor: 2, jitter: 1, rateLimited: 5000,
});

/**
 * The delay before reconnect attempt `attempt` (0-based): `min(max, initial * factor**attempt)`
 * reduced by a random fraction of up to `jitter` (1 = full jitter: anywhere in [0, cap]).
 * @param {number} attempt
 * @param {Partial<typeof DEFAULT_BACKOFF>} [options]
 * @param {() => number} [random]
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
  const o = { ...DEFAULT_BACKOFF, ...options };
  const cap = Math.min(o.max, o.initial * o.factor ** Math.min(Math.max(attempt, 0), 64));
  return Math.max(0, cap * (1 - o.jitter * random()));
}

/** For each client frame type, the reply types that complete a `request()`. */
export const DEFAULT_REPLY_TYPES = Object.freeze({
  chat_message: ["chat_response", "stream_end"],
  text_message: ["chat_response", "stream_end"],
  tool_call: ["tool_response"],
  ping: ["pong", "heartbeat_response"],
  heartbeat: ["pong", "heartbeat_response"],
  subscribe: ["subscribed"],
  unsubscribe: ["unsubscribed"],
  get_status: ["status_response"],
  list_tools: ["tools_list"],
  list_channels: ["channels_list"],
  tool_result: ["tool_result_ack"],
  publish: ["published"],
  presence: ["presence"],
  channel_history: ["channel_history"],
});

/** The client's own events; a server frame of one of these types reaches only `"*"`. */
export const STATE_EVENTS = Object.freeze([
  "connecting", "connected", "resumed", "disconnected", "recovery_failed", "failed", "closed",
]);
const STATE_EVENT_SET = new Set(STATE_EVENTS);

/**
 * The query of a connection attempt: who we are, the session to resume, the auth token.
 * @param {{clientId?: string|null, clientType?: string|null, sessionToken?: string|null,
 *          lastSeq?: number, token?: string|null, userId?: string|null}} state
 * @returns {Record<string, string>}
 */
export function connectQuery(state) {
  /** @type {Record<string, string>} */
  const query = {};
  if (state.clientId) query.client_id = state.clientId;
  if (state.clientType) query.client_type = state.clientType;
  if (state.userId) query.user_id = state.userId;
  if (state.sessionToken) {
    query.session_token = state.sessionToken;
    query.last_seq = String(state.lastSeq || 0);
  }
  if (state.token) query.token = state.token;
  return query;
}

// --- errors ---------------------------------------------------------------------------------

/** Root of the client's errors. */
export class SwitchboardError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = "SwitchboardError";
  }
}

/** The server answered a request with an `error` frame. */
export class RequestError extends SwitchboardError {
  constructor(code, message, frame) {
    super(`${code}: ${message}`);
    this.name = "RequestError";
    this.code = code;
    this.frame = frame;
  }
}

/** No answer in time (the request's `timeout` or its `signal`). */
export class RequestTimeout extends SwitchboardError {
  constructor(message) {
    super(message);
    this.name = "TimeoutError";
  }
}

/** A tool called with `callTool` answered `success: false`. */
export class ToolError extends SwitchboardError {
  constructor(message, toolName, response) {
    super(message);
    this.name = "ToolError";
    this.toolName = toolName;
    this.response = response;
  }
}

/** The client is closed (or failed) for good, or its outgoing queue is full. */
export class ConnectionClosed extends SwitchboardError {
  constructor(message, code = null, reason = "") {
    super(message);
    this.name = "ConnectionClosed";
    this.code = code;
    this.reason = reason;
  }
}

/** More than `maxQueue` frames waited for a connection. */
export class QueueFull extends SwitchboardError {
  constructor(limit) {
    super(`outgoing queue full (${limit} frames waiting for a connection)`);
    this.name = "QueueFull";
  }
}

// --- helpers --------------------------------------------------------------------------------

/** A storage that lives as long as the page (or process): the fallback without sessionStorage. */
export function memoryStorage() {
  const map = new Map();
  return {
    getItem: (key) => (map.has(key) ? map.get(key) : null),
    setItem: (key, value) => { map.set(key, String(value)); },
    removeItem: (key) => { map.delete(key); },
  };
}

function defaultStorage() {
  try {
    const storage = globalThis.sessionStorage;
    if (storage) {
      const probe = "switchboard:probe";
      storage.setItem(probe, "1");
      storage.removeItem(probe);
      return storage;
    }
  } catch { /* private mode, sandboxed iframe */ }
  return memoryStorage();
}

let counter = 0;
function newMessageId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID().replaceAll("-", "");
  counter += 1;
  return `${Date.now().toString(16)}${Math.random().toString(16).slice(2)}${counter}`;
}

/** The `exp` claim (seconds) of a JWT, or null (not a JWT, no exp). */
export function tokenExpiry(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const json = typeof atob === "function"
      ? atob(padded) : globalThis.Buffer.from(padded, "base64").toString("binary");
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

function defaultUrl() {
  try {
    const here = new URL(import.meta.url);
    if (here.protocol === "http:" || here.protocol === "https:") {
      return `${here.protocol === "https:" ? "wss:" : "ws:"}//${here.host}/`;
    }
  } catch { /* not loaded over HTTP */ }
  return "ws://127.0.0.1:9004/";
}

function wsUrl(url) {
  const base = globalThis.location ? globalThis.location.href : undefined;
  const parsed = new URL(url, base);
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  if (parsed.protocol === "https:") parsed.protocol = "wss:";
  return parsed;
}

function abortError(signal) {
  const reason = signal && signal.reason;
  if (reason instanceof Error) return reason;
  return new SwitchboardError(String(reason || "aborted"));
}

// --- the client -----------------------------------------------------------------------------

/**
 * A resilient client of the Switchboard gateway. See switchboard.d.ts for every option.
 */
export class Switchboard {
  /**
   * @param {string} [url] `ws://host:9004/`; defaults to the host this module was loaded from.
   * @param {object} [options]
   */
  constructor(url, options = {}) {
    if (url && typeof url === "object") { options = url; url = undefined; }
    this.url = wsUrl(url || defaultUrl()).toString();
    this.options = options;
    const WS = options.WebSocket || globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new SwitchboardError("no WebSocket implementation: pass { WebSocket } (in Node 20, "
        + "the `ws` package, or run node with --experimental-websocket)");
    }
    this._WebSocket = WS;
    this.clientType = options.clientType || null;
    this._requestedClientId = options.clientId || null;
    /** The user this client acts for: `options.userId` (WS_AUTH=none/token), then what the
     * server says (a JWT's sub); null: anonymous. */
    this.userId = options.userId || null;
    this.backoff = { ...DEFAULT_BACKOFF, ...(options.backoff || {}) };
    this.maxReconnectAttempts = options.maxReconnectAttempts ?? Infinity;
    this.connectTimeout = options.connectTimeout ?? 10000;
    this.requestTimeout = options.requestTimeout ?? 10000;
    this.idleTimeout = options.idleTimeout ?? 25000;
    this.pingTimeout = options.pingTimeout ?? 10000;
    this.maxQueue = options.maxQueue ?? 256;
    this.refreshBefore = options.refreshBefore ?? 30000;
    this.logger = options.logger || globalThis.console;
    this.storage = options.storage === null || options.storage === false
      ? memoryStorage() : options.storage || defaultStorage();
    this.storageKey = options.storageKey
      || `switchboard:${this.url.split("?")[0]}:${this._requestedClientId || ""}`;

    /** @type {"idle"|"connecting"|"connected"|"disconnected"|"closed"|"failed"} */
    this.state = "idle";
    this.clientId = this._requestedClientId;
    this.sessionToken = null;
    this.lastSeq = 0;
    /** `data` of the latest connection_established. */
    this.connectionInfo = null;
    this.closeCode = null;
    this.closeReason = "";
    this.stats = { framesReceived: 0, framesSent: 0, duplicatesDropped: 0, connects: 0,
                   reconnects: 0, resumes: 0, recoveryFailures: 0 };
    /** Channels to re-join after a fresh session. */
    this.channels = new Set();
    this._restore();

    this._handlers = new Map();
    this._pending = new Map();
    this._queue = [];
    this._ws = null;
    this._attempt = 0;
    this._timer = null;
    this._idleTimer = null;
    this._pingTimer = null;
    this._refreshTimer = null;
    this._connectTimer = null;
    this._token = null;
    this._nextAction = CloseAction.RESUME;
    this._firstConnect = null;
    this._closedPromise = null;
    this._permission = options.onPermission || null;
    this.tools = new ToolRegistry(this);
  }

  // --- persistence ------------------------------------------------------------------------

  _restore() {
    let saved = null;
    try { saved = JSON.parse(this.storage.getItem(this.storageKey) || "null"); } catch { /* */ }
    if (saved && typeof saved === "object" && typeof saved.sessionToken === "string") {
      this.clientId = saved.clientId || this.clientId;
      this.sessionToken = saved.sessionToken;
      this.lastSeq = Number.isInteger(saved.lastSeq) ? saved.lastSeq : 0;
      for (const ch of Array.isArray(saved.channels) ? saved.channels : []) this.channels.add(ch);
    }
  }

  _persist() {
    try {
      if (!this.sessionToken) { this.storage.removeItem(this.storageKey); return; }
      this.storage.setItem(this.storageKey, JSON.stringify({
        clientId: this.clientId, sessionToken: this.sessionToken, lastSeq: this.lastSeq,
        channels: [...this.channels] }));
    } catch { /* storage full or gone: resume then works within this page only */ }
  }

  /** Forget the saved session (the next connect starts a new one). */
  forgetSession() {
    this.sessionToken = null;
    this.lastSeq = 0;
    this.clientId = this._requestedClientId;
    this._persist();
  }

  // --- events -----------------------------------------------------------------------------

  /**
   * Call `handler` for frames of `type` ("*": every server frame) or for a state event.
   * Returns a function that removes it.
   */
  on(type, handler) {
    let set = this._handlers.get(type);
    if (!set) { set = new Set(); this._handlers.set(type, set); }
    set.add(handler);
    return () => this.off(type, handler);
  }

  off(type, handler) {
    const set = this._handlers.get(type);
    if (set) set.delete(handler);
  }

  /** The next frame of `type` (or state event), as a promise. */
  once(type, { signal, timeout } = {}) {
    return new Promise((resolve, reject) => {
      const cleanup = this._guard(signal, timeout, `no ${type} within ${timeout} ms`, (err) => {
        off(); reject(err);
      });
      const off = this.on(type, (payload) => { off(); cleanup(); resolve(payload); });
    });
  }

  /**
   * Frames of `type` ("*" for all) as an async iterator; frames are buffered between reads.
   * Ends when the client closes or `signal` aborts.
   */
  frames(type = "*", { signal } = {}) {
    return this._iterate(type, signal, (frame, push) => { push(frame); });
  }

  _emit(type, payload) {
    for (const handler of [...(this._handlers.get(type) || [])]) {
      try {
        handler(payload);
      } catch (err) {
        this.logger.error(`switchboard: handler for ${type} threw`, err);
      }
    }
  }

  _dispatch(frame) {
    if (!STATE_EVENT_SET.has(frame.type)) this._emit(frame.type, frame);
    this._emit("*", frame);
  }

  _setState(state) {
    this.state = state;
  }

  // --- lifecycle --------------------------------------------------------------------------

  /**
   * Connect (resuming the saved session, if any) and keep connected. Resolves with the
   * `connection_established` data of the first connection; rejects when the client fails for
   * good before that (a "do not reconnect" close, maxReconnectAttempts) or `signal` aborts.
   */
  connect({ signal } = {}) {
    if (this._firstConnect) return this._firstConnect;
    if (this.state === "closed" || this.state === "failed") {
      return Promise.reject(new ConnectionClosed("client is closed; create a new one",
        this.closeCode, this.closeReason));
    }
    this._firstConnect = new Promise((resolve, reject) => {
      this._resolveFirst = resolve;
      this._rejectFirst = reject;
    });
    this._firstConnect.catch(() => {});
    if (signal) {
      if (signal.aborted) { this._finish(null, "aborted", true); return this._firstConnect; }
      signal.addEventListener("abort", () => {
        if (this.state !== "connected") this.close(1000, String(signal.reason || "aborted"));
      }, { once: true });
    }
    this._open();
    return this._firstConnect;
  }

  /** Close for good (no reconnect). The session stays on the server for SESSION_TTL; call
   * `forgetSession()` too if this tab should not resume it. */
  close(code = 1000, reason = "closed by the client") {
    if (this.state === "closed" || this.state === "failed") return Promise.resolve();
    const ws = this._ws;
    this._finish(code, reason, true);
    if (ws) { try { ws.close(code, reason.slice(0, 120)); } catch { /* already closed */ } }
    return Promise.resolve();
  }

  /** Resolves with {code, reason} once the client is closed or failed for good. */
  closed() {
    if (!this._closedPromise) {
      this._closedPromise = new Promise((resolve) => {
        if (this.state === "closed" || this.state === "failed") {
          resolve({ code: this.closeCode, reason: this.closeReason });
          return;
        }
        const off = this.on("closed", (e) => { off(); resolve(e); });
      });
    }
    return this._closedPromise;
  }

  get connected() {
    return this.state === "connected";
  }

  /** Abort the current socket without a close frame, as a network failure would (tests). */
  dropConnection() {
    if (this._ws) this._lost(this._ws, CloseCode.ABNORMAL, "connection dropped");
  }

  async _resolveToken() {
    const o = this.options;
    if (typeof o.getToken === "function") return await o.getToken();
    return o.token || null;
  }

  async _open() {
    if (this.state === "closed" || this.state === "failed") return;
    this._setState("connecting");
    const attempt = this._attempt;
    const safeUrl = this.url;
    this._emit("connecting", { attempt, url: safeUrl });
    let token = null;
    try {
      token = await this._resolveToken();
    } catch (err) {
      this._retry(null, `could not get a token: ${err && err.message ? err.message : err}`);
      return;
    }
    if (this.state !== "connecting") return;
    this._token = token;
    const url = new URL(this.url);
    for (const [key, value] of Object.entries(connectQuery({
      clientId: this.clientId, clientType: this.clientType, sessionToken: this.sessionToken,
      userId: this.options.userId || null,
      lastSeq: this.lastSeq, token }))) {
      url.searchParams.set(key, value);
    }
    let ws;
    try {
      ws = new this._WebSocket(url.toString());
    } catch (err) {
      this._fail(null, `cannot open ${safeUrl}: ${err && err.message ? err.message : err}`);
      return;
    }
    this._ws = ws;
    ws._sbGreeted = false;
    this._connectTimer = setTimeout(() => {
      this._lost(ws, CloseCode.ABNORMAL, `no connection_established within ${this.connectTimeout} ms`);
    }, this.connectTimeout);
    ws.onmessage = (event) => this._onMessage(ws, event);
    ws.onclose = (event) => this._lost(ws, event.code, event.reason || "");
    ws.onerror = () => { /* a close event follows */ };
  }

  _onMessage(ws, event) {
    if (ws !== this._ws) return;
    const text = typeof event.data === "string" ? event.data : null;
    if (text === null) return; // the gateway sends text frames only
    let frame;
    try { frame = JSON.parse(text); } catch { return; }
    if (!frame || typeof frame !== "object" || Array.isArray(frame)) return;
    if (!frame.data || typeof frame.data !== "object") frame.data = {};
    this._armIdle();
    if (!ws._sbGreeted) {
      if (frame.type === "connection_established") {
        ws._sbGreeted = true;
        this._established(frame);
        return;
      }
      if (frame.type === "error" && Number.isInteger(frame.data.close_code)) {
        ws._sbRefusal = frame.data; // the close that follows carries the code
        return;
      }
    }
    this._receive(frame);
  }

  _established(frame) {
    clearTimeout(this._connectTimer);
    const data = frame.data;
    const hadSession = Boolean(this.sessionToken);
    const resumed = data.resumed === true;
    const recovered = data.recovered !== false;
    const reconnect = this.stats.connects > 0;
    this.stats.connects += 1;
    if (reconnect) this.stats.reconnects += 1;
    let lost = null;
    if (resumed) {
      this.stats.resumes += 1;
      if (!recovered) lost = "history_gap";
    } else {
      if (hadSession || this._sessionLost) lost = "session_lost";
      this.lastSeq = 0; // a new session numbers its frames from 1 again
    }
    this._sessionLost = false;
    if (typeof data.client_id === "string") this.clientId = data.client_id;
    if (data.user_id !== undefined) this.userId = data.user_id;
    if (typeof data.session_token === "string") this.sessionToken = data.session_token;
    this.connectionInfo = data;
    this._attempt = 0;
    this._nextAction = CloseAction.RESUME;
    this._setState("connected");
    this._persist();
    this._dispatch(frame);
    const info = { clientId: this.clientId, resumed, recovered, lastSeq: this.lastSeq,
                   replayed: data.replayed || 0, reconnect, info: data };
    this._emit("connected", info);
    if (resumed) this._emit("resumed", info);
    if (lost) {
      this.stats.recoveryFailures += 1;
      this._emit("recovery_failed", { reason: lost, lastSeq: this.lastSeq,
                                      clientId: this.clientId });
    }
    if (!resumed && this.channels.size) {
      for (const channel of this.channels) {
        this.request("subscribe", { channel }).catch((err) => {
          this.logger.error(`switchboard: re-subscribing to ${channel} failed`, err);
        });
      }
    }
    this._flushQueue();
    this._scheduleRefresh();
    if (this._resolveFirst) { this._resolveFirst(data); this._resolveFirst = null; }
  }

  _receive(frame) {
    const seq = frame.seq;
    if (Number.isInteger(seq)) {
      if (seq <= this.lastSeq) { this.stats.duplicatesDropped += 1; return; }
      this.lastSeq = seq;
    }
    this.stats.framesReceived += 1;
    const replyTo = frame.reply_to;
    if (typeof replyTo === "string") {
      const pending = this._pending.get(replyTo);
      if (pending) {
        if (frame.type === "error") {
          pending.reject(new RequestError(String(frame.data.code || "error"),
            String(frame.data.message || ""), frame));
        } else if (!pending.expect || pending.expect.includes(frame.type)) {
          pending.resolve(frame);
        }
      }
    }
    if (frame.type === "tool_call" && frame.data.call_id && replyTo == null) {
      this.tools._answer(frame);
    } else if (frame.type === "mcp_tool_waiting_permission" && frame.data.call_id) {
      this._answerPermission(frame);
    }
    this._dispatch(frame);
    // After the handlers ran: a reload now resumes after this frame, not before it.
    if (Number.isInteger(seq)) this._persist();
  }

  _lost(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    ws.onmessage = ws.onclose = ws.onerror = null;
    this._clearTimers();
    if (ws.readyState === 0 || ws.readyState === 1) {
      try { ws.close(1000, "reconnecting"); } catch { /* ignore */ }
    }
    if (this.state === "closed" || this.state === "failed") return;
    if (!ws._sbGreeted && ws._sbRefusal && ws._sbRefusal.message && !reason) {
      reason = ws._sbRefusal.message;
    }
    let action = closeAction(code);
    if (action === CloseAction.NEW_TOKEN && typeof this.options.getToken !== "function") {
      action = CloseAction.STOP;
      reason = reason || "auth token expired (pass getToken to refresh it)";
    }
    const willReconnect = action !== CloseAction.STOP;
    this._setState(willReconnect ? "disconnected" : this.state);
    this._emit("disconnected", { code, reason, willReconnect });
    if (!willReconnect) { this._fail(code, reason); return; }
    if (action === CloseAction.FRESH_SESSION) {
      this.forgetSession();
      this._sessionLost = true; // told once the new session is up (recovery_failed)
    }
    this._nextAction = action;
    this._retry(code, reason);
  }

  _retry(code, reason) {
    if (this.state === "closed" || this.state === "failed") return;
    if (this._attempt >= this.maxReconnectAttempts) {
      this._fail(code, `gave up after ${this._attempt} reconnect attempts: ${reason}`);
      return;
    }
    const action = this._nextAction;
    let delay;
    if (this._refreshing || action === CloseAction.FRESH_SESSION
        || action === CloseAction.NEW_TOKEN) {
      delay = 0; // nothing to wait for: the session was reset, or a new token is at hand
      this._refreshing = false;
      this._nextAction = CloseAction.RESUME;
    } else {
      delay = backoffDelay(this._attempt, this.backoff);
      if (action === CloseAction.BACKOFF) delay = Math.max(delay, this.backoff.rateLimited);
    }
    this._attempt += 1;
    this._setState("disconnected");
    this._timer = setTimeout(() => this._open(), delay);
  }

  _fail(code, reason) {
    this._finish(code, reason, false);
  }

  _finish(code, reason, byClient) {
    if (this.state === "closed" || this.state === "failed") return;
    this._clearTimers();
    clearTimeout(this._timer);
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.onmessage = ws.onclose = ws.onerror = null;
    this.closeCode = code;
    this.closeReason = reason;
    this._setState(byClient ? "closed" : "failed");
    // An ended session cannot be resumed: the next client in this tab starts afresh.
    if (code === CloseCode.SESSION_ENDED) this.forgetSession();
    const error = new ConnectionClosed(`client ${this.state}: ${reason}`, code, reason);
    for (const pending of [...this._pending.values()]) pending.reject(error);
    for (const item of this._queue.splice(0)) if (item.reject) item.reject(error);
    if (!byClient) this._emit("failed", { code, reason });
    this._emit("closed", { code, reason });
    if (this._rejectFirst) { this._rejectFirst(error); this._rejectFirst = null; }
  }

  _clearTimers() {
    clearTimeout(this._connectTimer);
    clearTimeout(this._idleTimer);
    clearTimeout(this._pingTimer);
    clearTimeout(this._refreshTimer);
    this._idleTimer = this._pingTimer = null;
  }

  // Dead-connection detection: the server's WebSocket pings are invisible to page code, so
  // when nothing arrived for idleTimeout, ask with an application ping; no frame at all within
  // pingTimeout after that means the connection is dead (a NAT dropped it, a laptop slept).
  _armIdle() {
    clearTimeout(this._pingTimer);
    this._pingTimer = null;
    if (this._idleTimer) clearTimeout(this._idleTimer);
    if (!(this.idleTimeout > 0)) return;
    const ws = this._ws;
    this._idleTimer = setTimeout(() => {
      if (ws !== this._ws || ws.readyState !== 1) return;
      try { ws.send(JSON.stringify(this._frame("ping", {}))); } catch { /* lost anyway */ }
      this._pingTimer = setTimeout(() => {
        this._lost(ws, CloseCode.ABNORMAL, `no answer to ping within ${this.pingTimeout} ms`);
      }, this.pingTimeout);
    }, this.idleTimeout);
  }

  // Token refresh before `exp`: reconnect with a fresh token and resume (nothing is lost).
  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    if (typeof this.options.getToken !== "function") return;
    const exp = tokenExpiry(this._token);
    if (exp === null) return;
    const remaining = exp * 1000 - Date.now();
    if (remaining <= 0) return; // already expired: the server closes with 4010 (then getToken)
    // refreshBefore ahead of exp, but never sooner than half the token's remaining life: a
    // token shorter-lived than refreshBefore must not make the client reconnect in a loop.
    const wait = Math.max(remaining - this.refreshBefore, remaining / 2);
    const ws = this._ws;
    this._refreshTimer = setTimeout(() => {
      if (ws !== this._ws) return;
      this._refreshing = true;
      this._lost(ws, CloseCode.GOING_AWAY, "refreshing the auth token");
    }, Math.min(wait, 2 ** 31 - 1));
  }

  // --- sending ----------------------------------------------------------------------------

  _frame(type, data, messageId) {
    return { type, data: data || {}, message_id: messageId || newMessageId(),
             timestamp: new Date().toISOString() };
  }

  /**
   * Send one frame; returns its message_id. While disconnected the frame waits in a bounded
   * queue (maxQueue; beyond it QueueFull is thrown) and goes out on reconnect, in order.
   */
  send(type, data = {}, { messageId } = {}) {
    if (this.state === "closed" || this.state === "failed") {
      throw new ConnectionClosed(`client is ${this.state}`, this.closeCode, this.closeReason);
    }
    const frame = this._frame(type, data, messageId);
    this._sendFrame(frame);
    return frame.message_id;
  }

  _sendFrame(frame, reject) {
    const ws = this._ws;
    if (ws && this.state === "connected" && ws.readyState === 1 && !this._queue.length) {
      ws.send(JSON.stringify(frame));
      this.stats.framesSent += 1;
      return;
    }
    if (this._queue.length >= this.maxQueue) throw new QueueFull(this.maxQueue);
    this._queue.push({ frame, reject });
  }

  _flushQueue() {
    const ws = this._ws;
    while (this._queue.length && ws && ws.readyState === 1) {
      const { frame } = this._queue.shift();
      ws.send(JSON.stringify(frame));
      this.stats.framesSent += 1;
    }
  }

  /** How many frames wait for a connection. */
  get queued() {
    return this._queue.length;
  }

  _guard(signal, timeout, message, onAbort) {
    let timer = null;
    const abort = () => onAbort(abortError(signal));
    if (timeout != null && timeout !== Infinity) {
      timer = setTimeout(() => onAbort(new RequestTimeout(message)), timeout);
    }
    if (signal) {
      if (signal.aborted) queueMicrotask(abort);
      else signal.addEventListener("abort", abort, { once: true });
    }
    return () => {
      clearTimeout(timer);
      if (signal) signal.removeEventListener("abort", abort);
    };
  }

  /**
   * Send a frame and wait for the server frame that answers it (`reply_to`): by default the
   * known final answer of `type` (DEFAULT_REPLY_TYPES), else the first reply. An `error` reply
   * rejects with RequestError; no reply within `timeout` ms (default requestTimeout) or an
   * aborted `signal` rejects too.
   */
  request(type, data = {}, { timeout = this.requestTimeout, signal, expect, messageId } = {}) {
    const expected = expect == null ? DEFAULT_REPLY_TYPES[type] || null
      : Array.isArray(expect) ? expect : [expect];
    const frame = this._frame(type, data, messageId);
    const id = frame.message_id;
    return new Promise((resolve, reject) => {
      const done = (fn) => (value) => {
        this._pending.delete(id);
        cleanup();
        // A request that timed out or was aborted while its frame waited for a connection
        // is not sent later: nobody waits for its answer any more.
        const queued = this._queue.findIndex((item) => item.frame === frame);
        if (queued >= 0) this._queue.splice(queued, 1);
        fn(value);
      };
      const cleanup = this._guard(signal, timeout, `no reply to ${type} within ${timeout} ms`,
        done(reject));
      this._pending.set(id, { resolve: done(resolve), reject: done(reject), expect: expected });
      if (this.state === "closed" || this.state === "failed") {
        done(reject)(new ConnectionClosed(`client is ${this.state}`, this.closeCode));
        return;
      }
      try {
        this._sendFrame(frame, done(reject));
      } catch (err) {
        done(reject)(err);
      }
    });
  }

  /** An application ping; resolves with the pong frame. */
  ping(options) {
    return this.request("ping", {}, options);
  }

  /** Join a channel; remembered and re-joined after a fresh session. */
  async subscribe(channel, options) {
    const reply = await this.request("subscribe", { channel }, options);
    this.channels.add(channel);
    this._persist();
    return reply;
  }

  async unsubscribe(channel, options) {
    this.channels.delete(channel);
    this._persist();
    return this.request("unsubscribe", { channel }, options);
  }

  /**
   * Publish to a channel, where its rule allows (a `publish` frame). Resolves with the
   * `published` frame {channel, message_id, recipients, queued}; subscribers (this client
   * too, if subscribed) get a `publication` frame {channel, data, from}. A refusal rejects
   * with RequestError `forbidden_channel` (its frame's data.reason says why).
   */
  publish(channel, data = {}, options) {
    return this.request("publish", { channel, data }, options);
  }

  /**
   * Who is in a channel (where its rule allows presence): resolves with the `presence`
   * frame {channel, count, sessions: [{client_id, user_id, connected}], users, truncated}.
   * Changes arrive as `join` / `leave` frames where the rule has join_leave:
   * `sb.on("join", (f) => …)`.
   */
  presence(channel, options) {
    return this.request("presence", { channel }, options);
  }

  /**
   * A subscribed channel's recent frames (its rule's history): resolves with the
   * `channel_history` frame {channel, frames, count, limit}, oldest first. A frame may also
   * arrive live: compare `message_id`s.
   */
  channelHistory(channel, { limit, ...options } = {}) {
    const data = limit === undefined ? { channel } : { channel, limit };
    return this.request("channel_history", data, options);
  }

  /** Send a chat message; resolves with `chat_response` or, streamed, `stream_end`. */
  chat(content, { role = "user", timeout = 60000, signal } = {}) {
    return this.request("chat_message", { content, role }, { timeout, signal });
  }

  /** Call a gateway-side tool; resolves with its result, rejects with ToolError on failure. */
  async callTool(name, params = {}, { timeout = 60000, signal, callId } = {}) {
    const data = { tool_name: name, params };
    if (callId) data.call_id = callId;
    const reply = await this.request("tool_call", data, { timeout, signal });
    if (reply.data.success === false) {
      const result = reply.data.result;
      const detail = reply.data.error
        || (result && typeof result === "object" ? result.content : result);
      throw new ToolError(`tool ${name} failed: ${detail}`, name, reply.data);
    }
    return reply.data.result;
  }

  /**
   * The chunks of the stream answering `replyTo` (a chat message's message_id, or a
   * stream_id), as an async iterator of strings. Ends at `stream_end`; an `error` frame for it
   * throws RequestError.
   */
  stream(replyTo, { signal } = {}) {
    const mine = (frame) => frame.reply_to === replyTo || frame.data.stream_id === replyTo;
    return this._iterate("*", signal, (frame, push, end, fail) => {
      if (!mine(frame)) return;
      if (frame.type === "stream_chunk") push(String(frame.data.content ?? ""));
      else if (frame.type === "stream_end") end();
      else if (frame.type === "error") {
        fail(new RequestError(String(frame.data.code || "error"),
          String(frame.data.message || ""), frame));
      }
    });
  }

  _iterate(type, signal, route) {
    const buffer = [];
    let waiting = null;
    let finished = false;
    let failure = null;
    const wake = () => {
      if (waiting) { const w = waiting; waiting = null; w(); }
    };
    const off = this.on(type, (frame) => route(frame, (value) => { buffer.push(value); wake(); },
      () => { finish(); }, (err) => { failure = err; finish(); }));
    const offClosed = this.on("closed", () => finish());
    const onAbort = () => { failure = abortError(signal); finish(); };
    function finish() {
      finished = true;
      off(); offClosed();
      if (signal) signal.removeEventListener("abort", onAbort);
      wake();
    }
    if (signal) {
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
    }
    return {
      [Symbol.asyncIterator]() { return this; },
      async next() {
        for (;;) {
          if (buffer.length) return { value: buffer.shift(), done: false };
          if (failure) { const err = failure; failure = null; throw err; }
          if (finished) return { value: undefined, done: true };
          await new Promise((resolve) => { waiting = resolve; });
        }
      },
      async return() { finish(); buffer.length = 0; return { value: undefined, done: true }; },
    };
  }

  /** Decide `mcp_tool_waiting_permission` prompts: `fn(frame)` returns (a promise of) a bool.
   * Without one, or when it throws, the answer is `granted: false`. */
  onPermission(fn) {
    this._permission = fn;
  }

  async _answerPermission(frame) {
    let granted = false;
    if (this._permission) {
      try { granted = Boolean(await this._permission(frame)); } catch (err) {
        this.logger.error("switchboard: permission handler threw; denying", err);
      }
    }
    this._trySend("permission_response", { call_id: frame.data.call_id, granted });
  }

  _trySend(type, data) {
    try { this.send(type, data); } catch (err) {
      this.logger.error(`switchboard: could not send ${type}`, err);
    }
  }
}

/** Tools this client runs for the server (`POST /call_tool` → `tool_call` → `tool_result`). */
class ToolRegistry {
  constructor(client) {
    this._client = client;
    this._tools = new Map();
    /** Answer a tool_call for an unregistered tool with an error (so the HTTP caller is not
     * left waiting), unless a "tool_call" frame handler is registered. */
    this.answerUnknown = client.options.answerUnknownTools ?? true;
  }

  /**
   * `handler(params, {callId, toolName, frame})` returns (a promise of) a JSON value; a throw
   * becomes the call's error. `schema` (JSON Schema of the params) and `description` are
   * kept for `describe()`.
   */
  register(name, handler, { schema = null, description = "" } = {}) {
    this._tools.set(name, { handler, schema, description });
    return () => this.unregister(name);
  }

  unregister(name) {
    this._tools.delete(name);
  }

  has(name) {
    return this._tools.has(name);
  }

  describe() {
    return [...this._tools].map(([name, t]) => ({ name, description: t.description,
                                                  parameters: t.schema }));
  }

  async _answer(frame) {
    const client = this._client;
    const { call_id: callId, tool_name: toolName, params } = frame.data;
    const tool = this._tools.get(String(toolName || ""));
    if (!tool) {
      if (this.answerUnknown && !(client._handlers.get("tool_call") || new Set()).size) {
        client._trySend("tool_result", { call_id: callId, error: `unknown tool ${toolName}` });
      }
      return;
    }
    const answer = { call_id: callId };
    try {
      const result = await tool.handler(params ?? {}, { callId, toolName, frame });
      JSON.stringify(result === undefined ? null : result);
      answer.result = result === undefined ? null : result;
    } catch (err) {
      answer.error = err && err.message ? `${err.name || "Error"}: ${err.message}` : String(err);
    }
    client._trySend("tool_result", answer);
  }
}
