// Connection state recovery on one node, proven with the official socket.io-client 4.8 (in
// Node and in headless Chromium): a tab whose transport closes (socket.io.engine.close()) or
// whose TCP connection dies reconnects by itself with the pid and offset the gateway gave it,
// gets `recovered === true`, its previous socket id, and every message sent to it meanwhile,
// once each and in order, before any new one. Refused recoveries (unknown pid, another user's,
// expired, overflowed) start a new session with none of the old messages, counted in the
// metrics; with --recovery-window-ms 0 the protocol is exactly the old one.
//
// Each tab is held away by pointing its reconnection at a port nothing listens on (its
// attempts are refused, as on a dead network) until the test lets it back: the 50 messages
// are all sent while it is away, whatever the machine's speed.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, CHROMIUM_BIN, WAIT_MS, launchChromium, sleep } from "./helpers.mjs";
import {
  AWAY,
  AWAY_GAUGE,
  LIVE,
  NOBODY,
  QUIET_MS,
  assertAnswers,
  attempts,
  attemptsDelta,
  deadUrl,
  droppedTab,
  isOnline,
  openTab,
  range,
  recoverySuite,
  sample,
  sendEach,
  toValue,
  unary,
  until,
  waitAway,
  watchPresence,
} from "./recovery_helpers.mjs";

