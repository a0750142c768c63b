// One soak run (single node or a three-node cluster on Redis): the nodes, the load drivers
// that run all at once, the invariants checked while they run and once they stop, and the
// samples of each node's RSS and fds behind the report's chart. What was answered is judged
// in answers.mjs, presence as heard in presence.mjs, the faults and their probes in
// faults.mjs and probes.mjs, the tabs that drop and recover in dropping.mjs.
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import grpc from "@grpc/grpc-js";
import { io } from "socket.io-client";
import { toValue } from "../../../examples/node/value.mjs";
import { freePorts, startGateway } from "../helpers.mjs";
import { Answers } from "./answers.mjs";
import { checkDropping, checkExpiry, dropDrivers, openDroppingTabs } from "./dropping.mjs";
import { injectFaults } from "./faults.mjs";
import { onTabPresence, watchPresence } from "./presence.mjs";
import {
  CHURN_LOOPS,
  CLUSTER_TIMEOUT_MS,
  DRIVER_STOP_MS,
  DROPPING_USERS,
  FD_BOUND,
  FLOODERS,
  KEYS_PER_NODE,
  KEYS_PER_USER,
  LEASE_MS,
  RECOVERY_WINDOW_MS,
  RECONCILE_MS,
  RPC_DEADLINE_MS,
  RSS_BOUND_MIB,
  SLOW_READERS,
  STEADY_USERS,
  TABS_PER_USER,
} from "./shape.mjs";
import { closeTab, openTab, tabHadGap, waitUp } from "./tabs.mjs";
import { grpcClient, listOnline, rawWs, unary, wsFrame } from "./wire.mjs";

const log = (...a) => console.log(`[soak ${new Date().toISOString().slice(11, 19)}]`, ...a);

export class Run {
  /** plan: the cluster's faults (faults.mjs faultPlan), ignored for a single node. */
  constructor(mode, plan = []) {
    this.mode = mode;
    this.plan = mode === "cluster" ? plan : [];
    this.counts = {
      connects: 0,
      "churn: clean closes": 0,
      "churn: TCP dropped without a close": 0,
      "churn: TCP dropped during the namespace CONNECT": 0,
      "churn: connect failures": 0,
      "SendDirect calls": 0,
      "SendToUsers calls": 0,
      "SendStream items": 0,
      "messages to slow readers": 0,
      "messages checked per receiver": 0,
      "flood bursts": 0,
      "flooders cut off": 0,
      "hostile frames/requests": 0,
    };
    this.faults = [];
    this.breaches = [];
    this.inv = {}; // invariant -> { checked, breaches }
    this.samples = []; // { t, node, rss, fds, threads, redisKeys }
    this.stopping = false;
    this.answers = new Answers(this);
    this.allTabs = new Map(); // userId -> every tab it ever had
    this.unexpectedExits = 0;
    this.churnErrors = new Map(); // why a churn connect failed -> count
    this.hung = []; // load drivers that did not stop
    this.faultWindows = []; // [start, end] of each injected fault, ms since the epoch
    this.faultLog = []; // { label, start, end } of each injected fault
    this.freezes = []; // { node, start, end } of each node frozen
    this.byFault = new Map(); // fault label -> Map(invariant -> breaches)
    this.judgePresence = false;
    this.dropping = []; // the dropping users (dropping.mjs)
    this.droppingOffline = []; // { u, t, source } each time presence said one of them was offline
  }

  /** Counts one check of invariant `name`; a breach is filed under the fault `at`. */
  invariant(name, ok, detail, at = this.faultAt(Date.now())) {
    const e = (this.inv[name] ??= { checked: 0, breaches: 0 });
    e.checked += 1;
    if (!ok) {
      e.breaches += 1;
      const per = this.byFault.get(at) ?? this.byFault.set(at, new Map()).get(at);
      per.set(name, (per.get(name) ?? 0) + 1);
      const when = `t=${this.t.toFixed(1)} s`;
      if (this.breaches.length < 50) this.breaches.push(`${when} [${at}] ${name}: ${detail}`);
      log(`BREACH ${when} [${at}] ${name}: ${detail}`);
    }
  }

  bump(counter) {
    this.counts[counter] = (this.counts[counter] ?? 0) + 1;
  }

