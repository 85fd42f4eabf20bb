// Switchboard live dashboard: an ES module, no build step, no CDN.
//
// * Every API call carries the token from the token field (kept in sessionStorage).
// * /status, /clients and /channels are polled every 2 s; frames in/out per second are drawn
//   as sparklines from the counters.
// * The live stream is the bundled browser client (/switchboard.js, served by this port from
//   clients/js: no second copy of the protocol logic). It subscribes to `tool_activity` and
//   shows every frame it receives, colour-coded by family as in seed 000's table.
//   tool_activity is a system channel: every connection attempt presents a short-lived
//   observer ticket (POST /observer_ticket, with the API token) as its token, so the API
//   token itself never goes to the WebSocket port. Its session
//   is kept in sessionStorage, so a reload resumes it instead of leaving one behind;
//   "Disconnect" ends it.
// * A click on a client opens a drawer: its details, its history (paged) and "end session".
// * Untrusted text only ever goes through textContent.
import { Switchboard } from "/switchboard.js";

const TOKEN_KEY = "switchboard.apiToken";
const WS_URL_KEY = "switchboard.wsUrl";
const POLL_MS = 2000;
const MAX_FRAMES = 300;
const SPARK_POINTS = 60;
const HISTORY_PAGE = 50;

const $ = (id) => document.getElementById(id);

function storageGet(key) {
  try { return window.sessionStorage.getItem(key); } catch { return null; }
}
function storageSet(key, value) {
  try { window.sessionStorage.setItem(key, value); } catch { /* private mode */ }
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function setPill(node, state, text) {
  node.className = `pill pill-${state}`;
  node.textContent = text;
}

// --- API ------------------------------------------------------------------------------------

let token = storageGet(TOKEN_KEY) || "";

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = text;
  try { data = text ? JSON.parse(text) : null; } catch { /* keep text */ }
  return { status: resp.status, ok: resp.ok, body: data };
}

function errorText(answer) {
  const body = answer.body;
  if (body && body.error && body.error.message) {
    return `${answer.status} ${body.error.code || "error"}: ${body.error.message}`;
  }
  return `HTTP ${answer.status}`;
}

function showBanner(text) {
  const banner = $("banner");
  banner.textContent = text || "";
  banner.hidden = !text;
}

// --- polling --------------------------------------------------------------------------------

let pollTimer = null;

function formatUptime(seconds) {
  const s = Math.floor(Number(seconds) || 0);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return (h ? `${h}h ` : "") + (h || m ? `${m}m ` : "") + `${s % 60}s`;
}

const clock = (date) => date.toLocaleTimeString([], { hour12: false });

function timeOnly(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : clock(d);
}

// Frames in/out per second, from the counters' deltas between polls.
const rates = { in: [], out: [], last: null };

function recordRates(status) {
  const now = performance.now();
  const sample = { t: now, in: Number(status.total_messages_received) || 0,
                   out: Number(status.total_messages_sent) || 0 };
  const last = rates.last;
  rates.last = sample;
  if (!last || sample.t <= last.t) return;
  const dt = (sample.t - last.t) / 1000;
  for (const series of ["in", "out"]) {
    const perSecond = Math.max(0, (sample[series] - last[series]) / dt);
    rates[series].push(perSecond);
    if (rates[series].length > SPARK_POINTS) rates[series].shift();
    drawSpark(series);
  }
}

function drawSpark(series) {
  const values = rates[series];
  const figure = $(`spark-${series}`);
  const peak = Math.max(1, ...values);
  const step = 120 / (SPARK_POINTS - 1);
  const offset = (SPARK_POINTS - values.length) * step;
  const points = values.map((v, i) => `${(offset + i * step).toFixed(1)},${(29 - (v / peak) * 28).toFixed(1)}`);
  figure.querySelector("polyline").setAttribute("points", points.join(" "));
  figure.dataset.points = String(values.length);
  const current = values[values.length - 1];
  $(`rate-${series}`).textContent = current >= 10 ? current.toFixed(0) : current.toFixed(1);
}

function renderStatus(status) {
  $("c-connected").textContent = status.connected_clients;
  $("c-sessions").textContent = status.total_sessions;
  $("c-offline").textContent = status.offline_sessions;
  $("c-channels").textContent = status.total_channels;
  $("c-sent").textContent = status.total_messages_sent;
  $("c-received").textContent = status.total_messages_received;
  $("c-broadcasts").textContent = status.total_broadcasts;
  $("c-resumes").textContent = status.total_resumes;
  $("c-pending").textContent = status.pending_tool_calls;
  $("c-uptime").textContent = formatUptime(status.uptime);
  recordRates(status);
}

