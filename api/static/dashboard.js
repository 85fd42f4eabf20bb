// Switchboard live dashboard: plain JavaScript, no build step, no CDN.
//
// * Every API call carries the token from the token field (kept in sessionStorage).
// * /status, /clients and /channels are polled every 2 s.
// * The live stream is the dashboard's own WebSocket to the WS port: it subscribes to the
//   `tool_activity` channel and shows every frame it receives (broadcasts included),
//   colour-coded by family as in seed 000's table.
// * Untrusted text only ever goes through textContent.
(function () {
  "use strict";

  var TOKEN_KEY = "switchboard.apiToken";
  var WS_URL_KEY = "switchboard.wsUrl";
  var POLL_MS = 2000;
  var MAX_FRAMES = 300;
  var NO_RECONNECT = { 1000: true, 4000: true, 4001: true, 4003: true };

  function $(id) { return document.getElementById(id); }

  function storageGet(key) {
    try { return window.sessionStorage.getItem(key); } catch (e) { return null; }
  }
  function storageSet(key, value) {
    try { window.sessionStorage.setItem(key, value); } catch (e) { /* private mode */ }
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function setPill(node, state, text) {
    node.className = "pill pill-" + state;
    node.textContent = text;
  }

  // --- API ------------------------------------------------------------------------------------

  var token = storageGet(TOKEN_KEY) || "";

  function api(method, path, body) {
    var headers = { "Accept": "application/json" };
    if (token) { headers["Authorization"] = "Bearer " + token; }
    var init = { method: method, headers: headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (resp) {
      return resp.text().then(function (text) {
        var data = text;
        try { data = text ? JSON.parse(text) : null; } catch (e) { /* keep text */ }
        return { status: resp.status, ok: resp.ok, body: data };
      });
    });
  }

  function errorText(answer) {
    var body = answer.body;
    if (body && body.error && body.error.message) {
      return answer.status + " " + (body.error.code || "error") + ": " + body.error.message;
    }
    return "HTTP " + answer.status;
  }

  function showBanner(text) {
    var banner = $("banner");
    if (text) {
      banner.textContent = text;
      banner.hidden = false;
    } else {
      banner.hidden = true;
      banner.textContent = "";
    }
  }

  // --- polling --------------------------------------------------------------------------------

  var pollTimer = null;

  function formatUptime(seconds) {
    var s = Math.floor(Number(seconds) || 0);
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + (s % 60) + "s";
  }

  function clock(date) {
    return date.toLocaleTimeString([], { hour12: false });
  }

  function timeOnly(iso) {
    if (!iso) { return ""; }
    var d = new Date(iso);
    return isNaN(d.getTime()) ? String(iso) : clock(d);
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
  }

  function fillClient(clientId) {
    $("send-client").value = clientId;
    $("tool-client").value = clientId;
  }

  function renderClients(list) {
    var tbody = $("clients").tBodies[0];
    var rows = document.createDocumentFragment();
    var ids = document.createDocumentFragment();
    (list.clients || []).forEach(function (c) {
      var tr = el("tr", c.connected ? "online" : "offline");
      tr.dataset.clientId = c.client_id;
      tr.title = "click to use this client in the forms";
      tr.appendChild(el("td", "mono", c.client_id));
      tr.appendChild(el("td", null, c.client_type));
      var state = el("td");
      state.appendChild(el("span", "dot " + (c.connected ? "dot-on" : "dot-off"),
                           c.connected ? "connected" : "offline"));
      tr.appendChild(state);
      tr.appendChild(el("td", null, (c.channels || []).join(", ")));
      tr.appendChild(el("td", "num", c.message_count));
      tr.appendChild(el("td", "num", c.last_seq));
      tr.appendChild(el("td", "nowrap", timeOnly(c.last_activity)));
      tr.addEventListener("click", function () { fillClient(c.client_id); });
      rows.appendChild(tr);
      var option = el("option");
      option.value = c.client_id;
      ids.appendChild(option);
    });
    tbody.replaceChildren(rows);
    $("client-ids").replaceChildren(ids);
    $("clients-total").textContent = "(" + (list.total || 0) + ")";
  }

  function renderChannels(channels) {
    var tbody = $("channels").tBodies[0];
    var rows = document.createDocumentFragment();
    (channels.channels || []).forEach(function (ch) {
      var tr = el("tr");
      tr.dataset.channel = ch.channel;
      tr.appendChild(el("td", "mono", ch.channel));
      tr.appendChild(el("td", "num", ch.subscribers));
      rows.appendChild(tr);
    });
    if (!(channels.channels || []).length) {
      var empty = el("tr");
      var td = el("td", "muted", "no channel has subscribers");
      td.colSpan = 2;
      empty.appendChild(td);
      rows.appendChild(empty);
    }
    tbody.replaceChildren(rows);
  }

  function poll() {
    clearTimeout(pollTimer);
    Promise.all([api("GET", "/status"), api("GET", "/clients?limit=200"),
                 api("GET", "/channels")])
      .then(function (answers) {
        var failed = answers.filter(function (a) { return !a.ok; });
        if (failed.length) {
          var first = failed[0];
          setPill($("api-state"), "bad",
                  first.status === 401 || first.status === 403 ? "token needed" : "API error");
          showBanner(first.status === 401 ? "Enter the API token (API_TOKEN) above."
                     : first.status === 403 ? "The API token was refused: " + errorText(first)
                     : errorText(first));
          return;
        }
        setPill($("api-state"), "ok", "API ok");
        showBanner("");
        renderStatus(answers[0].body);
        renderClients(answers[1].body);
        renderChannels(answers[2].body);
        $("last-refresh").textContent = "Last: " + clock(new Date()) + ".";
      })
      .catch(function (err) {
        setPill($("api-state"), "bad", "unreachable");
        showBanner("The API did not answer: " + err);
      })
      .then(function () { pollTimer = setTimeout(poll, POLL_MS); });
  }

  // --- live stream ----------------------------------------------------------------------------

  // Seed 000's colour table: connection blue, handoff orange, tool execution green,
  // MCP event purple, error red; anything else neutral.
  function familyOf(frame) {
    var type = String(frame.type || "");
    var data = frame.data && typeof frame.data === "object" ? frame.data : {};
    if (type === "error" || /error|fail/.test(type) || data.status === "error" ||
        data.status === "failed" || data.success === false) {
      return "error";
    }
    if (/^(connection|connect|disconnect|subscribed|unsubscribed|pong|ping|heartbeat|status_response)/
        .test(type)) {
      return "connection";
    }
    if (/^handoff/.test(type)) { return "handoff"; }
    if (/^(mcp_)?tool/.test(type) || type === "tool_execution") { return "tool"; }
    if (/^mcp/.test(type)) { return "mcp"; }
    return "other";
  }

  function summarise(frame) {
    var data = frame.data;
    var text;
    if (data && typeof data === "object") {
      if (typeof data.content === "string") {
        text = data.content;
      } else if (typeof data.message === "string") {
        text = data.message;
      } else {
        text = JSON.stringify(data);
      }
    } else {
      text = JSON.stringify(frame);
    }
    return text.length > 240 ? text.slice(0, 240) + "…" : text;
  }

  function addFrame(frame, raw) {
    var list = $("stream");
    var family = familyOf(frame);
    var li = el("li", "frame family-" + family);
    li.dataset.type = String(frame.type || "");
    li.dataset.family = family;
    var head = el("div", "frame-head");
    head.appendChild(el("time", "frame-time", clock(new Date())));
    head.appendChild(el("span", "badge", frame.type || "(no type)"));
    if (frame.seq !== undefined) { head.appendChild(el("span", "seq", "#" + frame.seq)); }
    if (frame.channel) { head.appendChild(el("span", "channel", frame.channel)); }
    head.appendChild(el("span", "frame-summary", summarise(frame)));
    li.appendChild(head);
    var details = el("details");
    details.appendChild(el("summary", null, "JSON"));
    var pretty;
    try { pretty = JSON.stringify(frame, null, 2); } catch (e) { pretty = raw; }
    details.appendChild(el("pre", null, pretty));
    li.appendChild(details);
    list.insertBefore(li, list.firstChild);
    while (list.childNodes.length > MAX_FRAMES) { list.removeChild(list.lastChild); }
  }

  var ws = null;
  var wantStream = false;
  var session = null;      // {client_id, session_token} from connection_established
  var lastSeq = 0;
  var retryMs = 500;
  var retryTimer = null;

  function defaultWsUrl() {
    var meta = document.querySelector('meta[name="switchboard-ws-port"]');
    var port = meta && /^\d+$/.test(meta.content) ? meta.content : "9004";
    var scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    var host = window.location.hostname || "127.0.0.1";
    if (host.indexOf(":") >= 0) { host = "[" + host + "]"; }
    return scheme + "//" + host + ":" + port + "/ws?client_type=dashboard";
  }

  function streamUrl(base) {
    if (!session) { return base; }
    var url = new URL(base, window.location.href);
    url.searchParams.set("client_id", session.client_id);
    url.searchParams.set("session_token", session.session_token);
    url.searchParams.set("last_seq", String(lastSeq));
    return url.toString();
  }

  function openStream() {
    clearTimeout(retryTimer);
    var base = $("ws-url").value.trim();
    var socket;
    try {
      socket = new WebSocket(streamUrl(base));
    } catch (err) {
      setPill($("ws-state"), "bad", "bad URL");
      addFrame({ type: "error", data: { message: "cannot open " + base + ": " + err } }, "");
      wantStream = false;
      $("ws-connect").textContent = "Connect";
      return;
    }
    ws = socket;
    setPill($("ws-state"), "idle", "connecting…");
    socket.onopen = function () {
      retryMs = 500;
      setPill($("ws-state"), "ok", "connected");
    };
    socket.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) {
        frame = { type: "error", data: { message: "not JSON: " + String(event.data) } };
      }
      if (!frame || typeof frame !== "object") { return; }
      if (typeof frame.seq === "number" && frame.seq > lastSeq) { lastSeq = frame.seq; }
      if (frame.type === "connection_established" && frame.data) {
        if (!frame.data.resumed) { lastSeq = 0; }
        session = { client_id: frame.data.client_id, session_token: frame.data.session_token };
        socket.send(JSON.stringify({ type: "subscribe", data: { channel: "tool_activity" } }));
      }
      addFrame(frame, event.data);
    };
    socket.onclose = function (event) {
      if (ws !== socket) { return; }
      ws = null;
      addFrame({ type: "disconnected", data: { code: event.code, reason: event.reason } }, "");
      if (event.code === 4003) { session = null; }
      if (wantStream && !NO_RECONNECT[event.code]) {
        setPill($("ws-state"), "idle", "reconnecting…");
        retryTimer = setTimeout(openStream, retryMs);
        retryMs = Math.min(retryMs * 2, 10000);
      } else {
        wantStream = false;
        $("ws-connect").textContent = "Connect";
        setPill($("ws-state"), "idle", "disconnected (" + event.code + ")");
      }
    };
  }

  function toggleStream(event) {
    event.preventDefault();
    storageSet(WS_URL_KEY, $("ws-url").value.trim());
    if (wantStream) {
      wantStream = false;
      clearTimeout(retryTimer);
      $("ws-connect").textContent = "Connect";
      if (ws) { ws.close(1000, "dashboard disconnected"); }
      session = null;
      return;
    }
    wantStream = true;
    session = null;
    lastSeq = 0;
    $("ws-connect").textContent = "Disconnect";
    openStream();
  }

  // --- forms ----------------------------------------------------------------------------------

  function showResult(node, answer) {
    node.hidden = false;
    node.className = "result " + (answer.ok ? "result-ok" : "result-error");
    var body = typeof answer.body === "string" ? answer.body
      : JSON.stringify(answer.body, null, 2);
    node.textContent = "HTTP " + answer.status + "\n" + body;
  }

  function showLocalError(node, message) {
    node.hidden = false;
    node.className = "result result-error";
    node.textContent = message;
  }

  function parseObject(text, name) {
    var trimmed = text.trim();
    if (!trimmed) { return {}; }
    var value = JSON.parse(trimmed);
    if (!value || typeof value !== "object" || Array.isArray(value)) {
      throw new Error(name + " must be a JSON object");
    }
    return value;
  }

  function submitting(form, promise) {
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    return promise.then(function () { button.disabled = false; },
                        function () { button.disabled = false; });
  }

  function onSend(event) {
    event.preventDefault();
    var result = $("send-result");
    var body = { client_id: $("send-client").value.trim(), content: $("send-content").value };
    var type = $("send-type").value.trim();
    if (type) { body.message_type = type; }
    submitting(event.target, api("POST", "/send_message", body).then(function (answer) {
      showResult(result, answer);
      poll();
    }, function (err) { showLocalError(result, String(err)); }));
  }

  function onBroadcast(event) {
    event.preventDefault();
    var result = $("broadcast-result");
    var body;
    try {
      body = { message_type: $("broadcast-type").value.trim(),
               data: parseObject($("broadcast-data").value, "data") };
    } catch (err) {
      showLocalError(result, "data: " + err.message);
      return;
    }
    var channel = $("broadcast-channel").value.trim();
    var clientType = $("broadcast-client-type").value.trim();
    if (channel) { body.channel = channel; }
    if (clientType) { body.client_type = clientType; }
    submitting(event.target, api("POST", "/broadcast", body).then(function (answer) {
      showResult(result, answer);
    }, function (err) { showLocalError(result, String(err)); }));
  }

  function onTool(event) {
    event.preventDefault();
    var result = $("tool-result");
    var body;
    try {
      body = { client_id: $("tool-client").value.trim(), tool_name: $("tool-name").value.trim(),
               params: parseObject($("tool-params").value, "params") };
    } catch (err) {
      showLocalError(result, "params: " + err.message);
      return;
    }
    var timeout = parseFloat($("tool-timeout").value);
    if (timeout > 0) { body.timeout = timeout; }
    result.hidden = false;
    result.className = "result";
    result.textContent = "waiting for the client's tool_result…";
    submitting(event.target, api("POST", "/call_tool", body).then(function (answer) {
      showResult(result, answer);
    }, function (err) { showLocalError(result, String(err)); }));
  }

  function onToken(event) {
    event.preventDefault();
    token = $("token").value.trim();
    storageSet(TOKEN_KEY, token);
    poll();
  }

  // --- start ----------------------------------------------------------------------------------

  function start() {
    $("token").value = token;
    var params = new URLSearchParams(window.location.search);
    $("ws-url").value = params.get("ws") || storageGet(WS_URL_KEY) || defaultWsUrl();
    $("token-form").addEventListener("submit", onToken);
    $("ws-form").addEventListener("submit", toggleStream);
    $("stream-clear").addEventListener("click", function () { $("stream").replaceChildren(); });
    $("send-form").addEventListener("submit", onSend);
    $("broadcast-form").addEventListener("submit", onBroadcast);
    $("tool-form").addEventListener("submit", onTool);
    poll();
    if (params.get("stream") !== "off") {
      wantStream = true;
      $("ws-connect").textContent = "Disconnect";
      openStream();
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