describe("recovery on (the default window)", () => {
  const s = recoverySuite();

  for (const [how, transport, what] of [
    ["close", "websocket", "socket.io.engine.close()"],
    ["tcp", "websocket", "the TCP socket destroyed"],
    ["close", "polling", "socket.io.engine.close()"],
  ]) {
    test(`[${transport}] ${what}: 50 messages sent meanwhile arrive once each, in order, before the next; same socket id, recovered`, async () => {
      const user = `rec-${how}-${transport}`;
      const { tab, id, pid, offset, since, away } = await droppedTab(s.gateway(), user, { how, tabOpts: { transports: [transport] } });
      // The protocol as socket.io 4.8's server speaks it: a pid in the CONNECT answer, the
      // offset as the last argument of each event.
      assert.equal(typeof tab.gotConnects[0]?.pid, "string", `CONNECT answer: ${JSON.stringify(tab.gotConnects)}`);
      assert.equal(typeof offset, "string", "the offset of \"before\"");
      const [first] = tab.received("newMessage");
      assert.deepEqual({ args: first.args, offset: first.offset }, { args: ["before"], offset });

      assert.ok(await isOnline(s.rpc(), user), `${user} stays online while away`);
      assertAnswers(await sendEach(s.rpc(), user, range(50)), AWAY, "sent while away");
      const a0 = await attempts(s.metrics());
      const back = await tab.letBack();
      const afterAnswer = await sendEach(s.rpc(), user, ["after"]);
      assert.deepEqual(back, { id, recovered: true }, "the reconnect");
      assert.deepEqual(tab.sentConnects.at(-1), { pid, offset }, "the CONNECT of the reconnect");
      assert.deepEqual(await tab.settle(since, 51), [...range(50), "after"]);
      const offsets = tab.received("newMessage", since).map((e) => e.offset);
      assert.ok(offsets.every((o) => typeof o === "string"), JSON.stringify(offsets));
      assert.equal(new Set([offset, ...offsets]).size, 52, `distinct offsets: ${JSON.stringify(offsets)}`);
      assert.deepEqual(attemptsDelta(a0, await attempts(s.metrics())), { recovered: 1 });
      await waitAway(s.metrics(), away, "the recovered session is no longer away");
      assertAnswers(afterAnswer, LIVE, "sent right after the reconnect (the socket is connected)");
    });
  }

  test("a socket that received nothing before the drop recovers too (its CONNECT carries a pid and no offset)", async () => {
    const user = "rec-silent";
    const tab = await openTab(s.gw.url, user, s.clients, { query: { presence: "none" } });
    await sleep(QUIET_MS);
    assert.deepEqual(tab.events.map((e) => e.event), ["connect"], "no event before the drop");
    const { id } = tab.socket;
    const { pid } = tab;
    const away = await sample(s.metrics(), AWAY_GAUGE);
    await tab.drop("close", await deadUrl());
    await waitAway(s.metrics(), away + 1);
    const since = tab.mark();
    assertAnswers(await sendEach(s.rpc(), user, range(10)), AWAY, "sent while away");
    const back = await tab.letBack();
    assert.deepEqual(tab.sentConnects.at(-1), { pid });
    assert.deepEqual(back, { id, recovered: true });
    assert.deepEqual(await tab.settle(since, 10), range(10));
  });

  test("two sockets of one user (two managers), one dropped: the other gets each message once, the dropped one recovers all", async () => {
    const user = "rec-two-tabs";
    const stays = await openTab(s.gw.url, user, s.clients);
    const { tab, id, since, away } = await droppedTab(s.gateway(), user, { beforeAnswer: { ...LIVE, delivered: 2 } });
    assert.deepEqual(await stays.settle(0, 1), ["before"]);
    const staysSince = stays.mark();
    assertAnswers(await sendEach(s.rpc(), user, range(50)), { delivered: 1, pending: 1, acked: 0 }, "one live, one away");
    assert.deepEqual(await stays.settle(staysSince, 50), range(50), "the tab that stayed");
    const back = await tab.letBack();
    assert.deepEqual(back, { id, recovered: true });
    const afterAnswer = await sendEach(s.rpc(), user, ["after"]);
    assert.deepEqual(await tab.settle(since, 51), [...range(50), "after"], "the recovered tab");
    assert.deepEqual(stays.messages(staysSince), [...range(50), "after"], "the tab that stayed, unaffected");
    assert.equal(stays.received("disconnect").length, 0);
    assert.equal(stays.connects.length, 1);
    await waitAway(s.metrics(), away);
    assertAnswers(afterAnswer, { ...LIVE, delivered: 2 }, "sent right after the reconnect (both connected)");
  });

  test("a forged or tampered pid gets a new session (recovered false) and none of the messages kept for the real one", async () => {
    const user = "rec-forged";
    const { tab, id, pid, offset, since } = await droppedTab(s.gateway(), user);
    assertAnswers(await sendEach(s.rpc(), user, range(3)), AWAY, "sent while away");
    const tampered = pid.slice(0, -1) + (pid.endsWith("A") ? "B" : "A");
    for (const forged of ["forged-pid-0123456789", tampered]) {
      const a0 = await attempts(s.metrics());
      const intruder = await openTab(s.gw.url, user, s.clients, { auth: { pid: forged, offset } });
      assert.deepEqual(intruder.sentConnects[0], { pid: forged, offset });
      assert.equal(intruder.connects[0].recovered, false, `pid ${forged}`);
      assert.notEqual(intruder.socket.id, id);
      await sleep(QUIET_MS);
      assert.deepEqual(intruder.messages(), [], `pid ${forged}: none of the kept messages`);
      assert.deepEqual(attemptsDelta(a0, await attempts(s.metrics())), { unknown: 1 }, `pid ${forged}`);
      intruder.close();
    }
    // The real session was not touched by the attempts.
    const back = await tab.letBack();
    assert.deepEqual(back, { id, recovered: true });
    assert.deepEqual(await tab.settle(since, 3), range(3));
  });

  test("bob presenting alice's pid and offset gets a new session of his own, none of alice's messages", async () => {
    const alice = "rec-alice";
    const bob = "rec-bob";
    const { tab, id, pid, offset, since } = await droppedTab(s.gateway(), alice);
    assertAnswers(await sendEach(s.rpc(), alice, range(3, 100)), AWAY, "sent to alice while away");
    const a0 = await attempts(s.metrics());
    const b = await openTab(s.gw.url, bob, s.clients, { auth: { pid, offset } });
    assert.deepEqual(b.sentConnects[0], { pid, offset });
    assert.equal(b.connects[0].recovered, false);
    assert.notEqual(b.socket.id, id);
    assert.notEqual(b.pid, pid, "a pid of his own");
    await sleep(QUIET_MS);
    assert.deepEqual(b.messages(), [], "none of alice's messages");
    assert.deepEqual(attemptsDelta(a0, await attempts(s.metrics())), { other_user: 1 });
    assertAnswers(await sendEach(s.rpc(), bob, ["for bob"]), LIVE, "bob's own");
    assert.deepEqual(await b.settle(0, 1), ["for bob"]);
    assert.ok(await isOnline(s.rpc(), alice), "alice is still away within her window");
    // Not part of the contract: whether alice's own session survived bob's attempt.
    const back = await tab.letBack();
    await sleep(QUIET_MS);
    console.log(`# alice after bob's attempt: recovered ${back.recovered}, messages ${JSON.stringify(tab.messages(since))}`);
  });

  test("a watcher sees no offline/online flap of a user who recovers (getOnlineUsers lists, change sets, WatchPresence)", async () => {
    const user = "rec-presence";
    const lists = await openTab(s.gw.url, "rec-watch-list", s.clients);
    const changes = await openTab(s.gw.url, "rec-watch-changes", s.clients, { query: { presence: "changes" } });
    const watch = watchPresence(s.rpc());
    try {
      await watch.ready;
      const tab = await openTab(s.gw.url, user, s.clients);
      await lists.waitOnlineUsers((ids) => ids.includes(user));
      await changes.waitChangesSet((set) => set.has(user));
      await until(async () => watch.changes, (c) => c.some((x) => x.user === user && x.online), WAIT_MS, "WatchPresence: online");
      const marks = { lists: lists.mark(), changes: changes.mark(), watch: watch.changes.length };
      const away = await sample(s.metrics(), AWAY_GAUGE);
      await tab.drop("tcp", await deadUrl());
      await waitAway(s.metrics(), away + 1);
      await sleep(500); // ten presence rounds of the default 50 ms
      assertAnswers(await sendEach(s.rpc(), user, range(3)), AWAY, "sent while away");
      assert.ok(await isOnline(s.rpc(), user));
      assert.equal((await tab.letBack()).recovered, true);
      await sleep(500);
      const lost = lists.received("getOnlineUsers", marks.lists).filter((e) => !e.args[0].includes(user));
      assert.deepEqual(lost, [], "getOnlineUsers lists without the user");
      const offline = changes.received("onlineUsersChanged", marks.changes).filter((e) => e.args[0].offline.includes(user));
      assert.deepEqual(offline, [], "change sets taking the user offline");
      assert.ok(changes.changesSet().has(user));
      assert.deepEqual(watch.changes.slice(marks.watch).filter((c) => c.user === user), [], "WatchPresence changes");
    } finally {
      watch.end();
    }
  });

  test("an ack_timeout_ms SendDirect sent while the tab is away is acked after the recovery: acked_sockets 1", async () => {
    const user = "rec-ack";
    const { tab, id, since } = await droppedTab(s.gateway(), user);
    tab.socket.on("newMessage", (...args) => typeof args.at(-1) === "function" && args.at(-1)());
    const t0 = Date.now();
    const call = unary(s.rpc(), "SendDirect", { receiver_id: user, message: toValue("ack me"), ack_timeout_ms: 5_000 }, 10_000);
    await sleep(QUIET_MS);
    assert.equal((await tab.letBack()).id, id);
    const resp = await call;
    const ms = Date.now() - t0;
    assert.deepEqual(
      { delivered: resp.delivered_sockets, pending: resp.pending_sockets, acked: resp.acked_sockets },
      { delivered: 0, pending: 1, acked: 1 },
      JSON.stringify(resp),
    );
    assert.ok(ms < 4_000, `answered ${ms} ms after the send: at the ack, not at the 5 s timeout`);
    assert.deepEqual(await tab.settle(since, 1), ["ack me"], "once");
    const [ev] = tab.received("newMessage", since);
    assert.equal(ev.args.length, 2, "an event with an ack request carries no offset");
    assert.equal(ev.offset, undefined);
    assert.equal(ev.args[0], "ack me");
    assert.equal(typeof ev.args[1], "function");
  });

  s.testCleanExit();
});