function fillClient(clientId) {
  $("send-client").value = clientId;
  $("tool-client").value = clientId;
}

function renderClients(list) {
  const tbody = $("clients").tBodies[0];
  const rows = document.createDocumentFragment();
  const ids = document.createDocumentFragment();
  for (const c of list.clients || []) {
    const tr = el("tr", c.connected ? "online" : "offline");
    if (c.client_id === drawer.clientId) tr.classList.add("selected");
    tr.dataset.clientId = c.client_id;
    tr.title = "click to open this client";
    tr.appendChild(el("td", "mono", c.client_id));
    tr.appendChild(el("td", null, c.client_type));
    const state = el("td");
    state.appendChild(el("span", `dot ${c.connected ? "dot-on" : "dot-off"}`,
                         c.connected ? "connected" : "offline"));
    tr.appendChild(state);
    tr.appendChild(el("td", null, (c.channels || []).join(", ")));
    tr.appendChild(el("td", "num", c.message_count));
    tr.appendChild(el("td", "num", c.last_seq));
    tr.appendChild(el("td", "nowrap", timeOnly(c.last_activity)));
    tr.addEventListener("click", () => { fillClient(c.client_id); openDrawer(c.client_id); });
    rows.appendChild(tr);
    const option = el("option");
    option.value = c.client_id;
    ids.appendChild(option);
  }
  tbody.replaceChildren(rows);
  $("client-ids").replaceChildren(ids);
  $("clients-total").textContent = `(${list.total || 0})`;
}

function renderChannels(channels) {
  const tbody = $("channels").tBodies[0];
  const rows = document.createDocumentFragment();
  for (const ch of channels.channels || []) {
    const tr = el("tr");
    tr.dataset.channel = ch.channel;
    tr.appendChild(el("td", "mono", ch.channel));
    tr.appendChild(el("td", "num", ch.subscribers));
    rows.appendChild(tr);
  }
  if (!(channels.channels || []).length) {
    const empty = el("tr");
    const td = el("td", "muted", "no channel has subscribers");
    td.colSpan = 2;
    empty.appendChild(td);
    rows.appendChild(empty);
  }
  tbody.replaceChildren(rows);
}

async function poll() {
  clearTimeout(pollTimer);
  try {
    const answers = await Promise.all([api("GET", "/status"), api("GET", "/clients?limit=200"),
                                       api("GET", "/channels")]);
    const failed = answers.find((a) => !a.ok);
    if (failed) {
      setPill($("api-state"), "bad",
              failed.status === 401 || failed.status === 403 ? "token needed" : "API error");
      showBanner(failed.status === 401 ? "Enter the API token (API_TOKEN) above."
        : failed.status === 403 ? `The API token was refused: ${errorText(failed)}`
        : errorText(failed));
    } else {
      setPill($("api-state"), "ok", "API ok");
      showBanner("");
      renderStatus(answers[0].body);
      renderClients(answers[1].body);
      renderChannels(answers[2].body);
      $("last-refresh").textContent = `Last: ${clock(new Date())}.`;
    }
  } catch (err) {
    setPill($("api-state"), "bad", "unreachable");
    showBanner(`The API did not answer: ${err}`);
  }
  pollTimer = setTimeout(poll, POLL_MS);
}

// --- frames (stream and drawer) -------------------------------------------------------------

// Seed 000's colour table: connection blue, handoff orange, tool execution green,
// MCP event purple, error red; anything else neutral.
function familyOf(frame) {
  const type = String(frame.type || "");
  const data = frame.data && typeof frame.data === "object" ? frame.data : {};
  if (type === "error" || /error|fail/.test(type) || data.status === "error"
      || data.status === "failed" || data.success === false) {
    return "error";
  }
  if (/^(connection|connect|disconnect|subscribed|unsubscribed|pong|ping|heartbeat|status_response)/
    .test(type)) {
    return "connection";
  }
  if (/^handoff/.test(type)) return "handoff";
  if (/^(mcp_)?tool/.test(type) || type === "tool_execution") return "tool";
  if (/^mcp/.test(type)) return "mcp";
  return "other";
}

