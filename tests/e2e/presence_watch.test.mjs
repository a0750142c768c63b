// Presence mode `watch`: a tab names the users it watches (`watch` in the auth as an array or
// in the query comma-separated with --auth none, the `watchlist` claim with --auth jwt); it
// gets getOnlineUsers with those of them online, once, then onlineUsersChanged with watched
// ids only. SetWatchlist (grpcurl) replaces the lists of a user's tabs, each told only what
// changes; renewToken with a new claim replaces its tab's list; more than --max-watchlist ids
// or an invalid id is a connect_error.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { gatewayForSuite, Client, connectUser, freePort, grpcCall, grpcOk, mintHs256, sleep, WAIT_MS } from "./helpers.mjs";
import { AWAY_GAUGE, Tab, deadUrl, sample, waitAway } from "./recovery_helpers.mjs";

const SET = "messaging.v1.Messaging/SetWatchlist";
const sorted = (set) => [...(set ?? [])].sort();

/** Every watch frame a tab got, as [event, data] with data compact. */
const frames = (c) =>
  c.events.filter((e) => e.event === "getOnlineUsers" || e.event === "onlineUsersChanged").map((e) => [e.event, e.args[0]]);

/** Waits until the set the tab rebuilds now (getOnlineUsers then change sets) is `want`. */
async function waitWatched(c, want, timeoutMs = WAIT_MS) {
  const w = JSON.stringify([...want].sort());
  const t0 = Date.now();
  while (JSON.stringify(sorted(c.changesSet())) !== w) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`watched set ${JSON.stringify(sorted(c.changesSet()))}, want ${w}`);
    await sleep(20);
  }
}