  /** Every tab userId ever had (the array the tabs file themselves in). */
  tabsOf(userId) {
    return this.allTabs.get(userId) ?? this.allTabs.set(userId, []).get(userId);
  }

  everyTab() {
    return [...this.allTabs.values()].flat();
  }

  // --- faults: their windows, for excusing what they legitimately cause -------------------

  beginFault(what) {
    const f = { label: `#${this.faultLog.length + 1} ${what}`, start: Date.now(), end: null };
    this.faultLog.push(f);
    this.faults.push(`t=${this.t.toFixed(0)} s: ${what}`);
    return f;
  }

  endFault(f) {
    f.end = Date.now();
    this.faultWindows.push([f.start, f.end]);
  }

  /** The fault that time t falls in or is still recovering from, for filing breaches. */
  faultAt(t) {
    const f = this.faultLog.findLast((x) => x.start <= t && t <= (x.end ?? Infinity) + 2 * LEASE_MS + RECONCILE_MS);
    return f?.label ?? "no fault under way";
  }

  /** Whether node was frozen (SIGSTOP) at any time in [from, to]. */
  frozenDuring(node, from, to) {
    return this.freezes.some((f) => f.node === node && f.start <= to && (f.end ?? Infinity) >= from);
  }

  /** The node for the k-th call of a lane: round robin over the nodes not frozen now. */
  liveNode(k) {
    const now = Date.now();
    const awake = this.nodes.map((_, i) => i).filter((i) => !this.frozenDuring(i, now, now));
    return awake[k % awake.length];
  }

  get t() {
    return (Date.now() - this.t0) / 1000;
  }

  // --- processes -----------------------------------------------------------------------

  async startNode(i) {
    const args = ["--metrics-addr", `127.0.0.1:${this.metricsPorts[i]}`, "--recovery-window-ms", String(RECOVERY_WINDOW_MS)];
    if (this.redis) {
      args.push("--redis-url", this.redis.url, "--node-id", `soak-${i}`, "--node-lease-ms", String(LEASE_MS));
      args.push("--cluster-timeout-ms", String(CLUSTER_TIMEOUT_MS));
    }
    const gw = await startGateway({
      extraArgs: args,
      httpPort: this.httpPorts[i],
      grpcPort: this.grpcPorts[i],
      env: { RUST_LOG: "warn" },
    });
    gw.expectedExit = false;
    gw.exited.then((info) => {
      if (!gw.expectedExit) {
        this.unexpectedExits += 1;
        this.invariant("no process crashed", false, `node ${i} exited: ${JSON.stringify(info)}\n${gw.logs().slice(-2000)}`);
      }
    });
    this.nodes[i] = gw;
    this.clients[i]?.close();
    this.clients[i] = grpcClient(gw.grpcAddr);
    return gw;
  }

  async start() {
    const n = this.mode === "cluster" ? 3 : 1;
    if (this.mode === "cluster") {
      const { startRedis } = await import("../cluster_infra.mjs");
      this.redis = await startRedis();
    }
    this.httpPorts = await freePorts(n);
    this.grpcPorts = await freePorts(n);
    this.metricsPorts = await freePorts(n);
    this.nodes = [];
    this.clients = [];
    for (let i = 0; i < n; i++) await this.startNode(i);
    this.t0 = Date.now();
  }

  nodeIndex(k) {
    return k % this.nodes.length;
  }

  // --- steady users: stay connected, receive everything, checked exactly ------------------

  async connectSteady() {
    this.steady = [];
    this.tabs = new Map(); // userId -> [tab], steady users only
    for (let u = 0; u < STEADY_USERS; u++) {
      const userId = `steady-${u}`;
      for (let k = 0; k < TABS_PER_USER; k++) {
        const lastSeq = new Map(); // lane -> last seq this tab got
        // Tabs of one user sit on different nodes in a cluster; presence heard both ways.
        openTab(this, {
          userId,
          node: this.nodeIndex(u + k),
          presence: k === 1 ? "changes" : "list",
          rejoin: true,
          onSoak: (tab, m) => {
            const last = lastSeq.get(m.lane) ?? -1;
            this.invariant("per-connection order", m.seq > last, `${userId} tab ${k}: lane ${m.lane} seq ${m.seq} after ${last}`);
            lastSeq.set(m.lane, m.seq);
          },
          onOnline: (tab, heard) => onTabPresence(this, tab, heard),
        });
      }
      this.tabs.set(userId, this.tabsOf(userId));
      this.steady.push(userId);
    }
    await waitUp([...this.tabs.values()].flat(), 30_000, "steady tabs");
  }