function summarise(frame) {
  const data = frame.data;
  let text;
  if (data && typeof data === "object") {
    if (typeof data.content === "string") text = data.content;
    else if (typeof data.message === "string") text = data.message;
    else text = JSON.stringify(data);
  } else {
    text = JSON.stringify(frame);
  }
  return text.length > 240 ? `${text.slice(0, 240)}…` : text;
}

function frameItem(frame, when, direction) {
  const family = familyOf(frame);
  const li = el("li", `frame family-${family}`);
  li.dataset.type = String(frame.type || "");
  li.dataset.family = family;
  const head = el("div", "frame-head");
  head.appendChild(el("time", "frame-time", when));
  if (direction) head.appendChild(el("span", "dir", direction));
  head.appendChild(el("span", "badge", frame.type || "(no type)"));
  if (frame.seq !== undefined) {
    head.appendChild(el("span", "seq", `#${frame.seq}`));
    li.dataset.seq = String(frame.seq);
  }
  if (frame.channel) head.appendChild(el("span", "channel", frame.channel));
  head.appendChild(el("span", "frame-summary", summarise(frame)));
  li.appendChild(head);
  const details = el("details");
  details.appendChild(el("summary", null, "JSON"));
  details.appendChild(el("pre", null, JSON.stringify(frame, null, 2)));
  li.appendChild(details);
  return li;
}

function addFrame(frame) {
  const list = $("stream");
  list.insertBefore(frameItem(frame, clock(new Date())), list.firstChild);
  while (list.childNodes.length > MAX_FRAMES) list.removeChild(list.lastChild);
}

// --- live stream: the bundled client --------------------------------------------------------

let stream = null;

function defaultWsUrl() {
  const meta = document.querySelector('meta[name="switchboard-ws-port"]');
  const port = meta && /^\d+$/.test(meta.content) ? meta.content : "9004";
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  let host = window.location.hostname || "127.0.0.1";
  if (host.includes(":")) host = `[${host}]`;
  return `${scheme}//${host}:${port}/ws?client_type=dashboard`;
}

function streamLabel(text, state) {
  setPill($("ws-state"), state, text);
}

// The observer ticket for the next connection attempt (none without an API token: the stream
// then shows everything but tool_activity).
let observing = false;

async function observerTicket() {
  const answer = token ? await api("POST", "/observer_ticket").catch(() => null) : null;
  observing = Boolean(answer && answer.ok);
  return observing ? answer.body.ticket : null;
}

function openStream() {
  const base = $("ws-url").value.trim();
  let url;
  try {
    url = new URL(base, window.location.href);
  } catch (err) {
    streamLabel("bad URL", "bad");
    addFrame({ type: "error", data: { message: `cannot open ${base}: ${err}` } });
    return;
  }
  const clientType = url.searchParams.get("client_type") || "dashboard";
  url.searchParams.delete("client_type");
  const sb = new Switchboard(url.toString(), { clientType, storageKey: `switchboard.dashboard:${url}`,
                                              getToken: observerTicket });
  stream = sb;
  $("ws-connect").textContent = "Disconnect";
  sb.on("*", addFrame);
  sb.on("connecting", () => streamLabel("connecting…", "idle"));
  sb.on("connected", (e) => {
    streamLabel(e.resumed ? "connected (resumed)" : "connected", "ok");
    if (observing && !sb.channels.has("tool_activity")) {
      sb.subscribe("tool_activity").catch((err) => addFrame({
        type: "error", data: { message: `cannot watch tool_activity: ${err.message}` } }));
    }
  });
  sb.on("disconnected", (e) => {
    addFrame({ type: "disconnected", data: { code: e.code, reason: e.reason } });
    if (e.willReconnect) streamLabel("reconnecting…", "idle");
  });
  sb.on("closed", (e) => {
    if (stream === sb) {
      stream = null;
      $("ws-connect").textContent = "Connect";
    }
    streamLabel(`disconnected (${e.code ?? "–"})`, "idle");
  });
  sb.connect().catch(() => { /* shown by the closed event */ });
}

async function closeStream() {
  const sb = stream;
  stream = null;
  $("ws-connect").textContent = "Connect";
  if (!sb) return;
  const clientId = sb.clientId;
  await sb.close(1000, "dashboard disconnected");
  sb.forgetSession();
  // End the session too: a dashboard that disconnects leaves nothing behind.
  if (clientId) await api("DELETE", `/clients/${encodeURIComponent(clientId)}`);
  poll();
}

