// deploy/nginx.conf in front of three gateway nodes, driven by the official socket.io-client
// with its default transports (long-polling, then the upgrade to WebSocket): every request of
// a session reaches the node that holds it, users spread over the nodes, messages arrive
// before and after the upgrade, and when a node dies its clients reconnect through nginx to
// the others. The nodes here are single-node gateways (no Redis): what is checked is the
// load balancer; cluster.test.mjs checks delivery across nodes behind the same nginx.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, Client, sendDirect, delivered, listOnlineAll, closeAll, sleep, WAIT_MS } from "./helpers.mjs";
import { startNginx } from "./cluster_infra.mjs";

const nodes = [];
const clients = [];
let nginx;

before(async () => {
  for (let i = 0; i < 3; i++) nodes.push(await startGateway());
  nginx = await startNginx(nodes.map((n) => n.httpPort));
});

after(async () => {
  closeAll(clients);
  await nginx?.cleanup();
  for (const n of nodes) await n.kill();
});

/** Default socket.io-client transports: polling first, then the upgrade to WebSocket. */
function defaultTransportClient(userId, opts = {}) {
  const c = new Client(nginx.url, { userId, transports: ["polling", "websocket"], ...opts });
  clients.push(c);
  return c;
}

async function waitUpgraded(c, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  while (c.socket.io.engine?.transport?.name !== "websocket") {
    if (Date.now() > deadline) throw new Error(`no upgrade to WebSocket within ${timeoutMs} ms`);
    await sleep(20);
  }
}

/** userId -> index of the live node whose ListOnline has it (asserting it is on one only). */
async function placement(users, live = nodes) {
  const where = new Map();
  for (const [i, n] of nodes.entries()) {
    if (!live.includes(n)) continue;
    for (const id of (await listOnlineAll(n.grpcAddr)).ids) {
      if (!users.includes(id)) continue;
      assert.ok(!where.has(id), `${id} is online on node ${where.get(id)} and node ${i}`);
      where.set(id, i);
    }
  }
  return where;
}

async function waitPlaced(users, live, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const where = await placement(users, live);
    if (users.every((u) => where.has(u))) return where;
    if (Date.now() > deadline) {
      throw new Error(`not every user online within ${timeoutMs} ms: ${JSON.stringify([...where])}`);
    }
    await sleep(100);
  }
}

test("default transports through nginx: sessions stick to one node, users spread, messages arrive before and after the upgrade", async () => {
  const users = Array.from({ length: 12 }, (_, i) => `lb-${i}`);
  const cs = users.map((u) => defaultTransportClient(u));
  // Connected over polling: the handshake, the namespace connect and the first long-poll
  // are separate HTTP requests that must all reach the same node.
  await Promise.all(cs.map((c) => c.connect()));
  const where = await waitPlaced(users, nodes, WAIT_MS);
  const used = new Set(where.values());
  assert.ok(used.size >= 2, `12 users all hashed to one node: ${JSON.stringify([...where])}`);

  for (const [k, c] of cs.entries()) {
    await waitUpgraded(c);
    const since = c.mark();
    const node = nodes[where.get(users[k])];
    const resp = await sendDirect(node.grpcAddr, { receiver_id: users[k], message: { after: "upgrade", k } });
    assert.equal(delivered(resp), 1, `${users[k]} on node ${where.get(users[k])}`);
    const got = await c.waitFor("newMessage", { since });
    assert.deepEqual(got.args[0], { after: "upgrade", k });
    assert.ok(c.connected, "still connected after the upgrade");
  }
  // The upgrade kept each session on its node (no reconnect, no second socket anywhere).
  assert.deepEqual(await placement(users), where);
  for (const c of cs) assert.equal(c.received("connect").length, 1, "one connect per client: no reconnect");
  closeAll(cs);
});

test("a polling-only client through nginx receives message after message over many long-polls", async () => {
  const user = "lb-polling";
  const c = defaultTransportClient(user, { transports: ["polling"] });
  await c.connect();
  const where = await waitPlaced([user], nodes, WAIT_MS);
  const node = nodes[where.get(user)];
  for (let i = 0; i < 5; i++) {
    const since = c.mark();
    assert.equal(delivered(await sendDirect(node.grpcAddr, { receiver_id: user, message: i })), 1);
    assert.equal((await c.waitFor("newMessage", { since })).args[0], i);
  }
  assert.equal(c.socket.io.engine.transport.name, "polling");
  c.close();
});

test("kill -9 one node: its clients reconnect through nginx and come back online on the other nodes", async () => {
  const users = Array.from({ length: 12 }, (_, i) => `re-${i}`);
  const cs = users.map((u) =>
    defaultTransportClient(u, { reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 500 }),
  );
  await Promise.all(cs.map((c) => c.connect()));
  await Promise.all(cs.map((c) => waitUpgraded(c)));
  const where = await waitPlaced(users, nodes, WAIT_MS);
  // The node holding the most of these users goes.
  const counts = [0, 1, 2].map((i) => [...where.values()].filter((n) => n === i).length);
  const victim = counts.indexOf(Math.max(...counts));
  const moved = users.filter((u) => where.get(u) === victim);
  const t0 = Date.now();
  await nodes[victim].kill();
  const live = nodes.filter((_, i) => i !== victim);
  const after = await waitPlaced(users, live, 15_000);
  console.log(`# ${moved.length} users of the killed node back online on the others in ${Date.now() - t0} ms`);
  for (const u of moved) assert.notEqual(after.get(u), victim);
  // Those that were elsewhere did not move.
  for (const u of users.filter((x) => !moved.includes(x))) assert.equal(after.get(u), where.get(u), u);
  // And they receive messages on their new node.
  for (const u of moved) {
    const c = cs[users.indexOf(u)];
    const since = c.mark();
    assert.equal(delivered(await sendDirect(nodes[after.get(u)].grpcAddr, { receiver_id: u, message: "back" })), 1);
    await c.waitFor("newMessage", { since });
  }
  closeAll(cs);
});