  /** Whether any tab of userId was down (or reconnecting) around [from, to]. */
  hadGap(userId, from, to) {
    return this.tabsOf(userId).some((tab) => tabHadGap(tab, from, to));
  }

  /** Whether t falls in a fault or within two leases after it (cluster state rebuilding). */
  recovering(t) {
    return this.faultWindows.some(([from, to]) => t >= from && t <= to + 2 * LEASE_MS);
  }

  /**
   * A send's RPC error, judged here: the gateway's UNAVAILABLE is filed for the check that it
   * never arrives (and is expected during a fault); a call to a node frozen meanwhile may
   * fail any way; otherwise a late answer or an error is a breach. call: { node, t0, id,
   * receivers } of the send.
   */
  rpcError(what, err, call) {
    if (call.id && this.answers.refusedBy(err)) this.answers.refuse(call.id, call.receivers, call.node, err, call.t0);
    const redisFault = this.redisDownUntil && Date.now() < this.redisDownUntil;
    const nodeFault = this.nodeDownUntil && Date.now() < this.nodeDownUntil;
    if ((redisFault || nodeFault) && err.code === grpc.status.UNAVAILABLE) {
      this.bump("RPCs refused during a fault (UNAVAILABLE)");
      return;
    }
    if (this.frozenDuring(call.node, call.t0, Date.now())) {
      this.bump(`RPCs to a frozen node failed (${grpc.status[err.code]})`);
      return;
    }
    this.invariant("every RPC answered within its deadline", err.code !== grpc.status.DEADLINE_EXCEEDED, `${what}: ${err.message}`);
    if (err.code !== grpc.status.DEADLINE_EXCEEDED) {
      this.invariant("no RPC error", false, `${what}: ${grpc.status[err.code]} ${err.details ?? err.message}`);
    }
  }

  pick() {
    return this.steady[Math.floor(Math.random() * this.steady.length)];
  }

  async directLane(lane) {
    let seq = 0;
    while (!this.stopping) {
      const receiver = this.pick();
      const id = `d${lane}-${seq}`;
      const node = this.liveNode(seq);
      const t0 = Date.now();
      try {
        const r = await unary(this.clients[node], "SendDirect", {
          receiver_id: receiver,
          sender_id: "soak",
          event: "soak",
          message: toValue({ id, lane: `d${lane}`, seq }),
        });
        this.counts["SendDirect calls"] += 1;
        this.invariant("every RPC answered within its deadline", true);
        this.answers.expect(id, receiver, r.delivered_sockets, r.partial, t0);
      } catch (err) {
        this.rpcError(`SendDirect ${id}`, err, { node, t0, id, receivers: [receiver] });
      }
      seq += 1;
      await sleep(20);
    }
  }

  async toUsersLane() {
    let seq = 0;
    while (!this.stopping) {
      const receivers = [...new Set([this.pick(), this.pick(), this.pick()])];
      const id = `u-${seq}`;
      const node = this.liveNode(seq);
      const t0 = Date.now();
      try {
        const r = await unary(this.clients[node], "SendToUsers", {
          receiver_ids: receivers,
          sender_id: "soak",
          event: "soak",
          message: toValue({ id, lane: "u", seq }),
        });
        this.counts["SendToUsers calls"] += 1;
        this.invariant("every RPC answered within its deadline", true);
        for (const d of r.deliveries) this.answers.expect(id, d.receiver_id, d.delivered_sockets, d.partial, t0);
      } catch (err) {
        this.rpcError(`SendToUsers ${id}`, err, { node, t0, id, receivers });
      }
      seq += 1;
      await sleep(40);
    }
  }

