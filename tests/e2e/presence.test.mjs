// Handshake and presence: the user id is required, getOnlineUsers on connect and on every
// presence change, coalesced in bursts, latest state always delivered.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gatewayForSuite, Client, connectUser, sleep } from "./helpers.mjs";

const { gw, clients, testCleanExit } = gatewayForSuite();

for (const transport of ["websocket", "polling"]) {
  for (const [what, opts] of [
    ["no userId at all", {}],
    ["an empty userId", { userId: "" }],
    ["an empty auth userId", { auth: { userId: "" } }],
  ]) {
    test(`[${transport}] a connection with ${what} gets a connect_error about the user id`, async () => {
      const c = new Client(gw.url, { transports: [transport], ...opts });
      clients.push(c);
      await assert.rejects(c.connect(), (err) => {
        assert.ok(err.cause, `expected a connect_error, got ${err.message}`);
        assert.match(err.cause.message, /user/i);
        return true;
      });
      assert.equal(c.connected, false);
      assert.equal(c.received("connect").length, 0);
      c.close();
    });
  }
}

for (const transport of ["websocket", "polling"]) {
  test(`[${transport}] a new socket receives getOnlineUsers that includes itself within 1 s`, async () => {
    const user = `frank-${transport}`;
    const c = new Client(gw.url, { userId: user, transports: [transport] });
    clients.push(c);
    await c.connect();
    const t0 = Date.now();
    const first = await c.waitFor("getOnlineUsers");
    assert.ok(Array.isArray(first.args[0]), `getOnlineUsers carries an array: ${JSON.stringify(first.args)}`);
    assert.ok(first.args[0].every((id) => typeof id === "string"), JSON.stringify(first.args[0]));
    const list = await c.waitOnlineUsers((ids) => ids.includes(user), { timeoutMs: 1_000 + (Date.now() - t0) });
    assert.equal(new Set(list).size, list.length, `no duplicates: ${JSON.stringify(list)}`);
    c.close();
  });
}

test("every socket is told when a user comes online and goes offline", async () => {
  const w1 = await connectUser(gw.url, "watcher-1");
  const w2 = await connectUser(gw.url, "watcher-2", { transports: ["polling"] });
  clients.push(w1, w2);
  await w1.waitOnlineUsers((ids) => ids.includes("watcher-1") && ids.includes("watcher-2"));
  await w2.waitOnlineUsers((ids) => ids.includes("watcher-1") && ids.includes("watcher-2"));

  const m1 = w1.mark();
  const m2 = w2.mark();
  const g = await connectUser(gw.url, "gina");
  clients.push(g);
  await w1.waitOnlineUsers((ids) => ids.includes("gina"), { since: m1 });
  await w2.waitOnlineUsers((ids) => ids.includes("gina"), { since: m2 });

  const o1 = w1.mark();
  const o2 = w2.mark();
  g.close();
  const l1 = await w1.waitOnlineUsers((ids) => !ids.includes("gina"), { since: o1 });
  const l2 = await w2.waitOnlineUsers((ids) => !ids.includes("gina"), { since: o2 });
  for (const l of [l1, l2]) {
    assert.ok(l.includes("watcher-1") && l.includes("watcher-2"), JSON.stringify(l));
  }
  w1.close();
  w2.close();
  await sleep(200);
});

test("a burst of connects and disconnects is coalesced (<= 1 broadcast per 50 ms) and ends on the latest state", async () => {
  const watcher = await connectUser(gw.url, "burst-watcher");
  clients.push(watcher);
  await watcher.waitOnlineUsers((ids) => ids.includes("burst-watcher"));
  await sleep(200); // let any earlier presence broadcast pass

  const N = 40;
  const users = Array.from({ length: N }, (_, i) => `burst-${String(i).padStart(2, "0")}`);
  const expectAll = ["burst-watcher", ...users].sort();

  const checkBurst = (since, label) => {
    const evs = watcher.received("getOnlineUsers", since);
    assert.ok(evs.length >= 1, `${label}: at least one broadcast`);
    const span = evs.at(-1).at - evs[0].at;
    // At most one broadcast per 50 ms window, plus slack for delivery jitter: the times are
    // when this client read them, and a client stalled on a loaded machine reads two or three
    // broadcasts sent 50 ms apart back to back (40 uncoalesced changes would be 40 lists).
    const bound = Math.floor(span / 50) + 3;
    assert.ok(
      evs.length <= bound,
      `${label}: ${evs.length} getOnlineUsers over ${span} ms (at most ${bound} allowed for 1 per 50 ms) for ${N} presence changes`,
    );
    return evs;
  };

  // N users connect at once.
  let since = watcher.mark();
  const burst = users.map((u) => new Client(gw.url, { userId: u }));
  clients.push(...burst);
  await Promise.all(burst.map((c) => c.connect()));
  await watcher.waitOnlineUsers((ids) => expectAll.every((u) => ids.includes(u)), { since });
  await sleep(300); // trailing broadcasts, if any
  let evs = checkBurst(since, "connect burst");
  assert.deepEqual([...evs.at(-1).args[0]].sort(), expectAll, "the last broadcast carries the final state");

  // ... and all disconnect at once.
  since = watcher.mark();
  for (const c of burst) c.close();
  await watcher.waitOnlineUsers((ids) => !users.some((u) => ids.includes(u)), { since });
  await sleep(300);
  evs = checkBurst(since, "disconnect burst");
  assert.deepEqual(evs.at(-1).args[0], ["burst-watcher"], "the last broadcast carries the final state");
  watcher.close();
});

testCleanExit();