describe("--recovery-window-ms 1500: a tab back after its window", () => {
  const s = recoverySuite(["--recovery-window-ms", "1500"]);

  test("gets a new session and none of the old messages; the user went offline when the window ended; nothing is kept", async () => {
    const user = "rec-expired";
    const { tab, id, since } = await droppedTab(s.gateway(), user);
    const t0 = Date.now();
    assertAnswers(await sendEach(s.rpc(), user, range(3)), AWAY, "sent within the window");
    await until(() => isOnline(s.rpc(), user), (on) => !on, WAIT_MS, `${user} offline after the window`);
    console.log(`# offline ${Date.now() - t0} ms after the drop was seen (window 1500 ms)`);
    assertAnswers(await sendEach(s.rpc(), user, ["lost"]), NOBODY, "sent after the window");
    await waitAway(s.metrics(), 0, "no session away after the window");
    const kept = () => sample(s.metrics(), "gateway_recovery_kept_bytes");
    await until(kept, (b) => b === 0, WAIT_MS, "gateway_recovery_kept_bytes back to 0");
    const a0 = await attempts(s.metrics());
    const back = await tab.letBack();
    assert.equal(back.recovered, false);
    assert.notEqual(back.id, id);
    const delta = attemptsDelta(a0, await attempts(s.metrics()));
    assert.ok(["expired", "unknown"].includes(Object.keys(delta)[0]) && Object.keys(delta).length === 1, JSON.stringify(delta));
    assert.equal(Object.values(delta)[0], 1, JSON.stringify(delta));
    assertAnswers(await sendEach(s.rpc(), user, ["after"]), LIVE, "the new session");
    assert.deepEqual(await tab.settle(since, 1), ["after"], "none of the old messages");
  });
});