  /** One SendStream call per node, one item in flight, reopened when it fails. */
  async streamLane(node) {
    let seq = 0;
    while (!this.stopping) {
      const call = this.clients[node].SendStream();
      const answers = [];
      let failed = null;
      call.on("data", (r) => answers.push(r));
      call.on("error", (e) => (failed = e));
      call.on("end", () => (failed ??= new Error("stream ended")));
      try {
        while (!this.stopping && !failed) {
          if (this.frozenDuring(node, Date.now(), Date.now())) {
            await sleep(100); // a backend does not get through to a frozen node either
            continue;
          }
          const receiver = this.pick();
          const id = `s${node}-${seq}`;
          const t0 = Date.now();
          call.write({ receiver_id: receiver, sender_id: "soak", event: "soak", id: seq, message: toValue({ id, lane: `s${node}`, seq }) });
          // Never reused, answered or not: an item whose answer a killed node took with it may
          // have been delivered, and a retry under the same seq would read as a duplicate.
          seq += 1;
          while (!answers.length && !failed && Date.now() - t0 < RPC_DEADLINE_MS) await sleep(2);
          const r = answers.shift();
          if (!r) {
            if (this.frozenDuring(node, t0, Date.now())) this.bump("SendStream items unanswered by a frozen node");
            else if (!failed) this.invariant("every RPC answered within its deadline", false, `SendStream item ${id}: no answer in ${RPC_DEADLINE_MS} ms`);
            break;
          }
          this.counts["SendStream items"] += 1;
          this.invariant("every RPC answered within its deadline", true);
          if (r.code !== 0) {
            this.rpcError(`SendStream ${id}`, { code: r.code, message: r.error, details: r.error }, { node, t0, id, receivers: [receiver] });
          } else this.answers.expect(id, receiver, r.delivered_sockets, r.partial, t0);
          await sleep(20);
        }
      } finally {
        call.end();
        call.cancel();
      }
      if (failed && !this.stopping) {
        this.rpcError(`SendStream on node ${node}`, failed, { node, t0: Date.now() - RPC_DEADLINE_MS });
        await sleep(200);
      }
    }
  }

  // --- churn --------------------------------------------------------------------------------

  async churnLoop(loop) {
    let k = 0;
    while (!this.stopping) {
      const userId = `churn-${loop}-${k++}`;
      const node = this.nodeIndex(k);
      const port = this.httpPorts[node];
      const kind = Math.random();
      try {
        if (kind < 0.35) {
          const s = await this.ioConnect(port, userId, Math.random() < 0.5 ? ["websocket"] : ["polling"]);
          await sleep(100 + Math.random() * 1_000);
          s.disconnect();
          this.counts["churn: clean closes"] += 1;
        } else if (kind < 0.65) {
          const s = await this.ioConnect(port, userId, ["websocket"]);
          await sleep(100 + Math.random() * 1_000);
          // Drop the TCP connection: no WebSocket close, no Socket.IO disconnect.
          s.io.engine.transport.ws._socket.destroy();
          s.close();
          this.counts["churn: TCP dropped without a close"] += 1;
        } else {
          const ws = await rawWs(port, userId);
          ws.send("40");
          if (Math.random() < 0.5) await sleep(Math.random() * 5);
          ws.sock.destroy();
          this.counts["churn: TCP dropped during the namespace CONNECT"] += 1;
        }
        this.counts.connects += 1;
      } catch (err) {
        this.counts["churn: connect failures"] += 1;
        const why = String(err?.message ?? err).slice(0, 120);
        this.churnErrors.set(why, (this.churnErrors.get(why) ?? 0) + 1);
        await sleep(200);
      }
      await sleep(20);
    }
  }

  ioConnect(port, userId, transports) {
    return new Promise((resolve, reject) => {
      const s = io(`http://127.0.0.1:${port}`, { query: { userId }, transports, reconnection: false, forceNew: true, timeout: 5_000 });
      s.once("connect", () => resolve(s));
      s.once("connect_error", (e) => {
        s.close();
        reject(e);
      });
    });
  }

  // --- slow readers, flooders, hostile frames ----------------------------------------------

