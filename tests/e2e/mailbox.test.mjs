// The offline mailbox (SendDirect ttl_seconds) through grpcurl and the official
// socket.io-client: a message that reaches nobody is kept and arrives, in order and once, when
// the user next connects; the bounds drop the oldest and count it; expired messages are not
// delivered. In cluster mode the queue lives in Redis (one Redis, and a three-master Redis
// Cluster): what one node kept arrives on another, and two tabs connecting at the same moment
// on two nodes get it once in all.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startGateway,
  freePort,
  grpcCall,
  sendDirect,
  delivered,
  connectUser,
  Client,
  closeAll,
  sleep,
} from "./helpers.mjs";
import { startRedis, startRedisCluster, startNodes, redisCommand } from "./cluster_infra.mjs";

const SEND = "messaging.v1.Messaging/SendDirect";
/** Long enough for a kept message to arrive after the connect (one Redis round trip). */
const QUIET_MS = 500;
const PER_USER = 3;
const TOTAL = 5;
/** The cluster suites' byte bound, with a message limit under it. */
const CLUSTER_LIMITS = ["--max-message-bytes", "1024", "--mailbox-max-bytes", "4500"];

const keep = (receiver, n, extra = {}) =>
  sendDirect(extraAddr.current, { receiver_id: receiver, message: { n }, ttl_seconds: 60, ...extra });
const extraAddr = { current: null };

/** The `n` of every newMessage a client received, in arrival order. */
const numbers = (client) => client.received("newMessage").map((e) => e.args[0].n);

async function counter(url, name, reason) {
  const text = await (await fetch(url)).text();
  const label = reason ? `\\{reason="${reason}"\\}` : "";
  const m = new RegExp(`^${name}${label} (\\S+)$`, "m").exec(text);
  return m ? Number(m[1]) : 0;
}

/**
 * Keeps 1..count with acks for `user` (through the current extraAddr), then a tab connects at
 * `dropAt` and closes its connection at the first kept message without acking: the next tab,
 * at `nextAt`, acks and gets them all, in order (at least once: repeats left out).
 */
async function dropThenAck(dropAt, nextAt, user, count, clients) {
  const sent = Array.from({ length: count }, (_, i) => i + 1);
  for (const n of sent) assert.deepEqual(await keep(user, n, { ack_timeout_ms: 500 }), { queued: true });
  const dropper = new Client(dropAt, { userId: user });
  dropper.socket.on("newMessage", () => dropper.socket.io.engine.close());
  clients.push(dropper);
  await dropper.connect();
  await dropper.waitFor("newMessage");
  const next = new Client(nextAt, { userId: user });
  next.socket.on("newMessage", (_message, ack) => ack());
  clients.push(next);
  await next.connect();
  await next.waitFor("newMessage", { pred: (args) => args[0].n === count, timeoutMs: 8_000 });
  assert.deepEqual([...new Set(numbers(next))], sent);
}