describe("--recovery-max-events 5 --recovery-max-bytes 4096: a session whose missed events overflow", () => {
  const s = recoverySuite(["--recovery-max-events", "5", "--recovery-max-bytes", "4096"]);

  for (const [bound, messages] of [
    ["events", range(10)],
    ["bytes", range(3).map((i) => `${i}:${"x".repeat(2_000)}`)],
  ]) {
    test(`past --recovery-max-${bound}: recovered false, none of the old messages, counted`, async () => {
      const user = `rec-overflow-${bound}`;
      const { tab, id, since } = await droppedTab(s.gateway(), user, { tabOpts: { query: { presence: "none" } } });
      const o0 = await sample(s.metrics(), "gateway_recovery_overflows_total", { bound });
      const answers = await sendEach(s.rpc(), user, messages);
      console.log(`# ${bound} overflow: answers ${JSON.stringify(answers)}`);
      assert.deepEqual(answers[0], AWAY, "the first one is kept");
      const a0 = await attempts(s.metrics());
      const back = await tab.letBack();
      assert.equal(back.recovered, false);
      assert.notEqual(back.id, id);
      const delta = attemptsDelta(a0, await attempts(s.metrics()));
      assert.equal(Object.values(delta).reduce((x, y) => x + y, 0), 1, JSON.stringify(delta));
      assert.equal(delta.recovered, undefined, JSON.stringify(delta));
      console.log(`# ${bound} overflow: attempt counted as ${JSON.stringify(delta)}`);
      const overflows = () => sample(s.metrics(), "gateway_recovery_overflows_total", { bound });
      await until(overflows, (n) => n === o0 + 1, WAIT_MS, `gateway_recovery_overflows_total{bound="${bound}"} + 1`);
      assertAnswers(await sendEach(s.rpc(), user, ["after"]), LIVE, "the new session");
      assert.deepEqual(await tab.settle(since, 1), ["after"], "none of the old messages");
    });
  }

  test("the bounds are on missed events: a socket that received more than both bounds while connected recovers the 5 it missed", async () => {
    const user = "rec-busy";
    const tab = await openTab(s.gw.url, user, s.clients, { query: { presence: "none" } });
    const live = [...range(10, 100), ...range(3).map((i) => `${i}:${"x".repeat(2_000)}`)];
    assertAnswers(await sendEach(s.rpc(), user, live), LIVE, "received while connected");
    assert.deepEqual(await tab.settle(0, live.length), live);
    const since = tab.mark();
    const { id } = tab.socket;
    const o0 = await sample(s.metrics(), "gateway_recovery_overflows_total");
    const away = await sample(s.metrics(), AWAY_GAUGE);
    await tab.drop("close", await deadUrl());
    await waitAway(s.metrics(), away + 1);
    assertAnswers(await sendEach(s.rpc(), user, range(5)), AWAY, "5 missed, within --recovery-max-events 5");
    assert.deepEqual(await tab.letBack(), { id, recovered: true });
    assert.deepEqual(await tab.settle(since, 5), range(5));
    assert.equal(await sample(s.metrics(), "gateway_recovery_overflows_total"), o0, "no overflow");
  });
});

