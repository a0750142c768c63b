// Presence mode `watch` across three nodes on one Redis: a tab on one node hears of the
// watched users whose sockets are on the others (each change reaches each node once, through
// its presence replica, and fans out there through the watch index), a user online on two
// nodes going offline on one is no change, and SetWatchlist asked of any node replaces the
// lists of the user's watch tabs on every node.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connectUser, grpcOk, listOnlineAll, closeAll, sleep } from "./helpers.mjs";
import { startRedis, startNodes, until } from "./cluster_infra.mjs";

const SET = "messaging.v1.Messaging/SetWatchlist";
/** Bound on a change reaching every node (Redis round trips, coalescing). */
const CONVERGE_MS = 10_000;
const sorted = (set) => JSON.stringify([...(set ?? [])].sort());
const frames = (c) =>
  c.events.filter((e) => e.event === "getOnlineUsers" || e.event === "onlineUsersChanged").map((e) => [e.event, e.args[0]]);

async function waitWatched(c, want, timeoutMs = CONVERGE_MS) {
  await until(async () => sorted(c.changesSet()), (s) => s === sorted(want), timeoutMs, `watched set of a tab`);
}

describe("watch mode on three nodes on one Redis", () => {
  const clients = [];
  let redis;
  let nodes = [];
  before(async () => {
    redis = await startRedis();
    nodes = await startNodes(["--redis-url", redis.url]);
  });
  after(async () => {
    closeAll(clients);
    for (const n of nodes) await n.kill();
    await redis?.cleanup();
  });
  const on = async (node, id, opts = {}) => {
    const c = await connectUser(node.url, id, opts);
    clients.push(c);
    return c;
  };
  /** Waits until `node` counts `n` sockets of `id` on every node (its replica is current). */
  const seesSockets = async (node, id, n) => {
    const sockets = async () =>
      (await grpcOk(node.grpcAddr, "messaging.v1.Messaging/GetPresence", { user_ids: [id] })).users[0].sockets ?? 0;
    await until(sockets, (count) => count === n, CONVERGE_MS, `${n} sockets of ${id} seen from node ${node.id}`);
  };
  const onlineEverywhere = async (id, online = true) => {
    for (const n of nodes) {
      await until(async () => (await listOnlineAll(n.grpcAddr)).ids.includes(id), (v) => v === online, CONVERGE_MS, `${id} on node ${n.id}`);
    }
  };

  test("initial set, remote changes of watched users only, and a user on two nodes leaving one is no change", async () => {
    const [a, b, c] = nodes;
    await on(b, "u1");
    await onlineEverywhere("u1");
    const me = await on(a, "me", { query: { presence: "watch", watch: "u1,u2,u3" } });
    await me.waitFor("getOnlineUsers");
    assert.deepEqual(frames(me), [["getOnlineUsers", ["u1"]]]);
    await on(c, "u2");
    await on(c, "x"); // unwatched
    await waitWatched(me, ["u1", "u2"]);
    const u3b = await on(b, "u3");
    const u3c = await on(c, "u3");
    await waitWatched(me, ["u1", "u2", "u3"]);
    // Node a knows both of u3's tabs before one goes.
    await seesSockets(a, "u3", 2);
    const count = frames(me).length;
    u3b.close();
    await sleep(1_500);
    assert.equal(frames(me).length, count, `a change for u3 still on node c: ${JSON.stringify(frames(me).slice(count))}`);
    u3c.close();
    await waitWatched(me, ["u1", "u2"]);
    assert.deepEqual(frames(me).at(-1), ["onlineUsersChanged", { online: [], offline: ["u3"] }]);
    for (const [, data] of frames(me).slice(1)) {
      assert.ok(![...data.online, ...data.offline].includes("x"), JSON.stringify(data));
    }
  });

  test("SetWatchlist asked of one node replaces the lists of the user's tabs on the others", async () => {
    const [a, b, c] = nodes;
    await on(a, "s1");
    await on(b, "s2");
    const tabA = await on(a, "sw", { query: { presence: "watch", watch: "s1" } });
    const tabB = await on(b, "sw", { query: { presence: "watch", watch: "s1" } });
    await seesSockets(c, "sw", 2);
    await onlineEverywhere("s2");
    await waitWatched(tabB, ["s1"]);
    const resp = await grpcOk(c.grpcAddr, SET, { user_id: "sw", user_ids: ["s2", "s3"] });
    assert.deepEqual(resp, { updatedSockets: 2 });
    for (const t of [tabA, tabB]) {
      await waitWatched(t, ["s2"]);
      assert.deepEqual(frames(t).at(-1), ["onlineUsersChanged", { online: ["s2"], offline: ["s1"] }]);
    }
    await on(c, "s3");
    await waitWatched(tabA, ["s2", "s3"]);
    await waitWatched(tabB, ["s2", "s3"]);
  });
});
