// Test helpers: a real gateway process (run_websocket_server.py) on free loopback ports, a TCP
// proxy in front of it that a test can cut (a network failure, not a polite close), and
// bounded waits. Never a mock: the client is tested against the server it will talk to.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const API_TOKEN = "node-test-token-0123456789abcdef0123456789";

function python() {
  if (process.env.SWITCHBOARD_PYTHON) return process.env.SWITCHBOARD_PYTHON;
  const venv = path.join(ROOT, ".venv", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Poll `probe` (sync or async) until it returns a truthy value; fail after `timeout` ms. */
export async function until(probe, { timeout = 10000, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Gateway processes not yet exited: killed when the test file's process exits. */
const running = new Set();
process.on("exit", () => { for (const proc of running) proc.kill("SIGKILL"); });

/** A gateway process; `restart()` starts it again on the same ports (same environment). */
export class Gateway {
  constructor(env = {}) {
    this.env = env;
    this.dir = mkdtempSync(path.join(tmpdir(), "switchboard-js-"));
    this.logs = "";
  }

  async start() {
    this.wsPort ??= await freePort();
    this.apiPort ??= await freePort();
    const env = Object.fromEntries(Object.entries(process.env)
      .filter(([k]) => !k.startsWith("WS_") && !k.startsWith("API_")));
    Object.assign(env, {
      WS_HOST: "127.0.0.1", WS_PORT: String(this.wsPort), API_PORT: String(this.apiPort),
      API_TOKEN, LOG_LEVEL: "warning", SHUTDOWN_TIMEOUT: "3", ...this.env,
    });
    this.proc = spawn(python(), [path.join(ROOT, "run_websocket_server.py")],
                      { cwd: this.dir, env, stdio: ["ignore", "pipe", "pipe"] });
    this.proc.stdout.on("data", (d) => { this.logs += d; });
    this.proc.stderr.on("data", (d) => { this.logs += d; });
    // A test that fails (or times out, --test-timeout) before its gateway.stop() must not keep
    // the test file alive through the child's pipes: nothing here holds the event loop open,
    // and whatever is still running when the file exits is killed.
    this.proc.unref();
    this.proc.stdout.unref();
    this.proc.stderr.unref();
    const proc = this.proc;
    running.add(proc);
    proc.once("exit", () => running.delete(proc));
    const exited = new Promise((resolve) => this.proc.once("exit", resolve));
    this.exited = exited;
    await until(async () => {
      if (this.proc.exitCode !== null) throw new Error(`gateway exited:\n${this.logs}`);
      try { return (await fetch(`${this.api}/ready`)).status === 200; } catch { return false; }
    }, { timeout: 30000, what: `gateway /ready\n${this.logs}` });
    return this;
  }

  get ws() { return `ws://127.0.0.1:${this.wsPort}/`; }
  get api() { return `http://127.0.0.1:${this.apiPort}`; }

  /** Call the API; resolves {status, body}. */
  async call(method, route, body) {
    const init = { method, headers: { Authorization: `Bearer ${API_TOKEN}` } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(this.api + route, init);
    const text = await resp.text();
    let parsed = text;
    try { parsed = JSON.parse(text); } catch { /* text */ }
    return { status: resp.status, body: parsed };
  }

  /** SIGTERM (sockets closed with 1001) and wait for the exit. */
  async stop() {
    if (this.proc && this.proc.exitCode === null) {
      this.proc.kill("SIGTERM");
      const alive = setInterval(() => {}, 1000); // the child is unref'd: wait for it here
      try { await this.exited; } finally { clearInterval(alive); }
    }
  }

  async restart() {
    await this.stop();
    return this.start();
  }
}

/** A TCP proxy: `cut()` resets every open connection (the client sees the socket drop with
 * no close frame); `freeze()` stops forwarding but keeps the sockets open (a dead network). */
export class Proxy {
  constructor(target) {
    this.target = target;
    this.pairs = new Set();
    this.frozen = false;
  }

  async start() {
    this.server = net.createServer((client) => {
      const upstream = net.connect(this.target(), "127.0.0.1");
      const pair = { client, upstream };
      this.pairs.add(pair);
      const forward = (from, to) => from.on("data", (chunk) => { if (!this.frozen) to.write(chunk); });
      forward(client, upstream);
      forward(upstream, client);
      const end = () => { this.pairs.delete(pair); client.destroy(); upstream.destroy(); };
      client.on("error", end).on("close", end);
      upstream.on("error", end).on("close", end);
    });
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = this.server.address().port;
    return this;
  }

  get ws() { return `ws://127.0.0.1:${this.port}/`; }

  cut() {
    for (const { client, upstream } of this.pairs) {
      client.resetAndDestroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  freeze() { this.frozen = true; }
  thaw() { this.frozen = false; }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

export const scenarios = JSON.parse(readFileSync(path.join(ROOT, "clients", "scenarios.json"), "utf8"));

/** An HS256 JWT (WS_AUTH=jwt) for `sub`, expiring in `seconds`. */
export async function jwt(secret, sub, seconds) {
  const { createHmac } = await import("node:crypto");
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + seconds })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}