describe("--recovery-window-ms 0: recovery off, the old protocol", () => {
  const s = recoverySuite(["--recovery-window-ms", "0"]);

  test("no pid in CONNECT, no offset on events, and a drop recovers nothing", async () => {
    const user = "rec-off";
    const tab = await openTab(s.gw.url, user, s.clients);
    assert.deepEqual(Object.keys(tab.gotConnects[0]), ["sid"], JSON.stringify(tab.gotConnects));
    assertAnswers(await sendEach(s.rpc(), user, ["before"]), LIVE, "before the drop");
    await tab.settle(0, 1);
    const [first] = tab.received("newMessage");
    assert.deepEqual({ args: first.args, offset: first.offset }, { args: ["before"], offset: undefined });
    const lists = tab.received("getOnlineUsers");
    assert.ok(lists.length > 0 && lists.every((e) => e.args.length === 1), JSON.stringify(lists.map((e) => e.args)));
    const { id } = tab.socket;
    const since = tab.mark();
    await tab.drop("close", await deadUrl());
    await until(() => isOnline(s.rpc(), user), (on) => !on, WAIT_MS, `${user} offline at once`);
    assertAnswers(await sendEach(s.rpc(), user, range(3)), NOBODY, "sent while away");
    const back = await tab.letBack();
    // socket.io-client sets `recovered` from the pid, which this gateway never sends.
    assert.ok(!back.recovered, JSON.stringify(back));
    assert.notEqual(back.id, id);
    assert.deepEqual(tab.sentConnects, [null, null], "no pid sent back");
    assertAnswers(await sendEach(s.rpc(), user, ["after"]), LIVE, "the new session");
    assert.deepEqual(await tab.settle(since, 1), ["after"]);
    assert.equal(await sample(s.metrics(), "gateway_recovery_attempts_total"), 0);
  });
});

// ---------------------------------------------------------------------------------------
// Headless Chromium: a page with the socket.io-client browser bundle and default options
// (polling, then the upgrade to WebSocket), reconnection as fast as the client allows.

const BUNDLE = path.join(path.dirname(fileURLToPath(import.meta.url)), "node_modules/socket.io-client/dist/socket.io.min.js");
const PAGE = `<!doctype html>
<meta charset="utf-8">
<script src="/socket.io.min.js"></script>
<script>
  const params = new URLSearchParams(location.search);
  window.__events = [];
  const socket = io(params.get("gateway"), {
    query: { userId: params.get("userId") },
    reconnectionDelay: 50,
    reconnectionDelayMax: 100,
    randomizationFactor: 0,
  });
  window.__socket = socket;
  socket.on("connect", () => __events.push({ event: "connect", id: socket.id, recovered: socket.recovered }));
  socket.on("disconnect", (reason) => __events.push({ event: "disconnect", reason }));
  socket.on("newMessage", (...args) => __events.push({ event: "newMessage", args }));
</script>
`;

