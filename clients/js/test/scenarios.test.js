// The JS client against the behaviour scenarios both bundled clients share
// (clients/scenarios.json; the Python client's tests/client/test_scenarios.py reads the same
// file). Durations there are seconds; the JS client's are milliseconds.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  DEFAULT_REPLY_TYPES, Switchboard, backoffDelay, closeAction, connectQuery, memoryStorage,
} from "../switchboard.js";
import { scenarios } from "./_gateway.js";

class NoSocket { constructor() { throw new Error("scenarios open no socket"); } }

test("close code → action", () => {
  for (const { code, action, why } of scenarios.close_codes) {
    assert.equal(closeAction(code), action, `${code}: ${why}`);
  }
});

test("backoff delays", () => {
  const spec = scenarios.backoff;
  for (const [options, cases] of [[spec.options, spec.cases],
                                  [spec.half_jitter.options, spec.half_jitter.cases]]) {
    const ms = { initial: options.initial * 1000, max: options.maximum * 1000,
                 factor: options.factor, jitter: options.jitter };
    for (const c of cases) {
      const delay = backoffDelay(c.attempt, ms, () => c.random);
      assert.ok(Math.abs(delay - c.delay * 1000) < 1e-6, `${JSON.stringify(c)} → ${delay}`);
    }
  }
});

test("seq dedup", () => {
  for (const c of scenarios.dedup) {
    const sb = new Switchboard("ws://gw.invalid:9004/", { WebSocket: NoSocket, storage: memoryStorage() });
    sb.lastSeq = c.last_seq;
    const delivered = [];
    sb.on("message", (frame) => delivered.push(frame.seq ?? null));
    c.incoming.forEach((seq, n) => {
      const frame = { type: "message", data: { n }, message_id: `m${n}` };
      if (seq !== null) frame.seq = seq;
      sb._receive(frame);
    });
    assert.deepEqual(delivered, c.delivered, c.about);
    assert.equal(sb.lastSeq, c.last_seq_after);
    assert.equal(sb.stats.duplicatesDropped, c.dropped);
  }
});

test("resume query", () => {
  for (const c of scenarios.resume_query) {
    const s = c.state;
    assert.deepEqual(connectQuery({ clientId: s.client_id, clientType: s.client_type,
                                    sessionToken: s.session_token, lastSeq: s.last_seq,
                                    token: s.token }), c.query, c.about);
  }
});

test("reply types", () => {
  for (const [type, replies] of Object.entries(scenarios.reply_types)) {
    assert.deepEqual([...DEFAULT_REPLY_TYPES[type]].sort(), [...replies].sort(), type);
  }
});

test("what a greeting means", () => {
  for (const c of scenarios.greeting) {
    const storage = memoryStorage();
    const sb = new Switchboard("ws://gw.invalid:9004/", { WebSocket: NoSocket, storage });
    if (c.had_session) { sb.sessionToken = "old"; sb.lastSeq = 7; }
    const failed = [];
    sb.on("recovery_failed", (e) => failed.push(e.reason));
    sb._established({ type: "connection_established",
                      data: { client_id: "c", session_token: "new", resumed: c.resumed,
                              recovered: c.recovered, last_seq: 9 } });
    assert.deepEqual(failed, c.recovery_failed ? [c.recovery_failed] : [], c.about);
    assert.equal(sb.lastSeq, c.resumed ? 7 : 0, c.about);
    assert.equal(JSON.parse(storage.getItem(sb.storageKey)).sessionToken, "new");
  }
});