describe("single node", () => {
  let gw;
  let metricsUrl;
  const clients = [];
  before(async () => {
    const port = await freePort();
    metricsUrl = `http://127.0.0.1:${port}/metrics`;
    gw = await startGateway({
      extraArgs: [
        "--mailbox-max-per-user", String(PER_USER),
        "--mailbox-max-total", String(TOTAL),
        "--metrics-addr", `127.0.0.1:${port}`,
      ],
    });
    extraAddr.current = gw.grpcAddr;
  });
  after(async () => {
    closeAll(clients);
    await gw?.kill();
  });

  test("kept while offline: the next connect gets the messages in order, a second tab nothing more", async () => {
    const user = "mb-offline";
    for (const n of [1, 2, 3]) {
      assert.deepEqual(await keep(user, n), { queued: true });
    }
    const first = await connectUser(gw.url, user);
    clients.push(first);
    await sleep(QUIET_MS);
    assert.deepEqual(numbers(first), [1, 2, 3]);
    const second = await connectUser(gw.url, user);
    clients.push(second);
    await sleep(QUIET_MS);
    assert.deepEqual(numbers(second), [], "the queue was taken by the first connect");
    assert.deepEqual(numbers(first), [1, 2, 3], "and is not handed over twice");
    assert.equal(await counter(metricsUrl, "gateway_mailbox_delivered_total"), 3);
  });

  test("an online user's message is delivered, not kept; without ttl_seconds nothing is kept", async () => {
    const user = "mb-online";
    const c = await connectUser(gw.url, user);
    clients.push(c);
    const resp = await keep(user, 1);
    assert.equal(delivered(resp), 1);
    assert.equal(resp.queued, undefined);
    c.close();
    await sleep(200);
    assert.deepEqual(await sendDirect(gw.grpcAddr, { receiver_id: "mb-nottl", message: { n: 9 } }), {});
    const later = await connectUser(gw.url, "mb-nottl");
    clients.push(later);
    await sleep(QUIET_MS);
    assert.deepEqual(numbers(later), []);
  });

  test("bounds: a user's oldest goes beyond --mailbox-max-per-user, the oldest of all beyond --mailbox-max-total; both counted", async () => {
    const [a, b] = ["mb-bound-a", "mb-bound-b"];
    for (const n of [1, 2, 3, 4, 5]) await keep(a, n); // 1 and 2 dropped for a's bound
    for (const n of [6, 7, 8]) await keep(b, n); // 5 in all then 6 kept: a's 3 dropped
    assert.equal(await counter(metricsUrl, "gateway_mailbox_dropped_total", "user_limit"), 2);
    assert.equal(await counter(metricsUrl, "gateway_mailbox_dropped_total", "total_limit"), 1);
    const ca = await connectUser(gw.url, a);
    const cb = await connectUser(gw.url, b);
    clients.push(ca, cb);
    await sleep(QUIET_MS);
    assert.deepEqual(numbers(ca), [4, 5]);
    assert.deepEqual(numbers(cb), [6, 7, 8]);
  });

  test("an expired message is not delivered and is counted", async () => {
    const user = "mb-expired";
    await keep(user, 1, { ttl_seconds: 1 });
    await sleep(1_200);
    const before = await counter(metricsUrl, "gateway_mailbox_dropped_total", "expired");
    const c = await connectUser(gw.url, user);
    clients.push(c);
    await sleep(QUIET_MS);
    assert.deepEqual(numbers(c), []);
    assert.equal(await counter(metricsUrl, "gateway_mailbox_dropped_total", "expired"), before + 1);
  });

  test("with ack_timeout_ms a message no socket acknowledged is kept too", async () => {
    const user = "mb-noack";
    const tab = await connectUser(gw.url, user);
    clients.push(tab);
    const resp = await keep(user, 1, { ack_timeout_ms: 300 });
    assert.deepEqual(resp, { deliveredSockets: 1, queued: true });
    const next = await connectUser(gw.url, user);
    clients.push(next);
    await next.waitFor("newMessage");
    assert.deepEqual(numbers(next), [1]);
  });

  test("a message sent while its user connects arrives once, never left waiting for a later connect", async () => {
    for (let n = 0; n < 20; n++) {
      const user = `mb-meet-${n}`;
      const [tab, resp] = await Promise.all([connectUser(gw.url, user), keep(user, n)]);
      clients.push(tab);
      await sleep(n % 5 === 0 ? QUIET_MS : 100);
      assert.deepEqual(numbers(tab), [n], `round ${n}: answered ${JSON.stringify(resp)}`);
    }
    await sleep(QUIET_MS);
    for (const tab of clients.slice(-20)) assert.equal(numbers(tab).length, 1, "no second copy");
  });

  test("with acks, a tab dropping at its first kept message loses none: the next tab that acks gets them all", async () => {
    await dropThenAck(gw.url, gw.url, "mb-dropper", PER_USER, clients);
  });

  test("ttl_seconds over seven days is INVALID_ARGUMENT", async () => {
    const res = await grpcCall(gw.grpcAddr, SEND, { receiver_id: "x", message: { n: 1 }, ttl_seconds: 604801 });
    assert.equal(res.code, 64 + 3, res.stderr);
    assert.match(res.stderr, /InvalidArgument[\s\S]*ttl_seconds: 604801 is over the 604800-second limit/);
  });
});