describe("headless Chromium", { skip: process.env.SKIP_BROWSER === "1" && "SKIP_BROWSER=1" }, () => {
  const s = recoverySuite();
  let browser;
  /** Serves the page and the bundle on a loopback port (the page's origin). */
  let server;
  let origin;
  before(async () => {
    if (!fs.existsSync(CHROMIUM_BIN)) {
      throw new Error(`${CHROMIUM_BIN} not found: install Debian's chromium (scripts/test does), set CHROMIUM_BIN, or SKIP_BROWSER=1 to skip`);
    }
    const bundle = fs.readFileSync(BUNDLE);
    server = http.createServer((req, res) => {
      const js = new URL(req.url, "http://x").pathname === "/socket.io.min.js";
      res.writeHead(200, { "content-type": js ? "application/javascript" : "text/html; charset=utf-8" });
      res.end(js ? bundle : PAGE);
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    origin = `http://127.0.0.1:${server.address().port}`;
    browser = await launchChromium((timeout) => chromium.launch({ executablePath: CHROMIUM_BIN, headless: true, args: CHROMIUM_ARGS, timeout }));
  });
  after(async () => {
    await browser?.close();
    server?.closeAllConnections();
    server?.close();
  });

  test("a page whose transport closes gets the 50 messages sent meanwhile, once each, in order; recovered, same id", async () => {
    const user = "rec-browser";
    const context = await browser.newContext();
    const log = [];
    try {
      const page = await context.newPage();
      page.on("console", (m) => log.push(`console.${m.type()}: ${m.text()}`));
      page.on("pageerror", (e) => log.push(`pageerror: ${e.message}`));
      await page.goto(`${origin}/?${new URLSearchParams({ gateway: s.gw.url, userId: user })}`, { timeout: WAIT_MS });
      const events = (name) => page.evaluate((n) => window.__events.filter((e) => e.event === n), name);
      const waitEvents = async (name, count) => {
        try {
          return await until(() => events(name), (l) => l.length >= count, WAIT_MS, `${count} ${name} in the page`);
        } catch (err) {
          err.message += `\npage log:\n${log.join("\n")}`;
          throw err;
        }
      };
      await waitEvents("connect", 1);
      await until(() => page.evaluate(() => window.__socket.io.engine?.transport?.name), (t) => t === "websocket", WAIT_MS, "the upgrade");
      assertAnswers(await sendEach(s.rpc(), user, ["before"]), LIVE, "before the drop");
      await waitEvents("newMessage", 1);

      const away = await sample(s.metrics(), AWAY_GAUGE);
      await page.evaluate((dead) => {
        window.__socket.io.uri = dead;
        window.__socket.io.engine.close();
      }, await deadUrl());
      await waitEvents("disconnect", 1);
      await waitAway(s.metrics(), away + 1);
      assertAnswers(await sendEach(s.rpc(), user, range(50)), AWAY, "sent while away");
      await page.evaluate((url) => (window.__socket.io.uri = url), s.gw.url);
      await waitEvents("connect", 2);
      const afterAnswer = await sendEach(s.rpc(), user, ["after"]);
      await waitEvents("newMessage", 52);
      await sleep(QUIET_MS);
      const [first, again] = await events("connect");
      assert.deepEqual(again, { event: "connect", id: first.id, recovered: true }, log.join("\n"));
      const all = await events("newMessage");
      assert.deepEqual(all.map((e) => e.args[0]), ["before", ...range(50), "after"]);
      const offsets = all.map((e) => e.args[1]);
      assert.ok(all.every((e) => e.args.length === 2 && typeof e.args[1] === "string"), JSON.stringify(offsets));
      assert.equal(new Set(offsets).size, all.length, `distinct offsets: ${JSON.stringify(offsets)}`);
      assertAnswers(afterAnswer, LIVE, "sent right after the reconnect (the page is connected)");
    } finally {
      await context.close();
    }
  });
});
