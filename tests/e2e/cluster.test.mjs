// Cluster mode end to end: three gateway nodes on one Redis (and on a three-master Redis
// Cluster), users on different nodes with the official socket.io-client, gRPC through
// grpcurl, nginx (deploy/nginx.conf) in front. Delivery counts every socket on every node;
// presence and ListOnline pages are the same from every node; a node killed with SIGKILL
// leaves presence within its lease and its clients come back through nginx; a Redis restart
// is survived with no node restarted. Redis, the Redis Cluster and nginx run on free loopback
// ports (cluster_infra.mjs) and are stopped after each suite.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  Client,
  connectUser,
  grpcCall,
  grpcOk,
  sendDirect,
  delivered,
  listOnlineAll,
  waitOnline,
  closeAll,
  sleep,
  WAIT_MS,
} from "./helpers.mjs";
import {
  startRedis,
  startRedisCluster,
  startNginx,
  startNodes,
  metric,
  until,
  LEASE_MS,
  CLUSTER_TIMEOUT_MS,
} from "./cluster_infra.mjs";

const LIST = "messaging.v1.Messaging/ListOnline";
const QUIET_MS = 300;
/** Bound on cluster-wide presence converging after a change (Redis round trips, coalescing). */
const CONVERGE_MS = 10_000;

async function clusterHealth(node) {
  const res = await grpcCall(node.grpcAddr, "grpc.health.v1.Health/Check", { service: "cluster" });
  return res.code === 0 ? res.json.status : `exit ${res.code}: ${res.stderr.trim()}`;
}

const sameSet = (list, want) => list.length === want.length && [...list].sort().join("\n") === [...want].sort().join("\n");

/** Waits until ListOnline on every node and the last getOnlineUsers of every client are `want`. */
async function waitPresence(nodes, clients, want, timeoutMs = CONVERGE_MS) {
  const t0 = Date.now();
  for (const n of nodes) {
    await until(async () => (await listOnlineAll(n.grpcAddr)).ids, (ids) => sameSet(ids, want), timeoutMs, `ListOnline on node ${n.id}`);
  }
  for (const c of clients) {
    await c.waitOnlineUsers((ids) => sameSet(ids, want), { timeoutMs: Math.max(1_000, timeoutMs - (Date.now() - t0)) });
  }
  return Date.now() - t0;
}

/**
 * The delivery and presence checks shared by the single-Redis and the Redis Cluster suites:
 * users with sockets on one, two or three nodes; every node sends to every user.
 */
