// Connection state recovery across a cluster: three nodes on one Redis, nginx
// (deploy/nginx.conf) in front. A tab dropped on one node reconnects on another (its manager's
// URL moved there while it was away, so where it lands is chosen, not hashed) and gets every
// message sent meanwhile through a third node, once each, in order, before any new one, with
// its socket id; through nginx the reconnect lands on the node that held it and recovers there.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { WAIT_MS, closeAll, sleep } from "./helpers.mjs";
import { startRedis, startNginx, startNodes } from "./cluster_infra.mjs";
import {
  AWAY,
  AWAY_GAUGE,
  LIVE,
  QUIET_MS,
  assertAnswers,
  attempts,
  attemptsDelta,
  deadUrl,
  droppedTab,
  grpcClient,
  isOnline,
  openTab,
  range,
  sample,
  sendEach,
  until,
  waitAway,
} from "./recovery_helpers.mjs";

describe("three nodes on one Redis, nginx in front", () => {
  let redis;
  let nginx;
  let nodes = [];
  let rpcs = [];
  const clients = [];
  before(async () => {
    redis = await startRedis();
    nodes = await startNodes(["--redis-url", redis.url]);
    nginx = await startNginx(nodes.map((n) => n.httpPort));
    rpcs = nodes.map((n) => grpcClient(n.grpcAddr));
  });
  after(async () => {
    closeAll(clients);
    for (const rpc of rpcs) rpc.close();
    await nginx?.cleanup();
    for (const n of nodes) await n.kill();
    await redis?.cleanup();
  });
  /** Where droppedTab connects: node `i` directly, sending through node `via`. */
  const at = (i, via) => ({ url: nodes[i].url, metricsUrl: nodes[i].metricsUrl, rpc: rpcs[via], clients });

  for (const [how, from, to, via] of [
    ["close", 0, 1, 2],
    ["tcp", 1, 2, 0],
  ]) {
    test(`[${how}] a tab dropped on node ${"abc"[from]} recovers on node ${"abc"[to]}: 50 sent through node ${"abc"[via]} arrive once each, in order, before the next`, async () => {
      const user = `rec-move-${how}`;
      const { tab, id, pid, offset, since, away } = await droppedTab(at(from, via), user, { how });
      for (const [i, n] of nodes.entries()) assert.ok(await isOnline(rpcs[i], user), `online on node ${n.id} while away`);
      assertAnswers(await sendEach(rpcs[via], user, range(50)), AWAY, `sent through node ${"abc"[via]} while away`);
      const a0 = await attempts(nodes[to].metricsUrl);
      const back = await tab.letBack(nodes[to].url);
      const afterAnswer = await sendEach(rpcs[via], user, ["after"]);
      assert.deepEqual(tab.sentConnects.at(-1), { pid, offset });
      assert.deepEqual(back, { id, recovered: true }, "the reconnect on another node");
      assert.deepEqual(await tab.settle(since, 51), [...range(50), "after"]);
      assert.deepEqual(attemptsDelta(a0, await attempts(nodes[to].metricsUrl)), { recovered: 1 }, `counted on node ${"abc"[to]}`);
      await waitAway(nodes[from].metricsUrl, away, `the session leaves node ${"abc"[from]}`);
      assertAnswers(afterAnswer, LIVE, "sent right after the reconnect (the socket is connected)");
    });
  }

  test("through nginx (default transports): the reconnect lands on the same node and recovers there; 50 sent through another node", async () => {
    const user = "rec-nginx";
    const tab = await openTab(nginx.url, user, clients, { transports: ["polling", "websocket"] });
    await until(async () => tab.socket.io.engine?.transport?.name, (t) => t === "websocket", WAIT_MS, "the upgrade");
    await until(() => isOnline(rpcs[0], user), (on) => on, WAIT_MS, `${user} in ListOnline of node a`);
    assertAnswers(await sendEach(rpcs[0], user, ["before"]), LIVE, "before the drop");
    assert.deepEqual(await tab.settle(0, 1), ["before"]);
    const since = tab.mark();
    const { id } = tab.socket;
    const gauges = async () => Promise.all(nodes.map((n) => sample(n.metricsUrl, AWAY_GAUGE)));
    const away = await gauges();
    await tab.drop("close", await deadUrl());
    const { value } = await until(gauges, (v) => v.some((g, i) => g === away[i] + 1), WAIT_MS, "a node holds the session away");
    const home = value.findIndex((g, i) => g === away[i] + 1);
    const via = (home + 1) % nodes.length;
    assertAnswers(await sendEach(rpcs[via], user, range(50)), AWAY, `sent through node ${"abc"[via]} while away on node ${"abc"[home]}`);
    const a0 = await attempts(nodes[home].metricsUrl);
    const back = await tab.letBack(nginx.url);
    const afterAnswer = await sendEach(rpcs[via], user, ["after"]);
    assert.deepEqual(back, { id, recovered: true });
    assert.deepEqual(await tab.settle(since, 51), [...range(50), "after"]);
    assert.deepEqual(attemptsDelta(a0, await attempts(nodes[home].metricsUrl)), { recovered: 1 }, `counted on node ${"abc"[home]}`);
    assertAnswers(afterAnswer, LIVE, "sent right after the reconnect (the socket is connected)");
  });

  test("bob presenting alice's pid on another node gets a new session and none of alice's messages", async () => {
    const alice = "rec-cl-alice";
    const { id, pid, offset } = await droppedTab(at(0, 2), alice);
    assertAnswers(await sendEach(rpcs[2], alice, range(3)), AWAY, "sent to alice while away");
    const b0 = await attempts(nodes[1].metricsUrl);
    const bob = await openTab(nodes[1].url, "rec-cl-bob", clients, { auth: { pid, offset } });
    assert.equal(bob.connects[0].recovered, false);
    assert.notEqual(bob.socket.id, id);
    await sleep(QUIET_MS);
    assert.deepEqual(bob.messages(), [], "none of alice's messages");
    assert.deepEqual(attemptsDelta(b0, await attempts(nodes[1].metricsUrl)), { other_user: 1 });
  });
});