  async slowReaders() {
    const big = "x".repeat(8_000);
    let round = 0;
    while (!this.stopping) {
      const users = [];
      for (let i = 0; i < SLOW_READERS; i++) {
        const userId = `slow-${round}-${i}`;
        try {
          const ws = await rawWs(this.httpPorts[this.nodeIndex(i)], userId);
          ws.send("40");
          await sleep(200);
          ws.sock.pause(); // stops reading: the kernel buffers fill, then the gateway's
          users.push({ userId, ws, node: this.nodeIndex(i) });
        } catch {
          // counted by churn failures elsewhere; a slow reader is best effort
        }
      }
      const until = Date.now() + 20_000;
      while (!this.stopping && Date.now() < until) {
        for (const u of users) {
          const t0 = Date.now();
          if (this.frozenDuring(u.node, t0, t0)) continue;
          try {
            await unary(this.clients[u.node], "SendDirect", { receiver_id: u.userId, sender_id: "soak", message: toValue({ big }) });
            this.counts["messages to slow readers"] += 1;
            this.invariant("every RPC answered within its deadline", true);
          } catch (err) {
            this.rpcError(`SendDirect to slow reader ${u.userId}`, err, { node: u.node, t0 });
          }
        }
        await sleep(50);
      }
      for (const u of users) u.ws.sock.destroy();
      round += 1;
    }
  }

  async flooder(i) {
    let k = 0;
    while (!this.stopping) {
      const userId = `flood-${i}-${k++}`;
      try {
        const s = await this.ioConnect(this.httpPorts[this.nodeIndex(i)], userId, ["websocket"]);
        let cut = false;
        s.on("disconnect", () => (cut = true));
        while (!cut && !this.stopping) {
          for (let j = 0; j < 150; j++) s.emit("spam", { j, pad: "y".repeat(100) });
          this.counts["flood bursts"] += 1;
          await sleep(500);
        }
        if (cut) this.counts["flooders cut off"] += 1;
        s.close();
      } catch {
        await sleep(200);
      }
    }
  }

  async hostile() {
    const attacks = [
      (ws) => ws.send("garbage"),
      (ws) => ws.send('42["unterminated'),
      (ws) => ws.send("40/nope,"),
      (ws) => ws.sock.write(wsFrame(2, crypto.randomBytes(64))),
      (ws) => ws.sock.write(wsFrame(0xb, "reserved opcode")),
      (ws) => ws.sock.write(wsFrame(1, "x", { claimLen: 2 ** 40 })),
      (ws) => ws.sock.write(wsFrame(0, "continuation without start")),
      (ws) => ws.sock.write(crypto.randomBytes(200)),
    ];
    let k = 0;
    while (!this.stopping) {
      const port = this.httpPorts[this.nodeIndex(k)];
      try {
        if (k % 5 === 4) {
          // A polling request for a session that does not exist, then raw garbage on TCP.
          const sock = net.connect({ port, host: "127.0.0.1" });
          sock.on("error", () => {});
          sock.write(`GET /socket.io/?EIO=4&transport=polling&sid=bogus HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\xff`);
          await sleep(50);
          sock.destroy();
        } else {
          const ws = await rawWs(port, `hostile-${k}`);
          ws.sock.on("error", () => {});
          attacks[k % attacks.length](ws);
          await sleep(50);
          ws.sock.destroy();
        }
        this.counts["hostile frames/requests"] += 1;
      } catch {
        // the gateway may refuse: that is its right
      }
      k += 1;
      await sleep(100);
    }
  }

  // --- sampling -----------------------------------------------------------------------------

  async sample() {
    const t = this.t;
    let redisKeys;
    if (this.redis) {
      const { redisCommand } = await import("../cluster_infra.mjs");
      redisKeys = await redisCommand(this.redis.port, "DBSIZE")
        .then((r) => Number(String(r).replace(/^:/, "")))
        .catch(() => undefined);
    }
    this.nodes.forEach((gw, node) => {
      const pid = gw.child.pid;
      try {
        const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
        const rss = Number(/VmRSS:\s+(\d+)/.exec(status)[1]) / 1024;
        const threads = Number(/Threads:\s+(\d+)/.exec(status)[1]);
        const fds = fs.readdirSync(`/proc/${pid}/fd`).length;
        this.samples.push({ t, node, rss, fds, threads, redisKeys });
      } catch {
        // the node is down (killed on schedule)
      }
    });
  }

  async sampler() {
    while (!this.done) {
      await this.sample();
      await sleep(1_000);
    }
  }

  latest(node) {
    return this.samples.findLast((s) => s.node === node);
  }

