// What the connection state recovery tests share (recovery*.test.mjs): a tab (the official
// socket.io-client with its own reconnection on) whose network can be dropped and held away,
// the gRPC calls through @grpc/grpc-js (50 sends in well under a second, where 50 grpcurl
// processes take seconds), and the Prometheus samples the tests watch.
import assert from "node:assert/strict";
import { after, before } from "node:test";
import { Client, WAIT_MS, freePort, gatewayForSuite, sleep } from "./helpers.mjs";
import { grpcClient, listOnline, unary } from "./soak/wire.mjs";
import { until } from "./cluster_infra.mjs";
import { toValue } from "../../examples/node/value.mjs";

export { grpcClient, toValue, unary, until };

/** SendDirect answers: one live socket took it; one away socket kept it; nobody. */
export const LIVE = { delivered: 1, pending: 0, acked: 0 };
export const AWAY = { delivered: 0, pending: 1, acked: 0 };
export const NOBODY = { delivered: 0, pending: 0, acked: 0 };
export const AWAY_GAUGE = "gateway_recovery_sessions_away";

/** Reconnection as fast as the official client allows: each case stays within seconds. */
export const RECONNECT = { reconnection: true, reconnectionDelay: 50, reconnectionDelayMax: 100, randomizationFactor: 0 };
/** How long a test watches for something that must not arrive. */
export const QUIET_MS = 300;
/** Socket.IO packet types (socket.io-parser). */
const CONNECT = 0;

/**
 * gatewayForSuite with `extraArgs` and a metrics address, plus a gRPC client for it.
 * Returns what gatewayForSuite does, and metrics() (the /metrics URL) and rpc() (the client).
 */
export function recoverySuite(extraArgs = []) {
  let metricsUrl;
  let rpc;
  const suite = gatewayForSuite(async () => {
    const port = await freePort();
    metricsUrl = `http://127.0.0.1:${port}/metrics`;
    return { extraArgs: [...extraArgs, "--metrics-addr", `127.0.0.1:${port}`] };
  });
  before(() => {
    rpc = grpcClient(suite.gw.grpcAddr);
  });
  after(() => rpc?.close());
  const metrics = () => metricsUrl;
  const gateway = () => ({ url: suite.gw.url, metricsUrl, rpc, clients: suite.clients });
  return { ...suite, metrics, rpc: () => rpc, gateway };
}

/**
 * A URL nothing listens on: a held-away tab's reconnection attempts go there and are refused,
 * as when the network is down, until the tab is let back.
 */
export async function deadUrl() {
  return `http://127.0.0.1:${await freePort()}`;
}

/**
 * A socket.io-client socket that reconnects by itself (RECONNECT). Besides what Client
 * records, it keeps every `connect` with the socket's id and `recovered` at that moment, and
 * the data of every CONNECT packet it sent and received (pid and offset travel there).
 */
export class Tab extends Client {
  constructor(url, opts = {}) {
    super(url, { ...RECONNECT, ...opts });
    this.url = url;
    /** One entry per `connect`: { id, recovered }. */
    this.connects = [];
    /** The data of each CONNECT packet sent (the auth, plus pid and offset on a recovery). */
    this.sentConnects = [];
    /** The data of each CONNECT packet received ({ sid, pid? }). */
    this.gotConnects = [];
    const manager = this.socket.io;
    this.socket.on("connect", () => this.connects.push({ id: this.socket.id, recovered: this.socket.recovered }));
    manager.on("packet", (p) => p.type === CONNECT && this.gotConnects.push(p.data));
    const send = manager._packet.bind(manager);
    manager._packet = (p) => {
      // As it goes on the wire (JSON: an undefined offset is left out).
      if (p.type === CONNECT) this.sentConnects.push(JSON.parse(JSON.stringify(p.data ?? null)));
      return send(p);
    };
  }

  /** The private session id the gateway gave (socket.io-client keeps it for the reconnect). */
  get pid() {
    return this.socket._pid;
  }

  /** The offset of the last event received, as socket.io-client sends it back. */
  get lastOffset() {
    return this.socket._lastOffset;
  }

  /**
   * Drops the connection and keeps the tab away (its reconnection attempts are refused) until
   * letBack(). `how`: "close" closes the transport (socket.io.engine.close()); "tcp" destroys
   * the TCP socket under the WebSocket, with no close frame, as a dead network does.
   */
  async drop(how, away) {
    const engine = this.socket.io.engine;
    this.socket.io.uri = away;
    if (how === "close") {
      engine.close();
    } else if (how === "tcp") {
      assert.equal(engine.transport.name, "websocket", "a TCP drop needs the WebSocket transport");
      engine.transport.ws._socket.destroy();
    } else {
      throw new Error(`unknown drop ${how}`);
    }
    await this.waitFor("disconnect", { since: this.events.findLastIndex((e) => e.event === "connect") });
  }

  /** Lets the tab reconnect (to `url`, by default where it was); resolves on its `connect`. */
  async letBack(url = this.url, timeoutMs = WAIT_MS) {
    const since = this.mark();
    this.socket.io.uri = url;
    await this.waitFor("connect", { since, timeoutMs });
    return this.connects.at(-1);
  }

  /** The newMessage payloads received since `since`. */
  messages(since = 0) {
    return this.received("newMessage", since).map((e) => e.args[0]);
  }