function toggleStream(event) {
  event.preventDefault();
  storageSet(WS_URL_KEY, $("ws-url").value.trim());
  if (stream) closeStream();
  else openStream();
}

// --- the client drawer ----------------------------------------------------------------------

const drawer = { clientId: null, entries: [], older: false, newest: 0 };

function entryKey(e) {
  return `${e.direction}:${e.seq ?? ""}:${e.after_seq ?? ""}:${e.frame && e.frame.message_id}`;
}

function renderDrawerInfo(client) {
  const info = $("drawer-info");
  const rows = document.createDocumentFragment();
  for (const key of ["client_type", "connected", "node", "connected_at", "last_activity",
                     "disconnected_at", "channels", "last_seq", "history_size", "messages_in",
                     "messages_out", "remote", "user_agent"]) {
    if (client[key] === undefined || client[key] === null) continue;
    rows.appendChild(el("dt", null, key));
    const value = Array.isArray(client[key]) ? client[key].join(", ") : client[key];
    rows.appendChild(el("dd", null, value));
  }
  info.replaceChildren(rows);
}

function renderHistory() {
  const list = $("drawer-history");
  const items = document.createDocumentFragment();
  for (const e of drawer.entries) {
    const frame = e.frame && typeof e.frame === "object" ? e.frame : { type: "(raw)", data: { content: String(e.frame) } };
    items.appendChild(frameItem(frame, timeOnly(frame.timestamp), e.direction));
  }
  list.replaceChildren(items);
  const seqs = drawer.entries.map((e) => e.seq ?? e.after_seq).filter((s) => s !== null);
  $("drawer-range").textContent = seqs.length
    ? `(${drawer.entries.length} frames, seq ${Math.min(...seqs)}–${Math.max(...seqs)})` : "(empty)";
  $("drawer-older").disabled = !drawer.older;
  $("drawer-newer").disabled = !seqs.length || Math.max(...seqs) >= drawer.newest;
}

async function loadHistory(query) {
  const id = drawer.clientId;
  const answer = await api("GET", `/clients/${encodeURIComponent(id)}/messages?limit=${HISTORY_PAGE}${query}`);
  if (id !== drawer.clientId) return;
  if (!answer.ok) {
    $("drawer-range").textContent = errorText(answer);
    drawer.entries = [];
    $("drawer-history").replaceChildren();
    return;
  }
  const body = answer.body;
  drawer.newest = body.last_seq;
  drawer.entries = body.messages;
  drawer.older = query.includes("before_seq") ? body.has_more
    : (body.messages.length > 0 && (body.oldest_seq ?? 0) < (body.messages[0].seq ?? body.messages[0].after_seq ?? 0));
  renderHistory();
}

function newestPage() {
  // before_seq alone answers the newest page before it.
  return loadHistory(`&before_seq=${Number.MAX_SAFE_INTEGER}`);
}

// Pages are keyed by position (a server frame's seq; a client frame sits after server frame
// `after_seq`), so a page edge may repeat a client frame already on screen: it is dropped.
async function turnPage(query, olderExist) {
  const shown = new Set(drawer.entries.map(entryKey));
  await loadHistory(query);
  drawer.entries = drawer.entries.filter((e) => !shown.has(entryKey(e)));
  if (olderExist) drawer.older = true;
  renderHistory();
}

function olderPage() {
  const first = drawer.entries[0];
  if (!first) return newestPage();
  return turnPage(`&before_seq=${first.seq ?? first.after_seq + 1}`, false);
}

function newerPage() {
  const last = drawer.entries[drawer.entries.length - 1];
  if (!last) return newestPage();
  return turnPage(`&after_seq=${last.seq ?? last.after_seq}`, true);
}