describe("watch mode with --auth none", () => {
  let metricsUrl;
  const { gw, clients, testCleanExit } = gatewayForSuite(async () => {
    const port = await freePort();
    metricsUrl = `http://127.0.0.1:${port}/metrics`;
    return { extraArgs: ["--presence-interval-ms", "200", "--max-watchlist", "5", "--metrics-addr", `127.0.0.1:${port}`] };
  });
  const user = async (id, opts = {}) => {
    const c = await connectUser(gw.url, id, opts);
    clients.push(c);
    return c;
  };

  test("the initial set, then changes of watched users only; a second tab's going is no change", async () => {
    const a1 = await user("w1-a");
    await user("w1-x");
    const tab = await user("w1-me", { query: { presence: "watch", watch: "w1-a,w1-b,w1-c" } });
    await tab.waitFor("getOnlineUsers");
    assert.deepEqual(frames(tab), [["getOnlineUsers", ["w1-a"]]]);
    const b = await user("w1-b");
    await waitWatched(tab, ["w1-a", "w1-b"]);
    // Unwatched users come and go; a opens a second tab and closes the first: nothing.
    const since = tab.mark();
    const y = await user("w1-y");
    y.close();
    await user("w1-a");
    a1.close();
    await sleep(800);
    assert.deepEqual(frames(tab).slice(1 + 1), [], JSON.stringify(tab.events.slice(since).map((e) => e.event)));
    b.close();
    await waitWatched(tab, ["w1-a"]);
    assert.deepEqual(frames(tab).at(-1), ["onlineUsersChanged", { online: [], offline: ["w1-b"] }]);
    assert.equal(tab.received("getOnlineUsers").length, 1);
  });

  test("the watchlist may come as an array in the auth payload", async () => {
    await user("w2-a");
    const tab = await user("w2-me", { auth: { userId: "w2-me", presence: "watch", watch: ["w2-a", "w2-b"] } });
    await tab.waitFor("getOnlineUsers");
    assert.deepEqual(frames(tab), [["getOnlineUsers", ["w2-a"]]]);
  });

  test("SetWatchlist replaces the list of every watch tab of the user, each told only the difference", async () => {
    await user("w3-a");
    await user("w3-b");
    const t1 = await user("w3-me", { query: { presence: "watch", watch: "w3-a,w3-z" } });
    const t2 = await user("w3-me", { auth: { userId: "w3-me", presence: "watch", watch: ["w3-a"] } });
    const listTab = await user("w3-me"); // a list tab: not counted, not changed
    const resp = await grpcOk(gw.grpcAddr, SET, { user_id: "w3-me", user_ids: ["w3-b", "w3-z", "w3-c"] });
    assert.deepEqual(resp, { updatedSockets: 2 });
    for (const t of [t1, t2]) {
      await t.waitFor("onlineUsersChanged");
      assert.deepEqual(frames(t).at(-1), ["onlineUsersChanged", { online: ["w3-b"], offline: ["w3-a"] }]);
    }
    // The new list holds from now on: c is watched, a is not.
    await user("w3-a-2");
    const c = await user("w3-c");
    await waitWatched(t1, ["w3-b", "w3-c"]);
    await waitWatched(t2, ["w3-b", "w3-c"]);
    c.close();
    await waitWatched(t1, ["w3-b"]);
    assert.equal(listTab.received("onlineUsersChanged").length, 0);
    // Nobody watching: 0 sockets; bad requests are INVALID_ARGUMENT.
    assert.deepEqual(await grpcOk(gw.grpcAddr, SET, { user_id: "w3-nobody", user_ids: ["w3-a"] }), {});
    for (const bad of [
      { user_id: "", user_ids: [] },
      { user_id: "w3-me", user_ids: ["a", "b", "c", "d", "e", "f"] },
      { user_id: "w3-me", user_ids: ["ok", " "] },
    ]) {
      const res = await grpcCall(gw.grpcAddr, SET, bad);
      assert.match(res.stderr, /InvalidArgument/, JSON.stringify(bad));
    }
  });

  test("a watch tab whose connection drops recovers its list with its session: a change made meanwhile comes with the replay, later ones after it", async () => {
    const tab = new Tab(gw.url, { userId: "w5-me", query: { presence: "watch", watch: "w5-a,w5-b" } });
    clients.push(tab);
    await tab.connect();
    await tab.waitFor("getOnlineUsers");
    const away = await sample(metricsUrl, AWAY_GAUGE);
    await tab.drop("close", await deadUrl());
    await waitAway(metricsUrl, away + 1);
    await user("w5-a"); // while it is away
    await sleep(600);
    const back = await tab.letBack();
    assert.equal(back.recovered, true);
    await waitWatched(tab, ["w5-a"]);
    await user("w5-b");
    await waitWatched(tab, ["w5-a", "w5-b"]);
    assert.equal(tab.received("getOnlineUsers").length, 1, JSON.stringify(frames(tab)));
  });

  for (const [what, opts, why] of [
    ["more ids than --max-watchlist", { query: { presence: "watch", watch: "a,b,c,d,e,f" } }, /invalid watchlist: has 6 user ids, more than the limit of 5/],
    ["an invalid id", { auth: { userId: "w4", presence: "watch", watch: ["ok", "bad\u0007"] } }, /invalid watchlist: user id #1 contains control characters/],
    ["a list that is not an array", { auth: { userId: "w4", presence: "watch", watch: "a,b" } }, /invalid watchlist: not an array/],
  ]) {
    test(`${what} is a connect_error saying so`, async () => {
      const c = new Client(gw.url, { userId: "w4", ...opts });
      clients.push(c);
      await assert.rejects(c.connect(), (err) => {
        assert.match(err.cause?.message ?? err.message, why);
        return true;
      });
    });
  }

  testCleanExit();
});

describe("watch mode with --auth jwt", () => {
  const secret = "watch-secret-of-enough-length";
  const { gw, clients, testCleanExit } = gatewayForSuite({
    extraArgs: ["--auth", "jwt", "--jwt-secret", secret, "--cors-origins", "http://localhost", "--presence-interval-ms", "200"],
  });
  const exp = () => Math.floor(Date.now() / 1000) + 600;
  const tab = async (sub, claims = {}, query = {}) => {
    const c = new Client(gw.url, { auth: { token: mintHs256({ sub, exp: exp(), ...claims }, secret) }, query });
    clients.push(c);
    await c.connect();
    return c;
  };

  test("the watchlist claim names the watched users (the handshake's watch is ignored); renewToken with a new claim replaces it", async () => {
    await tab("j-a");
    await tab("j-b");
    const me = await tab("j-me", { watchlist: ["j-a", "j-c"] }, { presence: "watch", watch: "j-b" });
    await me.waitFor("getOnlineUsers");
    assert.deepEqual(frames(me), [["getOnlineUsers", ["j-a"]]]);
    const renew = (claims) => me.socket.timeout(WAIT_MS).emitWithAck("renewToken", mintHs256({ sub: "j-me", exp: exp(), ...claims }, secret));
    // A renewal without the claim keeps the list.
    assert.equal((await renew({})).ok, true);
    await sleep(300);
    assert.equal(frames(me).length, 1);
    assert.equal((await renew({ watchlist: ["j-b", "j-c"] })).ok, true);
    await me.waitFor("onlineUsersChanged");
    assert.deepEqual(frames(me).at(-1), ["onlineUsersChanged", { online: ["j-b"], offline: ["j-a"] }]);
    await tab("j-c");
    await waitWatched(me, ["j-b", "j-c"]);
    // A claim over the bound or with a bad id is refused; the socket keeps its list.
    const refused = await renew({ watchlist: ["ok", ""] });
    assert.equal(refused.ok, false);
    assert.match(refused.error, /invalid watchlist/);
  });

  testCleanExit();
});
