// Presence modes chosen at the handshake (`presence` in the query or auth): `list` (the
// default: the whole getOnlineUsers array on every change), `changes` (one whole list, then
// onlineUsersChanged {online, offline} change sets) and `none` (no presence events); any other
// value is refused with a connect_error.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gatewayForSuite, Client, connectUser, listOnlineAll, sendDirect, delivered, sleep } from "./helpers.mjs";

// Rounds 300 ms apart, so that a user can come and go within one.
const { gw, clients, testCleanExit } = gatewayForSuite({ extraArgs: ["--presence-interval-ms", "300"] });

const sameSet = (set, ids) => set !== undefined && set.size === ids.length && ids.every((id) => set.has(id));

async function user(id, opts = {}) {
  const c = await connectUser(gw.url, id, opts);
  clients.push(c);
  return c;
}

for (const transport of ["websocket", "polling"]) {
  test(`[${transport}] a changes client gets one whole list, then change sets that rebuild ListOnline exactly; a list client alongside gets whole arrays`, async () => {
    const t = transport;
    const watcher = await user(`ch-watcher-${t}`, { query: { presence: "changes" }, transports: [t] });
    const legacy = await user(`ch-legacy-${t}`, { transports: [t] });
    const first = await watcher.waitFor("getOnlineUsers");
    assert.ok(Array.isArray(first.args[0]), JSON.stringify(first.args));
    const want = async () => (await listOnlineAll(gw.grpcAddr)).ids;
    await watcher.waitChangesSet((set) => set.has(`ch-legacy-${t}`));

    // Users come and go: some stay, one leaves, and one comes and goes within one round.
    const stay = [];
    for (let i = 0; i < 5; i++) stay.push(await user(`ch-${t}-${i}`));
    const leaving = await user(`ch-${t}-leaving`);
    await watcher.waitChangesSet((set) => set.has(`ch-${t}-leaving`));
    leaving.close();
    const flicker = await user(`ch-${t}-flicker`);
    flicker.close();
    stay[2].close();
    const tab = await user(`ch-${t}-0`); // a second tab: no change at all
    let ids = await want();
    await watcher.waitChangesSet((set) => sameSet(set, ids), { timeoutMs: 5_000 });
    await sleep(700); // two more rounds: nothing else may arrive
    ids = await want();
    assert.ok(sameSet(watcher.changesSet(), ids), `reconstructed ${JSON.stringify([...watcher.changesSet()])} vs ListOnline ${JSON.stringify(ids)}`);
    assert.ok(!ids.includes(`ch-${t}-flicker`) && !ids.includes(`ch-${t}-leaving`), JSON.stringify(ids));
    // One whole list only (no resync was needed), then change sets.
    assert.equal(watcher.received("getOnlineUsers").length, 1);
    const changes = watcher.received("onlineUsersChanged");
    assert.ok(changes.length >= 2, `change sets: ${changes.length}`);
    for (const c of changes) {
      assert.deepEqual(Object.keys(c.args[0]).sort(), ["offline", "online"]);
      assert.ok(c.args[0].online.length + c.args[0].offline.length > 0, "no empty change set");
    }
    // The list client alongside: only whole arrays, the last one the same set.
    assert.equal(legacy.received("onlineUsersChanged").length, 0);
    assert.ok(legacy.received("getOnlineUsers").length >= 3);
    await legacy.waitOnlineUsers((list) => sameSet(new Set(list), ids) && list.length === ids.length);
    for (const c of [watcher, legacy, tab, ...stay]) c.close();
    await sleep(400);
  });
}

test("presence may be asked for in the auth payload; a second tab in changes mode gets the current list at connect", async () => {
  const first = await user("auth-changes", { auth: { presence: "changes" } });
  await first.waitChangesSet((set) => set.has("auth-changes"));
  assert.equal(first.received("getOnlineUsers").length, 1);
  const second = await user("auth-changes", { auth: { userId: "auth-changes", presence: "changes" } });
  const ids = (await listOnlineAll(gw.grpcAddr)).ids;
  await second.waitChangesSet((set) => sameSet(set, ids));
  const other = await user("auth-changes-other");
  await second.waitChangesSet((set) => set.has("auth-changes-other"));
  assert.ok(second.received("onlineUsersChanged").length >= 1);
  for (const c of [first, second, other]) c.close();
  await sleep(400);
});

test("a none client gets no presence events at all, and still its messages", async () => {
  const quiet = await user("quiet-one", { query: { presence: "none" } });
  const tab = await user("quiet-one", { query: { presence: "none" } }); // a second tab: no list at connect
  const others = [await user("quiet-other-1"), await user("quiet-other-2")];
  others[0].close();
  await sleep(1_000);
  const resp = await sendDirect(gw.grpcAddr, { receiver_id: "quiet-one", message: "hello" });
  assert.equal(delivered(resp), 2);
  for (const c of [quiet, tab]) {
    await c.waitFor("newMessage");
    assert.deepEqual(
      c.events.map((e) => e.event).filter((e) => e !== "connect" && e !== "newMessage"),
      [],
    );
  }
  for (const c of [quiet, tab, others[1]]) c.close();
  await sleep(400);
});

for (const [what, opts] of [
  ["an unknown query value", { query: { presence: "everything" } }],
  ["an empty query value", { query: { presence: "" } }],
  ["a number in auth", { auth: { userId: "bad-presence", presence: 5 } }],
]) {
  test(`${what} for presence gets a connect_error naming the modes`, async () => {
    const c = new Client(gw.url, { userId: "bad-presence", ...opts });
    clients.push(c);
    await assert.rejects(c.connect(), (err) => {
      assert.ok(err.cause, `expected a connect_error, got ${err.message}`);
      assert.match(err.cause.message, /invalid presence mode .*"list".*"changes".*"none"/);
      return true;
    });
    c.close();
  });
}

testCleanExit();