async function openDrawer(clientId) {
  drawer.clientId = clientId;
  drawer.entries = [];
  $("drawer").hidden = false;
  $("drawer-client").textContent = clientId;
  $("drawer-end").hidden = false;
  $("drawer-end").disabled = false;
  $("drawer-end-confirm").hidden = true;
  $("drawer-end-result").textContent = "";
  for (const tr of document.querySelectorAll("#clients tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.clientId === clientId);
  }
  const answer = await api("GET", `/clients/${encodeURIComponent(clientId)}`);
  if (clientId !== drawer.clientId) return;
  if (answer.ok) renderDrawerInfo(answer.body);
  else $("drawer-info").replaceChildren(el("dd", null, errorText(answer)));
  await newestPage();
}

function closeDrawer() {
  drawer.clientId = null;
  $("drawer").hidden = true;
  for (const tr of document.querySelectorAll("#clients tbody tr.selected")) tr.classList.remove("selected");
}

async function endSession() {
  const id = drawer.clientId;
  $("drawer-end-confirm").hidden = true;
  const answer = await api("DELETE", `/clients/${encodeURIComponent(id)}`);
  $("drawer-end-result").textContent = answer.ok
    ? `session ended${answer.body.disconnected ? " (socket closed with 4001)" : ""}`
    : errorText(answer);
  $("drawer-end").disabled = answer.ok;
  poll();
}

// --- forms ----------------------------------------------------------------------------------

function showResult(node, answer) {
  node.hidden = false;
  node.className = `result ${answer.ok ? "result-ok" : "result-error"}`;
  const body = typeof answer.body === "string" ? answer.body : JSON.stringify(answer.body, null, 2);
  node.textContent = `HTTP ${answer.status}\n${body}`;
}

function showLocalError(node, message) {
  node.hidden = false;
  node.className = "result result-error";
  node.textContent = message;
}

function parseObject(text, name) {
  const trimmed = text.trim();
  if (!trimmed) return {};
  const value = JSON.parse(trimmed);
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    throw new Error(`${name} must be a JSON object`);
  }
  return value;
}

async function submitting(form, node, promise) {
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    showResult(node, await promise);
  } catch (err) {
    showLocalError(node, String(err));
  } finally {
    button.disabled = false;
  }
}

function onSend(event) {
  event.preventDefault();
  const body = { client_id: $("send-client").value.trim(), content: $("send-content").value };
  const type = $("send-type").value.trim();
  if (type) body.message_type = type;
  submitting(event.target, $("send-result"), api("POST", "/send_message", body)).then(poll);
}

function onBroadcast(event) {
  event.preventDefault();
  let body;
  try {
    body = { message_type: $("broadcast-type").value.trim(),
             data: parseObject($("broadcast-data").value, "data") };
  } catch (err) {
    showLocalError($("broadcast-result"), `data: ${err.message}`);
    return;
  }
  const channel = $("broadcast-channel").value.trim();
  const clientType = $("broadcast-client-type").value.trim();
  if (channel) body.channel = channel;
  if (clientType) body.client_type = clientType;
  submitting(event.target, $("broadcast-result"), api("POST", "/broadcast", body));
}

function onTool(event) {
  event.preventDefault();
  const result = $("tool-result");
  let body;
  try {
    body = { client_id: $("tool-client").value.trim(), tool_name: $("tool-name").value.trim(),
             params: parseObject($("tool-params").value, "params") };
  } catch (err) {
    showLocalError(result, `params: ${err.message}`);
    return;
  }
  const timeout = parseFloat($("tool-timeout").value);
  if (timeout > 0) body.timeout = timeout;
  result.hidden = false;
  result.className = "result";
  result.textContent = "waiting for the client's tool_result…";
  submitting(event.target, result, api("POST", "/call_tool", body));
}

function onToken(event) {
  event.preventDefault();
  token = $("token").value.trim();
  storageSet(TOKEN_KEY, token);
  poll();
  if (stream) stream.dropConnection();  // reconnect (and resume) with a ticket of the new token
}

// --- start ----------------------------------------------------------------------------------

function start() {
  $("token").value = token;
  const params = new URLSearchParams(window.location.search);
  $("ws-url").value = params.get("ws") || storageGet(WS_URL_KEY) || defaultWsUrl();
  $("token-form").addEventListener("submit", onToken);
  $("ws-form").addEventListener("submit", toggleStream);
  $("stream-clear").addEventListener("click", () => $("stream").replaceChildren());
  $("send-form").addEventListener("submit", onSend);
  $("broadcast-form").addEventListener("submit", onBroadcast);
  $("tool-form").addEventListener("submit", onTool);
  $("drawer-close").addEventListener("click", closeDrawer);
  $("drawer-older").addEventListener("click", olderPage);
  $("drawer-newer").addEventListener("click", newerPage);
  $("drawer-newest").addEventListener("click", newestPage);
  $("drawer-end").addEventListener("click", () => {
    $("drawer-end").hidden = true;
    $("drawer-end-confirm").hidden = false;
  });
  $("drawer-end-confirm").addEventListener("click", endSession);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeDrawer(); });
  poll();
  if (params.get("stream") !== "off") openStream();
}

start();
