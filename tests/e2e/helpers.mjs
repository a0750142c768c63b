// Shared helpers for the end-to-end suite: the real gateway binary as a child process,
// the official socket.io-client, and the real grpcurl.
//
// Environment:
//   GATEWAY_BIN  path of the gateway binary (default: <repo>/target/debug/messaging-gateway).
//                Started as `GATEWAY_BIN --http-addr 127.0.0.1:H --grpc-addr 127.0.0.1:G [extra]`.
//   GATEWAY_CMD  optional: a /bin/sh command line to start some other server instead of
//                GATEWAY_BIN (used to check the harness against another implementation).
//                It gets GATEWAY_HTTP_PORT, GATEWAY_GRPC_PORT, GATEWAY_HTTP_ADDR and
//                GATEWAY_GRPC_ADDR in its environment and should `exec` the server so
//                that SIGTERM reaches it. Tests that check the binary's command line are
//                skipped then.
//   GRPCURL      path of the grpcurl binary (default: `grpcurl` on PATH).
//   GRPCURL_EXTRA_ARGS  optional, whitespace-separated arguments put before every grpcurl
//                call (e.g. "-import-path DIR -proto messaging.proto" to use a proto file
//                instead of server reflection when checking the harness against a server
//                whose reflection grpcurl cannot use).
import assert from "node:assert/strict";
import { before, after, test } from "node:test";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { io } from "socket.io-client";

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const GATEWAY_BIN = path.resolve(
  REPO_ROOT,
  process.env.GATEWAY_BIN || "target/debug/messaging-gateway",
);
export const GATEWAY_CMD = process.env.GATEWAY_CMD || "";
export const USING_BINARY = GATEWAY_CMD === "";
export const GRPCURL = process.env.GRPCURL || "grpcurl";
const GRPCURL_EXTRA_ARGS = (process.env.GRPCURL_EXTRA_ARGS || "").split(/\s+/).filter(Boolean);

/** Debian's chromium, driven by playwright-core (which cannot download a browser here). */
export const CHROMIUM_BIN = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/**
 * Starts headless Chromium through `start(timeoutMs)` (a playwright launch), and once more if
 * that start fails: on a fresh clone Chromium's first start once took over 30 s, and with it
 * every browser test of the file failed.
 */
export async function launchChromium(start) {
  const TIMEOUT_MS = 45_000;
  try {
    return await start(TIMEOUT_MS);
  } catch (err) {
    console.log(`# Chromium did not start (${err.message.split("\n")[0]}); trying once more`);
    return await start(TIMEOUT_MS);
  }
}

/** Default bound for every wait in the suite. */
export const WAIT_MS = 5_000;
/** Bound for the gateway's ports to accept connections after spawn. */
export const STARTUP_MS = 20_000;
/** Bound for the gateway to exit after SIGTERM. */
export const SHUTDOWN_MS = 5_000;

// ---------------------------------------------------------------------------------------
// Child processes: every process spawned here is killed when this test process ends,
// whatever the reason.
const children = new Set();
function killAllChildren() {
  for (const child of children) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
  children.clear();
}
process.on("exit", killAllChildren);

/** Adds a child process to those SIGKILLed when this test process ends; returns it. */
export function track(child) {
  children.add(child);
  child.once("exit", () => children.delete(child));
  child.once("error", () => children.delete(child));
  return child;
}
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => {
    killAllChildren();
    process.exit(128 + (sig === "SIGINT" ? 2 : sig === "SIGTERM" ? 15 : 1));
  });
}

// ---------------------------------------------------------------------------------------
// Ports

/** Free TCP ports on 127.0.0.1, distinct from each other (bind :0, read, close). */
export async function freePorts(count) {
  const servers = [];
  try {
    for (let i = 0; i < count; i++) {
      const srv = net.createServer();
      await new Promise((resolve, reject) => {
        srv.once("error", reject);
        srv.listen(0, "127.0.0.1", resolve);
      });
      servers.push(srv);
    }
    return servers.map((s) => s.address().port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(() => r()))));
  }
}

export async function freePort() {
  return (await freePorts(1))[0];
}

/** Resolves true once a TCP connection to host:port succeeds. */
function tryConnect(port, host = "127.0.0.1") {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host });
    const done = (ok) => {
      sock.removeAllListeners();
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1_000, () => done(false));
    sock.once("connect", () => done(true));
    sock.once("error", () => done(false));
  });
}