function deliveryAndPresenceTests(ctx) {
  // user -> the nodes (indexes) its sockets are on, one socket per entry.
  const layout = {
    "solo-a": [0],
    "pair-bc": [1, 2],
    "twice-c": [2, 2],
    "every-abc": [0, 1, 2],
    "lone-b": [1],
  };
  const users = Object.keys(layout).sort();
  const sockets = []; // { user, node, client }

  test("users connect on different nodes: ListOnline and getOnlineUsers are the whole cluster, identical from every node", async () => {
    for (const [user, on] of Object.entries(layout)) {
      for (const i of on) {
        const client = await connectUser(ctx.nodes[i].url, user);
        ctx.clients.push(client);
        sockets.push({ user, node: i, client });
      }
    }
    const ms = await waitPresence(ctx.nodes, sockets.map((s) => s.client), users);
    console.log(`# presence identical on all nodes and all ${sockets.length} sockets ${ms} ms after the last connect`);
    for (const n of ctx.nodes) {
      const resp = await grpcOk(n.grpcAddr, LIST, {});
      assert.deepEqual(resp.userIds, users, `node ${n.id}`);
      assert.equal(resp.total, users.length, `total on node ${n.id}`);
      assert.equal(await metric(n, "gateway_online_users"), users.length, `gateway_online_users on node ${n.id}`);
    }
  });

  test("SendDirect through each node reaches exactly the receiver's sockets on every node, counted", async () => {
    const marks = sockets.map((s) => s.client.mark());
    for (const [k, n] of ctx.nodes.entries()) {
      for (const user of users) {
        const resp = await sendDirect(n.grpcAddr, { receiver_id: user, message: { from: n.id, to: user } });
        assert.deepEqual(resp, { deliveredSockets: layout[user].length }, `SendDirect ${user} through node ${n.id}`);
      }
      const off = await sendDirect(n.grpcAddr, { receiver_id: "nobody-here", message: "x" });
      assert.equal(delivered(off), 0, `offline user through node ${k}`);
    }
    // Every socket gets one message per sending node, each addressed to its own user.
    for (const [j, s] of sockets.entries()) {
      await s.client.waitFor("newMessage", {
        since: marks[j],
        pred: () => s.client.received("newMessage", marks[j]).length >= ctx.nodes.length,
        timeoutMs: WAIT_MS,
      });
    }
    await sleep(QUIET_MS);
    for (const [j, s] of sockets.entries()) {
      const got = s.client.received("newMessage", marks[j]).map((e) => e.args[0]);
      assert.deepEqual(
        got.map((m) => m.to),
        ctx.nodes.map(() => s.user),
        `socket of ${s.user} on node ${s.node} got exactly its own messages`,
      );
      assert.deepEqual(got.map((m) => m.from).sort(), ctx.nodes.map((n) => n.id).sort());
    }
  });

  test("SendToUsers through one node counts each receiver's sockets on every node", async () => {
    const marks = sockets.map((s) => s.client.mark());
    const resp = await grpcOk(ctx.nodes[0].grpcAddr, "messaging.v1.Messaging/SendToUsers", {
      receiver_ids: [...users, "nobody-here"],
      message: "to all",
    });
    const counts = Object.fromEntries((resp.deliveries ?? []).map((d) => [d.receiverId, d.deliveredSockets ?? 0]));
    for (const user of users) assert.equal(counts[user], layout[user].length, `${user}: ${JSON.stringify(resp)}`);
    assert.equal(counts["nobody-here"] ?? 0, 0);
    assert.equal(resp.deliveredSockets, sockets.length);
    assert.ok(!resp.partial, "complete delivery is not partial");
    for (const [j, s] of sockets.entries()) await s.client.waitFor("newMessage", { since: marks[j] });
  });

  test("a ListOnline page token from node a continues on node b and node c; a tampered token is refused", async () => {
    const [a, b, c] = ctx.nodes;
    const seen = [];
    let token = "";
    for (const [i, n] of [a, b, c, a, b].entries()) {
      const req = { page_size: 1 };
      if (token) req.page_token = token;
      const resp = await grpcOk(n.grpcAddr, LIST, req);
      assert.deepEqual(resp.userIds, [users[i]], `page ${i} on node ${n.id}: ${JSON.stringify(resp)}`);
      assert.equal(resp.total, users.length);
      seen.push(...resp.userIds);
      token = resp.nextPageToken ?? "";
      if (i === 1) {
        // The same token tampered with: refused by another node.
        const bad = token.slice(0, -2) + (token.endsWith("A") ? "BB" : "AA");
        const res = await grpcCall(c.grpcAddr, LIST, { page_size: 1, page_token: bad });
        assert.notEqual(res.code, 0);
        assert.match(res.stderr, /InvalidArgument/);
      }
    }
    assert.deepEqual(seen, users);
    assert.equal(token, "", "the last page has no token");
  });

  test("a user closing its last tab on one node leaves presence on every node", async () => {
    const gone = sockets.find((s) => s.user === "lone-b");
    gone.client.close();
    const rest = sockets.filter((s) => s !== gone);
    await waitPresence(ctx.nodes, rest.map((s) => s.client), users.filter((u) => u !== "lone-b"));
    for (const n of ctx.nodes) assert.equal(delivered(await sendDirect(n.grpcAddr, { receiver_id: "lone-b", message: 1 })), 0);
  });

  test("a presence: changes client on node a rebuilds the exact cluster-wide set as users of nodes b and c come and go", async () => {
    const [a, b, c] = ctx.nodes;
    const watcher = await connectUser(a.url, "changes-watch", { query: { presence: "changes" } });
    ctx.clients.push(watcher);
    const want = async () => (await listOnlineAll(a.grpcAddr)).ids;
    await watcher.waitChangesSet((set) => set.has("changes-watch"), { timeoutMs: CONVERGE_MS });
    const remote = [];
    for (let i = 0; i < 4; i++) {
      const client = await connectUser((i % 2 ? c : b).url, `changes-remote-${i}`);
      ctx.clients.push(client);
      remote.push(client);
    }
    const flicker = await connectUser(b.url, "changes-flicker");
    flicker.close();
    remote[1].close();
    const ids = await waitOnline(a.grpcAddr, (ids) => ids.includes("changes-remote-3") && !ids.includes("changes-remote-1") && !ids.includes("changes-flicker"), CONVERGE_MS);
    const set = await watcher.waitChangesSet((set) => sameSet([...set], ids), { timeoutMs: CONVERGE_MS });
    await sleep(QUIET_MS * 2);
    assert.ok(sameSet([...watcher.changesSet()], await want()), JSON.stringify([...set]));
    for (const n of [b, c]) assert.ok(sameSet((await listOnlineAll(n.grpcAddr)).ids, ids), `ListOnline on node ${n.id}`);
    assert.equal(watcher.received("getOnlineUsers").length, 1, "one whole list, then change sets only");
    assert.ok(watcher.received("onlineUsersChanged").length >= 1, "the remote users came as change sets");
    for (const client of [watcher, ...remote]) client.close();
  });
}

