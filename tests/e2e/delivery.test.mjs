// A SendDirect made with grpcurl arrives at the official socket.io-client, over WebSocket
// and over HTTP long-polling.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  gatewayForSuite,
  grpcCall,
  sendDirect,
  delivered,
  connectUser,
  Client,
  sleep,
} from "./helpers.mjs";

const { gw, clients, testCleanExit } = gatewayForSuite();

const QUIET_MS = 300;

for (const transport of ["websocket", "polling"]) {
  test(`[${transport}] a grpcurl SendDirect arrives as newMessage with exactly the JSON sent`, async () => {
    const alice = `alice-${transport}`;
    const bystander = `carol-${transport}`;
    const a = await connectUser(gw.url, alice, { transports: [transport] });
    const c = await connectUser(gw.url, bystander, { transports: [transport] });
    clients.push(a, c);
    await a.waitOnlineUsers((ids) => ids.includes(alice) && ids.includes(bystander));

    // The request text exactly as an operator would type it.
    const body = `{"receiver_id":"${alice}","message":{"text":"hi","n":1,"nested":{"a":[1,"two",true,null]}},"sender_id":"svc","event":""}`;
    const since = a.mark();
    const res = await grpcCall(gw.grpcAddr, "messaging.v1.Messaging/SendDirect", body, { inline: true });
    assert.equal(res.code, 0, res.stderr);
    assert.deepEqual(res.json, { deliveredSockets: 1 });

    const got = await a.waitFor("newMessage", { since });
    assert.deepEqual(got.args[0], { text: "hi", n: 1, nested: { a: [1, "two", true, null] } });

    await sleep(QUIET_MS);
    assert.equal(a.received("newMessage", since).length, 1, "exactly one newMessage");
    assert.equal(c.received("newMessage").length, 0, "a third user must receive nothing");
  });

  test(`[${transport}] a custom event name is emitted instead of newMessage`, async () => {
    const user = `evt-${transport}`;
    const u = await connectUser(gw.url, user, { transports: [transport] });
    clients.push(u);
    const since = u.mark();
    const resp = await sendDirect(gw.grpcAddr, {
      receiver_id: user,
      message: { orderId: 42, status: "shipped" },
      sender_id: "orders",
      event: "orderShipped",
    });
    assert.equal(delivered(resp), 1);
    const got = await u.waitFor("orderShipped", { since });
    assert.deepEqual(got.args[0], { orderId: 42, status: "shipped" });
    await sleep(QUIET_MS);
    assert.equal(u.received("newMessage", since).length, 0, "no newMessage when a custom event is given");
    assert.equal(u.received("orderShipped", since).length, 1);
  });

  test(`[${transport}] the user id may come from the auth payload`, async () => {
    const user = `auth-${transport}`;
    const u = new Client(gw.url, { auth: { userId: user }, transports: [transport] });
    clients.push(u);
    await u.connect();
    await u.waitOnlineUsers((ids) => ids.includes(user));
    const since = u.mark();
    const resp = await sendDirect(gw.grpcAddr, { receiver_id: user, message: { via: "auth" } });
    assert.equal(delivered(resp), 1);
    const got = await u.waitFor("newMessage", { since });
    assert.deepEqual(got.args[0], { via: "auth" });
  });

  test(`[${transport}] every JSON kind of message arrives exactly`, async () => {
    const user = `kinds-${transport}`;
    const u = await connectUser(gw.url, user, { transports: [transport] });
    clients.push(u);
    const messages = [
      "just a string",
      "",
      0,
      1,
      -42,
      3.5,
      0.1,
      1e21,
      9007199254740991,
      true,
      false,
      null,
      [],
      {},
      [1, [2, [3, [4, { deep: [null, false, "x"] }]]]],
      { a: { b: { c: { d: { e: { f: "deep" } } } } }, list: [{}, [], "", 0] },
    ];
    for (const message of messages) {
      const since = u.mark();
      const resp = await sendDirect(gw.grpcAddr, { receiver_id: user, message, sender_id: "svc" });
      assert.equal(delivered(resp), 1, `delivered for ${JSON.stringify(message)}`);
      const got = await u.waitFor("newMessage", { since });
      assert.deepEqual(got.args[0], message, `message ${JSON.stringify(message)}`);
    }
  });
}

test("messages to one receiver arrive in the order they were sent", async () => {
  const user = "ordered";
  const u = await connectUser(gw.url, user);
  clients.push(u);
  const since = u.mark();
  const N = 20;
  for (let i = 0; i < N; i++) {
    const resp = await sendDirect(gw.grpcAddr, { receiver_id: user, message: { seq: i } });
    assert.equal(delivered(resp), 1);
  }
  await u.waitFor("newMessage", { since, pred: (args) => args[0]?.seq === N - 1 });
  const seqs = u.received("newMessage", since).map((e) => e.args[0].seq);
  assert.deepEqual(seqs, [...Array(N).keys()]);
});

test("events sent by clients are ignored: no echo, no crash", async () => {
  const u = await connectUser(gw.url, "chatty");
  const other = await connectUser(gw.url, "listener");
  clients.push(u, other);
  const su = u.mark();
  const so = other.mark();
  u.socket.emit("newMessage", { text: "echo?" });
  u.socket.emit("getOnlineUsers");
  u.socket.emit("sendMessage", { receiverId: "listener", text: "hi" });
  u.socket.emit("anything", 1, "two", { three: [3] }, Buffer.from([1, 2, 3]));
  u.socket.emit("withAck", { x: 1 }, () => {});
  await sleep(QUIET_MS * 2);
  assert.deepEqual(
    u.received("newMessage", su).concat(other.received("newMessage", so)),
    [],
    "client events must not be echoed or relayed",
  );
  assert.ok(u.connected && other.connected, "both clients stay connected");
  const since = other.mark();
  const resp = await sendDirect(gw.grpcAddr, { receiver_id: "listener", message: "still alive" });
  assert.equal(delivered(resp), 1);
  const got = await other.waitFor("newMessage", { since });
  assert.equal(got.args[0], "still alive");
});

test("the default message limit (64 KiB of JSON): under it arrives, over it is RESOURCE_EXHAUSTED", async () => {
  const user = "sizes";
  const u = await connectUser(gw.url, user);
  clients.push(u);
  const under = { text: "x".repeat(60_000) };
  const since = u.mark();
  assert.equal(delivered(await sendDirect(gw.grpcAddr, { receiver_id: user, message: under })), 1);
  assert.deepEqual((await u.waitFor("newMessage", { since })).args[0], under);

  const over = { text: "x".repeat(70_000) };
  const res = await grpcCall(gw.grpcAddr, "messaging.v1.Messaging/SendDirect", { receiver_id: user, message: over });
  const ctx = `grpcurl exit ${res.code}\nstdout: ${res.stdout}\nstderr: ${res.stderr}`;
  assert.notEqual(res.code, 0, ctx);
  assert.match(res.stderr, /ResourceExhausted/, ctx);
  assert.match(res.stderr, /message/, ctx);
  await sleep(QUIET_MS);
  assert.equal(u.received("newMessage", since).length, 1, "the oversized message must not be delivered");
});

testCleanExit();