  // --- presence -----------------------------------------------------------------------------

  async presenceSettles(boundMs) {
    const want = JSON.stringify([...this.steady, ...this.dropping].sort());
    const t0 = Date.now();
    let last = "";
    while (Date.now() - t0 < boundMs) {
      const lists = await Promise.all(this.clients.map((c) => listOnline(c).catch((e) => `error ${e.message}`)));
      const pushed = [...this.tabs.values()].flat().map((tab) => JSON.stringify([...(tab.lastOnline ?? [])].sort()));
      last = `ListOnline per node ${JSON.stringify(lists)}; distinct last getOnlineUsers ${JSON.stringify([...new Set(pushed)])}`;
      if (lists.every((l) => JSON.stringify(l) === want) && pushed.every((p) => p === want)) return { ms: Date.now() - t0 };
      await sleep(250);
    }
    return { ms: null, last };
  }

  /** During the load: every steady user is listed by every node (no one lost from presence). */
  async steadyListed() {
    const now = Date.now();
    const lists = await Promise.all(this.clients.map((c, i) => (this.frozenDuring(i, now, now) ? null : listOnline(c).catch(() => null))));
    lists.forEach((l, node) => {
      if (l === null) return; // a node down or frozen on schedule, or a refused call: judged by the senders
      if (this.recovering(Date.now())) return;
      const missing = this.steady.filter((u) => !l.includes(u) && !this.hadGap(u, Date.now(), Date.now()));
      this.invariant("steady users listed by ListOnline during the load", missing.length === 0, `node ${node} misses ${missing}`);
    });
  }

  // --- the whole run ------------------------------------------------------------------------

  async run(durationMs) {
    await this.start();
    this.done = false;
    const sampling = this.sampler();
    await this.connectSteady();
    await openDroppingTabs(this);
    const watchers = Promise.all(this.nodes.map((_, i) => watchPresence(this, i)));
    await sleep(2_000);
    await this.sample();
    this.baseline = this.nodes.map((_, i) => this.latest(i));
    log(`${this.mode}: ${this.nodes.length} node(s), baseline ${this.baseline.map((b) => `RSS ${b.rss.toFixed(1)} MiB fds ${b.fds}`).join("; ")}`);
    await this.load(durationMs);
    await this.checkAfterLoad();
    await this.scrapeCounters();
    await this.shutdown(sampling, watchers);
  }

  /** Runs every load driver for durationMs, checking as it goes, then stops them. */
  async load(durationMs) {
    this.loadStart = Date.now();
    // Named, so that one which does not stop is reported by name instead of hanging the run.
    const drivers = new Map([
      ...[0, 1, 2].map((l) => [`SendDirect lane ${l}`, this.directLane(l)]),
      ["SendToUsers lane", this.toUsersLane()],
      ...this.nodes.map((_, i) => [`SendStream lane ${i}`, this.streamLane(i)]),
      ...Array.from({ length: CHURN_LOOPS }, (_, i) => [`churn loop ${i}`, this.churnLoop(i)]),
      ["slow readers", this.slowReaders()],
      ...Array.from({ length: FLOODERS }, (_, i) => [`flooder ${i}`, this.flooder(i)]),
      ["hostile frames", this.hostile()],
      ["faults", injectFaults(this, this.plan)],
      ...dropDrivers(this, durationMs),
    ]);
    const running = new Set(drivers.keys());
    for (const [name, done] of drivers) done.finally(() => running.delete(name));
    this.judgePresence = true;
    while (Date.now() - this.loadStart < durationMs) {
      await sleep(5_000);
      this.answers.checkDeliveries(5_000);
      await this.steadyListed();
      const s = this.nodes.map((_, i) => this.latest(i)).filter(Boolean);
      log(
        `${this.mode} t=${this.t.toFixed(0)}s sends=${this.counts["SendDirect calls"] + this.counts["SendToUsers calls"] + this.counts["SendStream items"]} connects=${this.counts.connects} ` +
          `breaches=${Object.values(this.inv).reduce((a, e) => a + e.breaches, 0)} ${s.map((x) => `rss=${x.rss.toFixed(0)}MiB fds=${x.fds}`).join(" ")}` +
          (s[0]?.redisKeys !== undefined ? ` redisKeys=${s[0].redisKeys}` : ""),
      );
    }
    this.stopping = true;
    this.loadEnd = this.t;
    const stopBy = Date.now() + DRIVER_STOP_MS;
    while (running.size && Date.now() < stopBy) await sleep(100);
    this.hung = [...running];
    if (this.hung.length) log(`${this.mode}: still running ${DRIVER_STOP_MS / 1000} s after the stop, left behind: ${this.hung.join(", ")}`);
    log(`${this.mode}: load stopped at t=${this.t.toFixed(0)}s; checking`);
  }