describe("three nodes on one Redis", () => {
  const ctx = { nodes: [], clients: [] };
  let redis;
  before(async () => {
    redis = await startRedis();
    ctx.nodes = await startNodes(["--redis-url", redis.url]);
  });
  after(async () => {
    closeAll(ctx.clients);
    for (const n of ctx.nodes) await n.kill();
    await redis?.cleanup();
  });
  deliveryAndPresenceTests(ctx);
});

describe("three nodes on a three-master Redis Cluster", () => {
  const ctx = { nodes: [], clients: [] };
  let cluster;
  before(async () => {
    cluster = await startRedisCluster();
    ctx.nodes = await startNodes(["--redis-url", cluster.urls.join(","), "--redis-cluster"]);
  });
  after(async () => {
    closeAll(ctx.clients);
    for (const n of ctx.nodes) await n.kill();
    await cluster?.cleanup();
  });
  deliveryAndPresenceTests(ctx);
});

describe("nginx in front of three nodes", () => {
  let redis;
  let nginx;
  let nodes = [];
  const clients = [];
  before(async () => {
    redis = await startRedis();
    nodes = await startNodes(["--redis-url", redis.url]);
    nginx = await startNginx(nodes.map((n) => n.httpPort));
  });
  after(async () => {
    closeAll(clients);
    await nginx?.cleanup();
    for (const n of nodes) await n.kill();
    await redis?.cleanup();
  });

  const viaNginx = (userId, opts = {}) => {
    // Default socket.io-client transports: long-polling, then the upgrade to WebSocket.
    const c = new Client(nginx.url, { userId, transports: ["polling", "websocket"], ...opts });
    clients.push(c);
    return c;
  };
  const upgraded = (c) =>
    until(async () => c.socket.io.engine?.transport?.name, (t) => t === "websocket", WAIT_MS, "upgrade to WebSocket");

  test("default transports connect, receive a message sent on any node before and after the upgrade", async () => {
    const users = Array.from({ length: 9 }, (_, i) => `web-${i}`);
    const cs = users.map((u) => viaNginx(u));
    await Promise.all(cs.map((c) => c.connect()));
    await waitPresence(nodes, [], users);
    // Before the upgrade completes for some of them, after it for all.
    for (const phase of ["early", "upgraded"]) {
      if (phase === "upgraded") await Promise.all(cs.map(upgraded));
      for (const [k, c] of cs.entries()) {
        for (const n of nodes) {
          const since = c.mark();
          const resp = await sendDirect(n.grpcAddr, { receiver_id: users[k], message: { phase, via: n.id } });
          assert.deepEqual(resp, { deliveredSockets: 1 }, `${users[k]} through node ${n.id} (${phase})`);
          const got = await c.waitFor("newMessage", { since });
          assert.deepEqual(got.args[0], { phase, via: n.id });
        }
      }
    }
    for (const c of cs) {
      assert.ok(c.connected);
      assert.equal(c.received("connect").length, 1, "no reconnect across the upgrade");
      assert.equal(c.received("newMessage").length, 2 * nodes.length, "no duplicate");
    }
    closeAll(cs);
    await waitPresence(nodes, [], []);
  });

  test("kill -9 one node: its users leave presence on the others within the lease; its clients come back through nginx", async () => {
    const [victim, ...live] = nodes;
    // Watchers connected straight to the surviving nodes; users straight on the victim
    // (they do not reconnect); users through nginx that reconnect wherever nginx sends them.
    const watchers = await Promise.all(live.map((n, i) => connectUser(n.url, `watch-${i}`)));
    const stuck = await Promise.all(["stuck-1", "stuck-2"].map((u) => connectUser(victim.url, u)));
    clients.push(...watchers, ...stuck);
    // nginx hashes the user id onto a node: connect users through it one by one, telling from
    // the victim's connection counter which ones it got, until it has three and the others two.
    const roaming = [];
    const rcs = [];
    const onVictim = new Set();
    for (let i = 0; onVictim.size < 3 || roaming.length - onVictim.size < 2; i++) {
      assert.ok(i < 60, `nginx put ${onVictim.size} of ${i} users on the victim`);
      const before = await metric(victim, "gateway_connections_total");
      const c = viaNginx(`roam-${i}`, { reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 500 });
      await c.connect();
      if ((await metric(victim, "gateway_connections_total")) > before) onVictim.add(i);
      roaming.push(`roam-${i}`);
      rcs.push(c);
    }
    const everyone = ["watch-0", "watch-1", "stuck-1", "stuck-2", ...roaming];
    await waitPresence(nodes, watchers, everyone);

    const t0 = Date.now();
    await victim.kill();
    // Until its lease expires (at least 4/5 of it from now) the dead node still holds
    // stuck-1: a send waits --cluster-timeout-ms for it and says the delivery is partial.
    const tSend = Date.now();
    const partial = await sendDirect(live[0].grpcAddr, { receiver_id: "stuck-1", message: "lost" });
    const sendMs = Date.now() - tSend;
    console.log(`# kill -9: a send to a user of the dead node answered ${JSON.stringify(partial)} in ${sendMs} ms`);
    assert.deepEqual(partial, { partial: true }, "no node answered for stuck-1: 0 sockets, partial");
    assert.ok(sendMs < CLUSTER_TIMEOUT_MS + 2_000, `the partial send took ${sendMs} ms`);
    const { ms } = await until(
      async () => (await listOnlineAll(live[0].grpcAddr)).ids,
      (ids) => !ids.includes("stuck-1") && !ids.includes("stuck-2"),
      LEASE_MS * 3 + 5_000,
      "the killed node's users leave ListOnline",
    );
    const bound = LEASE_MS + LEASE_MS / 5 + 1_500;
    console.log(`# kill -9: the killed node's users left ListOnline after ${ms} ms (lease ${LEASE_MS} ms, bound ${bound} ms); ${onVictim.size} of ${roaming.length} nginx clients were on it`);
    assert.ok(ms <= bound, `the killed node's users left after ${ms} ms, over the bound of ${bound} ms`);
    const want = everyone.filter((u) => !u.startsWith("stuck-"));
    await waitPresence(live, watchers, want);
    // Sockets on the dead node were cut: those clients reconnected through nginx elsewhere.
    for (const [k, c] of rcs.entries()) {
      assert.equal(c.received("disconnect").length, onVictim.has(k) ? 1 : 0, `disconnects of ${roaming[k]}`);
    }
    for (const [k, c] of rcs.entries()) {
      const since = c.mark();
      for (const n of live) {
        const resp = await sendDirect(n.grpcAddr, { receiver_id: roaming[k], message: { after: "kill" } });
        assert.deepEqual(resp, { deliveredSockets: 1 }, `${roaming[k]} through node ${n.id}`);
      }
      await c.waitFor("newMessage", { since, pred: () => c.received("newMessage", since).length >= live.length });
    }
    assert.equal(await metric(live[0], "gateway_cluster_nodes"), live.length);
    closeAll(rcs);
  });
});