/** Kept on one node, taken on others: one Redis and a Redis Cluster behave the same. */
function clusterTests(start) {
  let nodes = [];
  let redis;
  const clients = [];
  before(async () => {
    ({ nodes, redis } = await start());
  });
  after(async () => {
    closeAll(clients);
    for (const n of nodes) await n.kill();
    await redis?.cleanup();
  });

  test("what node a kept arrives when the user connects on node b", async () => {
    const user = `mb-move-${Date.now()}`;
    extraAddr.current = nodes[0].grpcAddr;
    for (const n of [1, 2, 3]) assert.deepEqual(await keep(user, n), { queued: true });
    const c = await connectUser(nodes[1].url, user);
    clients.push(c);
    await sleep(QUIET_MS);
    assert.deepEqual(numbers(c), [1, 2, 3]);
  });

  test("the byte bound (--mailbox-max-bytes) drops the oldest of all, cluster-wide", async () => {
    const user = `mb-bytes-${Date.now()}`;
    extraAddr.current = nodes[1].grpcAddr;
    const pad = "p".repeat(900); // about 1 KB stored each: 4 fit in MAX_BYTES
    for (const n of [1, 2, 3, 4, 5, 6]) await keep(user, n, { message: { n, pad } });
    const c = await connectUser(nodes[0].url, user);
    clients.push(c);
    await sleep(QUIET_MS);
    assert.deepEqual(numbers(c), [3, 4, 5, 6]);
  });

  test("a Redis stall longer than --cluster-timeout-ms during the connect loses nothing: the queue arrives once Redis answers", async () => {
    const user = `mb-stall-${Date.now()}`;
    extraAddr.current = nodes[0].grpcAddr;
    for (const n of [1, 2]) await keep(user, n);
    // 1.8 s: longer than the 1 s cluster timeout, shorter than the nodes' 3 s lease.
    for (const port of redis.ports ?? [redis.port]) await redisCommand(port, "CLIENT PAUSE 1800 ALL");
    const c = await connectUser(nodes[1].url, user);
    clients.push(c);
    await c.waitFor("newMessage", { pred: (args) => args[0].n === 2, timeoutMs: 10_000 });
    await sleep(QUIET_MS);
    assert.deepEqual(numbers(c), [1, 2]);
  });

  test("scripts run by digest (EVALSHA); a Redis that lost them (SCRIPT FLUSH, as after a restart) gets each body once", async () => {
    const ports = redis.ports ?? [redis.port];
    for (const port of ports) await redisCommand(port, "SCRIPT FLUSH");
    for (const port of ports) await redisCommand(port, "CONFIG RESETSTAT");
    const user = `mb-sha-${Date.now()}`;
    extraAddr.current = nodes[0].grpcAddr;
    for (const n of [1, 2, 3, 4, 5]) assert.deepEqual(await keep(user, n), { queued: true }, `keep ${n}`);
    const c = await connectUser(nodes[1].url, user);
    clients.push(c);
    await sleep(QUIET_MS);
    assert.deepEqual(numbers(c), [1, 2, 3, 4, 5]);
    let [bySha, byBody] = [0, 0];
    for (const port of ports) {
      const stats = await redisCommand(port, "INFO commandstats");
      bySha += Number(/cmdstat_evalsha:calls=(\d+)/.exec(stats)?.[1] ?? 0);
      byBody += Number(/cmdstat_eval:calls=(\d+)/.exec(stats)?.[1] ?? 0);
    }
    console.log(`# after SCRIPT FLUSH: ${bySha} EVALSHA, ${byBody} EVAL`);
    // Six scripts (presence write and sweep, mailbox push, claim, settle and sweep), each sent
    // whole at most once per node; the five pushes, the claims and the settle went by digest.
    assert.ok(byBody <= 6 * nodes.length, `${byBody} EVAL`);
    assert.ok(bySha >= 6, `${bySha} EVALSHA`);
  });

  test("with acks, a tab dropping at its first kept message on node b loses none: the next tab, on node a, gets them all", async () => {
    extraAddr.current = nodes[0].grpcAddr;
    await dropThenAck(nodes[1].url, nodes[0].url, `mb-dropper-${Date.now()}`, 10, clients);
  });

  test("two tabs connecting at the same moment on two nodes get the queue once in all, each in order", async () => {
    for (let round = 0; round < 5; round++) {
      const user = `mb-race-${round}-${Date.now()}`;
      extraAddr.current = nodes[round % 2].grpcAddr;
      const sent = [1, 2, 3, 4];
      for (const n of sent) await keep(user, n);
      const tabs = await Promise.all([connectUser(nodes[0].url, user), connectUser(nodes[1].url, user)]);
      clients.push(...tabs);
      await sleep(QUIET_MS);
      const got = tabs.map(numbers);
      assert.deepEqual([...got[0], ...got[1]].sort(), sent, `round ${round}: ${JSON.stringify(got)}`);
      for (const g of got) assert.deepEqual(g, [...g].sort(), "in order");
    }
  });
}

describe("cluster on one Redis", () =>
  clusterTests(async () => {
    const redis = await startRedis();
    return { redis, nodes: await startNodes(["--redis-url", redis.url, ...CLUSTER_LIMITS], { count: 2 }) };
  }));
describe("cluster on a Redis Cluster", () =>
  clusterTests(async () => {
    const redis = await startRedisCluster();
    return { redis, nodes: await startNodes(["--redis-url", redis.urls.join(","), "--redis-cluster", ...CLUSTER_LIMITS], {
        count: 2,
      }) };
  }));