  /** Waits until `count` newMessage arrived since `since`, then QUIET_MS more; returns them. */
  async settle(since, count, timeoutMs = WAIT_MS) {
    try {
      await this.waitFor("newMessage", { since, timeoutMs, pred: () => this.received("newMessage", since).length >= count });
    } catch (err) {
      err.message = `${count} newMessage expected, ${this.messages(since).length} came: ${JSON.stringify(this.messages(since))}`;
      throw err;
    }
    await sleep(QUIET_MS);
    return this.messages(since);
  }
}

/** Creates and connects a Tab; `list` collects it for the suite's cleanup. */
export async function openTab(url, userId, list, opts = {}) {
  const tab = new Tab(url, { userId, ...opts });
  list.push(tab);
  await tab.connect();
  return tab;
}

/**
 * Connects `user` to `at.url`, has it receive "before" (sent through `at.rpc`), drops it
 * (`how`, see Tab.drop) and waits until the gateway at `at.metricsUrl` holds its session
 * away. `at`: { url, metricsUrl, rpc, clients }; `beforeAnswer`: the counts expected for
 * "before" (other sockets of the user add to them). Returns { tab, id, pid, offset, since, away }
 * (`since`: the mark after "before"; `away`: the gauge before the drop).
 */
export async function droppedTab(at, user, { how = "close", tabOpts = {}, beforeAnswer = LIVE } = {}) {
  const tab = await openTab(at.url, user, at.clients, tabOpts);
  // Through another node of a cluster: once that node knows the user is online.
  await until(() => isOnline(at.rpc, user), (on) => on, WAIT_MS, `${user} in ListOnline where the sends go`);
  assertAnswers(await sendEach(at.rpc, user, ["before"]), beforeAnswer, "before the drop");
  assert.deepEqual(await tab.settle(0, 1), ["before"]);
  const since = tab.mark();
  const { id } = tab.socket;
  const { pid, lastOffset: offset } = tab;
  const away = await sample(at.metricsUrl, AWAY_GAUGE);
  await tab.drop(how, await deadUrl());
  await waitAway(at.metricsUrl, away + 1);
  return { tab, id, pid, offset, since, away };
}

/** 0, 1, ..., n-1: the indexes the tests send as messages. */
export const range = (n, from = 0) => Array.from({ length: n }, (_, i) => from + i);

/** The counts of a SendDirect answer (grpc-js with defaults: every field present). */
export function counts(resp) {
  return { delivered: resp.delivered_sockets, pending: resp.pending_sockets, acked: resp.acked_sockets };
}

/** Sends each message to `user` in order (each call awaited); returns the answers' counts. */
export async function sendEach(rpc, user, messages, extra = {}) {
  const answers = [];
  for (const message of messages) {
    answers.push(counts(await unary(rpc, "SendDirect", { receiver_id: user, message: toValue(message), ...extra })));
  }
  return answers;
}

/** Asserts that every answer has exactly the counts `want` (the whole list in the message). */
export function assertAnswers(answers, want, what) {
  assert.deepEqual(answers, answers.map(() => want), `${what}: ${JSON.stringify(answers)}`);
}

/** The sum of the samples of `name` whose labels include every `labels` pair (0 if none). */
export async function sample(metricsUrl, name, labels = {}) {
  const text = await (await fetch(metricsUrl)).text();
  let sum = 0;
  for (const m of text.matchAll(/^([a-z_:]+)(?:\{([^}]*)\})? (\S+)$/gm)) {
    if (m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[3]);
  }
  return sum;
}

/** gateway_recovery_attempts_total by outcome. */
export async function attempts(metricsUrl) {
  const out = {};
  for (const outcome of ["recovered", "unknown", "expired", "other_user", "gap"]) {
    out[outcome] = await sample(metricsUrl, "gateway_recovery_attempts_total", { outcome });
  }
  return out;
}

/** The change of every outcome between two attempts() readings (zeros left out). */
export function attemptsDelta(before, after) {
  return Object.fromEntries(Object.keys(after).map((k) => [k, after[k] - before[k]]).filter(([, d]) => d !== 0));
}

/** Waits until the gateway counts `count` sessions away (it saw the drop); returns the ms. */
export async function waitAway(metricsUrl, count, what = AWAY_GAUGE) {
  const { ms } = await until(() => sample(metricsUrl, AWAY_GAUGE), (v) => v === count, WAIT_MS, what);
  return ms;
}

/** Whether `user` is in ListOnline of the gateway `rpc` talks to. */
export async function isOnline(rpc, user) {
  return (await listOnline(rpc)).includes(user);
}

/**
 * The gRPC WatchPresence stream of the gateway `rpc` talks to: its changes (user, online)
 * collected in `changes`; `ready` resolves once the snapshot's last page came (the stream is
 * live: every later change is in `changes`); end() cancels it.
 */
export function watchPresence(rpc) {
  const changes = [];
  const call = rpc.WatchPresence({ snapshot: true });
  const ready = new Promise((resolve, reject) => {
    call.on("data", (item) => {
      if (item.snapshot?.last) resolve();
      if (item.change) changes.push({ user: item.change.user_id, online: item.change.online });
    });
    call.on("error", reject);
  });
  ready.catch(() => {}); // a cancel at the end, once nobody awaits it
  return { changes, ready, end: () => call.cancel() };
}