describe("Redis restarted mid-run", () => {
  let redis;
  let nodes = [];
  const clients = [];
  before(async () => {
    redis = await startRedis();
    nodes = await startNodes(["--redis-url", redis.url], { count: 2 });
  });
  after(async () => {
    closeAll(clients);
    for (const n of nodes) await n.kill();
    await redis?.cleanup();
  });

  test("during the outage local sends work and remote ones are UNAVAILABLE at once; afterwards presence and cross-node sends come back by themselves", async () => {
    const [a, b] = nodes;
    const onA = await connectUser(a.url, "on-a");
    const onB = await connectUser(b.url, "on-b");
    clients.push(onA, onB);
    await waitPresence(nodes, [onA, onB], ["on-a", "on-b"]);
    assert.equal(await metric(a, "gateway_redis_up"), 1);

    await redis.stop();
    const down = await until(() => metric(a, "gateway_redis_up"), (v) => v === 0, 10_000, "gateway_redis_up 0");
    console.log(`# Redis stopped: gateway_redis_up 0 after ${down.ms} ms`);
    assert.equal(await clusterHealth(a), "NOT_SERVING");

    const since = onA.mark();
    let t = Date.now();
    assert.deepEqual(await sendDirect(a.grpcAddr, { receiver_id: "on-a", message: "local" }), { deliveredSockets: 1 });
    await onA.waitFor("newMessage", { since });
    console.log(`# outage: local SendDirect answered in ${Date.now() - t} ms`);

    t = Date.now();
    const res = await grpcCall(a.grpcAddr, "messaging.v1.Messaging/SendDirect", { receiver_id: "on-b", message: "remote" });
    const ms = Date.now() - t;
    console.log(`# outage: remote SendDirect answered ${res.code === 0 ? "OK" : "an error"} in ${ms} ms`);
    assert.notEqual(res.code, 0, `a remote send during the outage must fail: ${res.stdout}`);
    assert.match(res.stderr, /Unavailable/);
    assert.match(res.stderr, /Redis/i);
    assert.ok(ms < CLUSTER_TIMEOUT_MS + 2_000, `UNAVAILABLE took ${ms} ms`);

    // What lives in Redis beside presence fails just as fast and as clearly.
    for (const [what, extra, message] of [
      ["mailbox", { receiver_id: "away", ttl_seconds: 60 }, /offline mailbox is unavailable/],
      ["idempotency", { receiver_id: "on-a", idempotency_key: "outage-1" }, /idempotency_key cannot be checked/],
    ]) {
      t = Date.now();
      const r = await grpcCall(a.grpcAddr, "messaging.v1.Messaging/SendDirect", { message: "x", ...extra });
      const took = Date.now() - t;
      console.log(`# outage: SendDirect with ${what} answered in ${took} ms`);
      assert.match(r.stderr, /Unavailable/, `${what}: ${r.stdout}`);
      assert.match(r.stderr, message);
      assert.ok(took < CLUSTER_TIMEOUT_MS + 2_000, `${what}: UNAVAILABLE took ${took} ms`);
    }

    // Redis comes back empty on the same port: the nodes reconnect and republish.
    await sleep(1_000);
    const t0 = Date.now();
    await redis.restart();
    const up = await until(() => metric(a, "gateway_redis_up"), (v) => v === 1, 10_000, "gateway_redis_up 1");
    await waitPresence(nodes, [onA, onB], ["on-a", "on-b"]);
    await until(
      () => grpcCall(a.grpcAddr, "messaging.v1.Messaging/SendDirect", { receiver_id: "on-b", message: "again" }),
      (r) => r.code === 0 && delivered(r.json) === 1,
      10_000,
      "cross-node SendDirect after the restart",
    );
    const recovered = Date.now() - t0;
    console.log(`# Redis restarted: redis_up after ${up.ms} ms, presence and cross-node delivery back after ${recovered} ms`);
    assert.ok(recovered <= 5_000 + 2_000, `recovery took ${recovered} ms`);
    await onB.waitFor("newMessage", { pred: (args) => args[0] === "again" });
    assert.deepEqual(await sendDirect(b.grpcAddr, { receiver_id: "away", message: "kept", ttl_seconds: 60 }), { queued: true });
    const away = await connectUser(a.url, "away");
    clients.push(away);
    await away.waitFor("newMessage", { pred: (args) => args[0] === "kept" });
    assert.equal(await clusterHealth(a), "SERVING");
    assert.ok(onA.connected && onB.connected, "no live socket dropped");
    assert.equal(onA.received("disconnect").length + onB.received("disconnect").length, 0);
  });
});