/**
 * Waits until 127.0.0.1:port accepts TCP connections, at most timeoutMs.
 * `isDead()` aborts the wait early (e.g. the server process exited).
 */
export async function waitPort(port, timeoutMs = STARTUP_MS, isDead = () => null) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const dead = isDead();
    if (dead) throw new Error(`server exited before port ${port} opened: ${dead}`);
    if (await tryConnect(port)) return;
    await sleep(50);
  }
  throw new Error(`port ${port} did not accept connections within ${timeoutMs} ms`);
}

// ---------------------------------------------------------------------------------------
// The gateway process

/**
 * Starts the gateway on free ports and waits until both ports accept connections.
 * Returns { httpPort, grpcPort, url, grpcAddr, child, logs(), stop(), kill(), exited }.
 */
export async function startGateway({ extraArgs = [], env = {}, addrVia = "flags", httpPort, grpcPort } = {}) {
  if (!httpPort || !grpcPort) [httpPort, grpcPort] = await freePorts(2);
  const httpAddr = `127.0.0.1:${httpPort}`;
  const grpcAddr = `127.0.0.1:${grpcPort}`;
  // The gateway reads GATEWAY_* variables as configuration: none leaks in from outside.
  const baseEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("GATEWAY_")));
  const childEnv = {
    ...baseEnv,
    RUST_LOG: process.env.RUST_LOG || "info",
    ...env,
  };
  let child;
  if (USING_BINARY) {
    // addrVia "env": the addresses go through GATEWAY_HTTP_ADDR / GATEWAY_GRPC_ADDR.
    const addrArgs = addrVia === "env" ? [] : ["--http-addr", httpAddr, "--grpc-addr", grpcAddr];
    const addrEnv = addrVia === "env" ? { GATEWAY_HTTP_ADDR: httpAddr, GATEWAY_GRPC_ADDR: grpcAddr } : {};
    child = spawn(GATEWAY_BIN, [...addrArgs, ...extraArgs], {
      env: { ...childEnv, ...addrEnv },
      stdio: ["ignore", "pipe", "pipe"],
    });
  } else {
    child = spawn("/bin/sh", ["-c", GATEWAY_CMD], {
      env: {
        ...childEnv,
        GATEWAY_HTTP_PORT: String(httpPort),
        GATEWAY_GRPC_PORT: String(grpcPort),
        GATEWAY_HTTP_ADDR: httpAddr,
        GATEWAY_GRPC_ADDR: grpcAddr,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
  }
  children.add(child);

  let output = "";
  const append = (chunk) => {
    output += chunk.toString();
    if (output.length > 200_000) output = output.slice(-100_000);
  };
  child.stdout.on("data", append);
  child.stderr.on("data", append);

  let exitInfo = null;
  const exited = new Promise((resolve) => {
    child.once("error", (err) => {
      exitInfo = { code: null, signal: null, error: err };
      children.delete(child);
      resolve(exitInfo);
    });
    child.once("exit", (code, signal) => {
      exitInfo = { code, signal };
      children.delete(child);
      resolve(exitInfo);
    });
  });
  const deadReason = () =>
    exitInfo &&
    (exitInfo.error
      ? String(exitInfo.error)
      : `code=${exitInfo.code} signal=${exitInfo.signal}\n--- output ---\n${output}`);

  const gw = {
    httpPort,
    grpcPort,
    httpAddr,
    grpcAddr,
    url: `http://${httpAddr}`,
    child,
    exited,
    logs: () => output,
    get exitInfo() {
      return exitInfo;
    },
    /**
     * Sends SIGTERM and waits for the exit, at most timeoutMs. Resolves with
     * { code, signal, ms }; { timedOut: true } if it had not exited by then (it is then
     * SIGKILLed).
     */
    async stop(timeoutMs = SHUTDOWN_MS) {
      if (exitInfo) return { ...exitInfo, ms: 0, alreadyExited: true };
      const t0 = Date.now();
      child.kill("SIGTERM");
      const res = await Promise.race([exited, sleep(timeoutMs).then(() => null)]);
      if (!res) {
        child.kill("SIGKILL");
        await exited;
        return { timedOut: true, ms: Date.now() - t0 };
      }
      return { ...res, ms: Date.now() - t0 };
    },
    /** SIGKILL, no questions asked (cleanup path). */
    async kill() {
      if (!exitInfo) {
        child.kill("SIGKILL");
        await exited;
      }
    },
  };

  try {
    await waitPort(httpPort, STARTUP_MS, deadReason);
    await waitPort(grpcPort, STARTUP_MS, deadReason);
  } catch (err) {
    await gw.kill();
    err.message += `\n--- gateway output ---\n${output}`;
    throw err;
  }
  return gw;
}

/**
 * Sends SIGTERM and asserts that the gateway exits with code 0 within SHUTDOWN_MS.
 * Returns the stop() result.
 */
export async function stopAndAssertClean(gw) {
  const res = await gw.stop(SHUTDOWN_MS);
  const ctx = `stop result ${JSON.stringify(res)}\n--- gateway output ---\n${gw.logs()}`;
  assert.ok(!res.alreadyExited, `gateway had already exited before SIGTERM: ${ctx}`);
  assert.ok(!res.timedOut, `gateway did not exit within ${SHUTDOWN_MS} ms of SIGTERM: ${ctx}`);
  assert.equal(res.signal, null, `gateway died of a signal: ${ctx}`);
  assert.equal(res.code, 0, `gateway exit code: ${ctx}`);
  return res;
}

/**
 * One gateway for the enclosing test file or describe(): started in before(), SIGKILLed in
 * after() together with every client pushed to `clients`.
 *
 * `options` go to startGateway; a function is called in before() for them (for arguments
 * only known then, e.g. a port opened by another hook).
 * Returns { gw, clients, testCleanExit }:
 *   gw             the running gateway (every property forwards to startGateway's result;
 *                  read it inside tests and hooks, not at module level),
 *   clients        push every Client here so that after() closes it,
 *   testCleanExit  adds the test that closes the clients and asserts that SIGTERM makes the
 *                  gateway exit 0 within SHUTDOWN_MS: call it after the other tests.
 */
export function gatewayForSuite(options = {}) {
  let current = null;
  const clients = [];
  const gw = new Proxy(Object.create(null), {
    get(_target, key) {
      if (key === "then" || typeof key === "symbol") return undefined;
      if (!current) throw new Error(`the suite's gateway is not running (read gw.${key} in a test or hook)`);
      return current[key];
    },
  });
  before(async () => {
    current = await startGateway(typeof options === "function" ? await options() : options);
  });
  after(async () => {
    closeAll(clients);
    await current?.kill();
  });
  const testCleanExit = () =>
    test(`exits 0 within ${SHUTDOWN_MS / 1000} s of SIGTERM`, async () => {
      closeAll(clients);
      await stopAndAssertClean(gw);
    });
  return { gw, clients, testCleanExit };
}

// ---------------------------------------------------------------------------------------
// grpcurl

/**
 * Runs `cmd args` (no shell); resolves { code, signal, stdout, stderr, args } (never rejects
 * on a non-zero exit). Bounded by timeoutMs (then the process is killed and code is null).
 * `input` is written to its stdin; `env` replaces the environment, `cwd` the directory.
 */
export function runCommand(cmd, args, { timeoutMs = 15_000, input, env, cwd } = {}) {
  return new Promise((resolve, reject) => {
    const child = track(spawn(cmd, args, { env, cwd, stdio: [input === undefined ? "ignore" : "pipe", "pipe", "pipe"] }));
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c) => (stdout += c.toString()));
    child.stderr.on("data", (c) => (stderr += c.toString()));
    if (input !== undefined) child.stdin.end(input);
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${cmd}: ${err.message}`));
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, args });
    });
  });
}

/** Runs grpcurl with args, like runCommand. */
export function runGrpcurl(args, options = {}) {
  return runCommand(GRPCURL, [...GRPCURL_EXTRA_ARGS, ...args], options);
}

/**
 * Calls a unary method with grpcurl (-plaintext, request JSON on -d). Resolves
 * { code, stdout, stderr, json } where json is the parsed response on success.
 */
export async function grpcCall(addr, method, request = {}, { timeoutMs, inline = false } = {}) {
  const body = typeof request === "string" ? request : JSON.stringify(request);
  // By default the request goes through stdin (-d @): no limit on its size. inline: as
  // the argument of -d, the way an operator types it.
  const res = inline
    ? await runGrpcurl(["-plaintext", "-max-time", "10", "-d", body, addr, method], { timeoutMs })
    : await runGrpcurl(["-plaintext", "-max-time", "10", "-d", "@", addr, method], { timeoutMs, input: body });
  if (res.code === 0) {
    try {
      res.json = JSON.parse(res.stdout);
    } catch (err) {
      throw new Error(`grpcurl printed non-JSON output: ${JSON.stringify(res.stdout)} (${err.message})`);
    }
  }
  return res;
}

/** Like grpcCall but fails (throws with grpcurl's stderr) unless grpcurl exits 0. */
export async function grpcOk(addr, method, request = {}) {
  const res = await grpcCall(addr, method, request);
  if (res.code !== 0) {
    throw new Error(`grpcurl ${method} exited ${res.code}: ${res.stderr.trim()}`);
  }
  return res.json;
}

export function sendDirect(addr, req) {
  return grpcOk(addr, "messaging.v1.Messaging/SendDirect", req);
}

/** grpcurl omits zero-valued fields: `{}` means delivered_sockets = 0. */
export function delivered(resp) {
  return resp.deliveredSockets ?? 0;
}

/** All pages of ListOnline with the given page size: { ids, pages, totals }. */
export async function listOnlineAll(addr, pageSize = 1000, maxPages = 1000) {
  const ids = [];
  const pages = [];
  let token = "";
  for (let i = 0; i < maxPages; i++) {
    const req = { page_size: pageSize };
    if (token) req.page_token = token;
    const resp = await grpcOk(addr, "messaging.v1.Messaging/ListOnline", req);
    pages.push(resp);
    ids.push(...(resp.userIds ?? []));
    token = resp.nextPageToken ?? "";
    if (!token) return { ids, pages };
  }
  throw new Error(`ListOnline did not end within ${maxPages} pages`);
}

/** Polls ListOnline until pred(ids) holds, at most timeoutMs; returns the ids. */
export async function waitOnline(addr, pred, timeoutMs = WAIT_MS, what = "ListOnline condition") {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = (await listOnlineAll(addr)).ids;
    if (pred(last)) return last;
    if (Date.now() > deadline) {
      throw new Error(`${what} not met within ${timeoutMs} ms; last ListOnline: ${JSON.stringify(last)}`);
    }
    await sleep(50);
  }
}

// ---------------------------------------------------------------------------------------
// socket.io-client

const RESERVED_CLIENT_EVENTS = ["connect", "connect_error", "disconnect"];

/**
 * A socket.io-client socket that records every event it receives (with its arguments
 * and arrival time) from creation on, so that no event is missed between connecting and
 * starting to wait. No automatic reconnection.
 */
export class Client {
  constructor(url, { userId, auth, query, transports = ["websocket"], ...rest } = {}) {
    const q = { ...(query ?? {}) };
    if (userId !== undefined) q.userId = userId;
    this.events = [];
    this.waiters = new Set();
    this.socket = io(url, {
      path: "/socket.io/",
      transports,
      query: q,
      auth,
      autoConnect: false,
      reconnection: false,
      forceNew: true,
      timeout: WAIT_MS,
      ...rest,
    });
    const record = (event, args, offset) => {
      this.events.push({ event, args, offset, at: Date.now() });
      for (const w of [...this.waiters]) w();
    };
    // With connection state recovery (the gateway's default) every event the gateway emits
    // carries its offset as its last argument, except one asking for an ack (socket.io-client
    // reads it the same way: a string last argument once the CONNECT gave a pid). `args` are
    // the event's own arguments; `offset` is kept apart, and its absence is recorded.
    this.socket.onAny((event, ...args) => {
      if (!this.socket._pid || typeof args[args.length - 1] === "function") return record(event, args);
      const offset = args[args.length - 1];
      if (typeof offset !== "string") {
        throw new Error(`event ${event} without an offset from a gateway that announced a pid: ${JSON.stringify(args)}`);
      }
      record(event, args.slice(0, -1), offset);
    });
    for (const ev of RESERVED_CLIENT_EVENTS) this.socket.on(ev, (...args) => record(ev, args));
  }

  /** Connects; resolves on `connect`, rejects with the connect_error or on timeout. */
  async connect(timeoutMs = WAIT_MS) {
    const since = this.events.length;
    this.socket.connect();
    const ev = await this.waitFor(["connect", "connect_error"], { since, timeoutMs });
    if (ev.event === "connect_error") {
      const err = ev.args[0];
      throw Object.assign(new Error(`connect_error: ${err && err.message}`), { cause: err });
    }
    return this;
  }

  /** Index to pass as `since` to only look at events received from now on. */
  mark() {
    return this.events.length;
  }

  /** Events named `event` received so far (optionally since a mark). */
  received(event, since = 0) {
    return this.events.slice(since).filter((e) => e.event === event);
  }

  /**
   * Resolves with the first recorded event (index >= since) whose name is `event` (or in
   * the array `event`) and for which pred(args) holds; rejects after timeoutMs.
   */
  waitFor(event, { pred = () => true, since = 0, timeoutMs = WAIT_MS } = {}) {
    const names = Array.isArray(event) ? event : [event];
    return new Promise((resolve, reject) => {
      let i = since;
      const check = () => {
        for (; i < this.events.length; i++) {
          const e = this.events[i];
          if (names.includes(e.event) && pred(e.args, e)) {
            cleanup();
            resolve(e);
            return true;
          }
        }
        return false;
      };
      const timer = setTimeout(() => {
        cleanup();
        const seen = this.events.map((e) => e.event).join(", ");
        reject(new Error(`no ${names.join("|")} matching within ${timeoutMs} ms (events seen: ${seen || "none"})`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  /** Waits for a getOnlineUsers list for which pred(list) holds. */
  async waitOnlineUsers(pred, opts = {}) {
    const e = await this.waitFor("getOnlineUsers", {
      ...opts,
      pred: (args) => Array.isArray(args[0]) && pred(args[0]),
    });
    return e.args[0];
  }

  /**
   * The online set a `presence: "changes"` client reconstructs from its events (optionally up
   * to index `end`): the last getOnlineUsers list plus every onlineUsersChanged after it.
   * Throws when a change set does not apply to the set held (a user listed online who already
   * was, or offline who was not) or its ids are not sorted: the gateway sent it on a wrong base.
   */
  changesSet(end = this.events.length) {
    let set;
    for (const e of this.events.slice(0, end)) {
      if (e.event === "getOnlineUsers") {
        set = new Set(e.args[0]);
      } else if (e.event === "onlineUsersChanged") {
        const { online, offline } = e.args[0];
        if (!set) throw new Error(`onlineUsersChanged before any getOnlineUsers: ${JSON.stringify(e.args[0])}`);
        for (const ids of [online, offline]) {
          if (ids.join("\n") !== [...ids].sort().join("\n")) throw new Error(`ids not sorted: ${JSON.stringify(ids)}`);
        }
        for (const id of online) {
          if (set.has(id)) throw new Error(`${id} came online but was already: ${JSON.stringify(e.args[0])}`);
          set.add(id);
        }
        for (const id of offline) {
          if (!set.delete(id)) throw new Error(`${id} went offline but was not online: ${JSON.stringify(e.args[0])}`);
        }
      }
    }
    return set;
  }

  /** Waits until the reconstructed `changes` set (see changesSet) satisfies pred; returns it. */
  async waitChangesSet(pred, { timeoutMs = WAIT_MS } = {}) {
    const e = await this.waitFor(["getOnlineUsers", "onlineUsersChanged"], {
      timeoutMs,
      pred: (_args, ev) => pred(this.changesSet(this.events.indexOf(ev) + 1)),
    });
    return this.changesSet(this.events.indexOf(e) + 1);
  }

  /** Latest getOnlineUsers list received, or undefined. */
  lastOnlineUsers() {
    const all = this.received("getOnlineUsers");
    return all.length ? all[all.length - 1].args[0] : undefined;
  }

  get connected() {
    return this.socket.connected;
  }

  close() {
    this.socket.disconnect();
  }
}

/** Creates and connects a client for userId (see Client for options). */
export async function connectUser(url, userId, opts = {}) {
  const c = new Client(url, { userId, ...opts });
  await c.connect();
  return c;
}

/** Closes every client given, ignoring errors. */
export function closeAll(clients) {
  for (const c of clients) {
    try {
      c.close();
    } catch {
      // ignore
    }
  }
}

/** An HS256 JWT signed with node:crypto; `header` adds parameters to its header. */
export function mintHs256(claims, secret, header = {}) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const input = `${b64({ alg: "HS256", typ: "JWT", ...header })}.${b64(claims)}`;
  return `${input}.${createHmac("sha256", secret).update(input).digest("base64url")}`;
}

export { sleep };