  /** The invariants judged once the load has stopped: presence, deliveries, resources. */
  async checkAfterLoad() {
    const bound = RECOVERY_WINDOW_MS + (this.mode === "cluster" ? LEASE_MS + LEASE_MS / 5 + 5_000 : 5_000);
    this.presenceBound = bound;
    const settled = await this.presenceSettles(bound);
    this.settleMs = settled.ms;
    this.invariant(
      "no ghosts: ListOnline and getOnlineUsers = live users on every node",
      settled.ms !== null,
      `not settled within ${bound} ms: ${settled.last}`,
    );
    await sleep(2_000);
    this.answers.checkDeliveries(0);
    this.answers.checkRefused();
    checkDropping(this);
    if (this.mode === "single") {
      for (const [userId, tabs] of this.tabs) {
        tabs.forEach((tab, k) =>
          this.invariant("steady sockets stay connected (single node)", !tab.drops.length, `${userId} tab ${k}: ${tab.drops}`),
        );
      }
    }
    await Promise.all([this.checkResources(), checkExpiry(this)]);
  }

  /** Resources: back within the bound once the load has gone (polled, up to 20 s). */
  async checkResources() {
    const within = () =>
      this.nodes.map((_, i) => {
        const b = this.baseline[i];
        const l = this.latest(i);
        return { i, b, l, ok: l.rss <= b.rss + RSS_BOUND_MIB && l.fds <= b.fds + FD_BOUND };
      });
    const until = Date.now() + 20_000;
    while (within().some((r) => !r.ok) && Date.now() < until) await sleep(1_000);
    for (const r of within()) {
      this.invariant(
        `RSS within +${RSS_BOUND_MIB} MiB and fds within +${FD_BOUND} of the baseline`,
        r.ok,
        `node ${r.i}: RSS ${r.b.rss.toFixed(1)} -> ${r.l.rss.toFixed(1)} MiB, fds ${r.b.fds} -> ${r.l.fds}`,
      );
    }
    this.drift = within();
    if (this.redis) {
      const keys = this.latest(0).redisKeys;
      const max = (STEADY_USERS + DROPPING_USERS) * KEYS_PER_USER + this.nodes.length * KEYS_PER_NODE;
      this.invariant("Redis keys bounded", keys !== undefined && keys <= max, `${keys} keys, bound ${max}`);
      this.redisKeysEnd = keys;
      this.redisKeysMax = Math.max(...this.samples.map((s) => s.redisKeys ?? 0));
    }
  }

  /** The gateway's own counters of what it refused and cut off, summed over the nodes. */
  async scrapeCounters() {
    this.metrics = {};
    for (const port of this.metricsPorts) {
      const text = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text()).catch(() => "");
      for (const m of text.matchAll(/^(gateway_(?:deliveries|refusals|handshakes_refused|sockets_cut_off|client_floods|recovery_attempts|recovery_overflows)_total\S*) (\d+)/gm)) {
        this.metrics[m[1]] = (this.metrics[m[1]] ?? 0) + Number(m[2]);
      }
    }
  }

  /** Closes every tab, then every node must exit 0 on SIGTERM. */
  async shutdown(sampling, watchers) {
    this.judgePresence = false;
    for (const tab of this.everyTab()) closeTab(tab);
    this.done = true;
    await sampling;
    await watchers;
    for (const [i, gw] of this.nodes.entries()) {
      gw.expectedExit = true;
      const res = await gw.stop(10_000);
      this.invariant("no process crashed", res.code === 0 && !res.timedOut, `node ${i} on SIGTERM: ${JSON.stringify(res)}`);
    }
    for (const c of this.clients) c.close();
    await this.redis?.cleanup();
  }
}
