// The gRPC side through the real grpcurl: reflection (grpcurl 1.8 asks v1alpha), health,
// SendDirect to nobody, and every INVALID_ARGUMENT case reachable from grpcurl's JSON.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import {
  gatewayForSuite,
  runGrpcurl,
  grpcCall,
  grpcOk,
  sendDirect,
  delivered,
  connectUser,
  sleep,
  REPO_ROOT,
} from "./helpers.mjs";

const { gw, clients, testCleanExit } = gatewayForSuite();

function assertInvalidArgument(res, fieldRe) {
  const ctx = `grpcurl exit ${res.code}\nstdout: ${res.stdout}\nstderr: ${res.stderr}`;
  assert.notEqual(res.code, 0, `grpcurl should fail: ${ctx}`);
  assert.match(res.stderr, /InvalidArgument/, ctx);
  assert.match(res.stderr, fieldRe, ctx);
}

test("grpcurl list shows the Messaging service, health, and both reflection versions", async () => {
  const res = await runGrpcurl(["-plaintext", "-max-time", "10", gw.grpcAddr, "list"]);
  assert.equal(res.code, 0, res.stderr);
  const services = res.stdout.split("\n").map((l) => l.trim()).filter(Boolean);
  for (const s of [
    "messaging.v1.Messaging",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
  ]) {
    assert.ok(services.includes(s), `list should show ${s}; got ${JSON.stringify(services)}`);
  }
});

test("grpcurl list messaging.v1.Messaging shows exactly the methods", async () => {
  const res = await runGrpcurl(["-plaintext", "-max-time", "10", gw.grpcAddr, "list", "messaging.v1.Messaging"]);
  assert.equal(res.code, 0, res.stderr);
  const methods = res.stdout.split("\n").map((l) => l.trim()).filter(Boolean);
  assert.ok(methods.includes("messaging.v1.Messaging.SendDirect"), res.stdout);
  assert.ok(methods.includes("messaging.v1.Messaging.ListOnline"), res.stdout);
});

test("grpcurl describe shows SendDirect and ListOnline with the contract's types", async () => {
  const res = await runGrpcurl(["-plaintext", "-max-time", "10", gw.grpcAddr, "describe", "messaging.v1.Messaging"]);
  assert.equal(res.code, 0, res.stderr);
  assert.match(res.stdout, /messaging\.v1\.Messaging is a service/);
  assert.match(
    res.stdout,
    /rpc SendDirect\s*\(\s*\.messaging\.v1\.SendDirectRequest\s*\)\s*returns\s*\(\s*\.messaging\.v1\.SendDirectResponse\s*\)/,
  );
  assert.match(
    res.stdout,
    /rpc ListOnline\s*\(\s*\.messaging\.v1\.ListOnlineRequest\s*\)\s*returns\s*\(\s*\.messaging\.v1\.ListOnlineResponse\s*\)/,
  );
});

/** The lines the README shows after `$ grpcurl -plaintext 127.0.0.1:50051 <command>`. */
function readmeOutput(command) {
  const readme = fs.readFileSync(path.join(REPO_ROOT, "README.md"), "utf8");
  const start = readme.indexOf(`$ grpcurl -plaintext 127.0.0.1:50051 ${command}\n`);
  assert.ok(start >= 0, `README.md shows no \`grpcurl ... ${command}\``);
  const after = readme.slice(readme.indexOf("\n", start) + 1);
  return after.slice(0, after.indexOf("\n\n")).split("\n");
}

test("the README's grpcurl list and describe output is what grpcurl prints, in its order", async () => {
  const list = await runGrpcurl(["-plaintext", "-max-time", "10", gw.grpcAddr, "list"]);
  assert.equal(list.code, 0, list.stderr);
  assert.deepEqual(readmeOutput("list"), list.stdout.trimEnd().split("\n"));
  const describe = await runGrpcurl(["-plaintext", "-max-time", "10", gw.grpcAddr, "describe", "messaging.v1.Messaging"]);
  assert.equal(describe.code, 0, describe.stderr);
  const rpcs = describe.stdout.split("\n").filter((l) => l.includes("rpc"));
  assert.deepEqual(readmeOutput("describe messaging.v1.Messaging | grep rpc"), rpcs);
});

test("the request/response messages keep the contract's field names, numbers and types", async () => {
  const expect = {
    "messaging.v1.SendDirectRequest": [
      /string receiver_id = 1;/,
      /\.google\.protobuf\.Value message = 2;/,
      /string sender_id = 3;/,
      /string event = 4;/,
    ],
    "messaging.v1.SendDirectResponse": [/uint32 delivered_sockets = 1;/],
    "messaging.v1.ListOnlineRequest": [/uint32 page_size = 1;/, /string page_token = 2;/],
    "messaging.v1.ListOnlineResponse": [
      /repeated string user_ids = 1;/,
      /string next_page_token = 2;/,
      /uint32 total = 3;/,
    ],
  };
  for (const [msg, fields] of Object.entries(expect)) {
    const res = await runGrpcurl(["-plaintext", "-max-time", "10", gw.grpcAddr, "describe", msg]);
    assert.equal(res.code, 0, `${msg}: ${res.stderr}`);
    for (const re of fields) assert.match(res.stdout, re, `${msg}:\n${res.stdout}`);
  }
});

test("grpc.health.v1.Health/Check reports SERVING", async () => {
  const res = await runGrpcurl(["-plaintext", "-max-time", "10", gw.grpcAddr, "grpc.health.v1.Health/Check"]);
  assert.equal(res.code, 0, res.stderr);
  assert.match(res.stdout, /"status": "SERVING"/);
});

test("SendDirect to an offline user delivers to 0 sockets and is not an error", async () => {
  const resp = await sendDirect(gw.grpcAddr, {
    receiver_id: "nobody-is-here",
    message: { text: "hello?" },
    sender_id: "svc",
  });
  // grpcurl omits zero fields: {} means delivered_sockets = 0.
  assert.deepEqual(resp, {});
  assert.equal(delivered(resp), 0);
});

test("SendDirect with an empty receiver_id is INVALID_ARGUMENT naming receiver_id", async () => {
  const res = await grpcCall(gw.grpcAddr, "messaging.v1.Messaging/SendDirect", {
    receiver_id: "",
    message: { text: "hi" },
    sender_id: "svc",
  });
  assertInvalidArgument(res, /receiver_id/);
  const res2 = await grpcCall(gw.grpcAddr, "messaging.v1.Messaging/SendDirect", { message: { text: "hi" } });
  assertInvalidArgument(res2, /receiver_id/);
});

test("SendDirect with a reserved event name is INVALID_ARGUMENT naming event", async () => {
  // An online receiver, so that the error cannot come from "nobody to deliver to".
  clients.push(await connectUser(gw.url, "reserved-target"));
  for (const event of ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"]) {
    const res = await grpcCall(gw.grpcAddr, "messaging.v1.Messaging/SendDirect", {
      receiver_id: "reserved-target",
      message: { text: "hi" },
      sender_id: "svc",
      event,
    });
    assertInvalidArgument(res, /event/);
  }
  const c = clients.at(-1);
  assert.equal(c.received("disconnect").length, 0, "the target socket must not have been disconnected");
  assert.ok(c.connected);
});

test("the gateway's own events are INVALID_ARGUMENT from every RPC and 400 from /demo/send; the tab gets nothing", async () => {
  // A forged "account suspended" reason or online list must not reach a tab.
  const user = "own-events-target";
  const target = await connectUser(gw.url, user);
  clients.push(target);
  await target.waitOnlineUsers((ids) => ids.includes(user));
  const since = target.mark();
  const rpc = (method, req) => grpcCall(gw.grpcAddr, `messaging.v1.Messaging/${method}`, req);
  const calls = ["getOnlineUsers", "onlineUsersChanged", "disconnectReason"].flatMap((event) => {
    const message = { text: `forged ${event}: account suspended, call +1-555-0100` };
    const demo = fetch(`${gw.url}/demo/send`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ receiver_id: user, event, message }),
    });
    return [
      ["SendDirect", rpc("SendDirect", { receiver_id: user, message, event })],
      ["SendToUsers", rpc("SendToUsers", { receiver_ids: [user], message, event })],
      ["Broadcast", rpc("Broadcast", { message, event })],
      ["SendStream", rpc("SendStream", { receiver_id: user, message, event, id: 7 })],
      ["/demo/send", demo],
    ].map(([what, call]) => ({ what: `${what} ${event}`, call, named: new RegExp(`event.*"${event}"`) }));
  });
  for (const { what, call, named } of calls) {
    const res = await call;
    if (what.startsWith("/demo/send")) {
      const body = await res.text();
      assert.equal(res.status, 400, `${what}: ${body}`);
      assert.match(JSON.parse(body).error, named, what);
    } else if (what.startsWith("SendStream")) {
      // SendStream answers each item: the call succeeds, the item carries the code.
      assert.equal(res.code, 0, `${what}: ${res.stderr}`);
      assert.equal(res.json.code, 3, `${what}: ${res.stdout}`);
      assert.match(res.json.error, named, what);
    } else {
      assertInvalidArgument(res, named);
    }
  }
  await sleep(300);
  const forged = target.events.slice(since).filter((e) => JSON.stringify(e.args).includes("forged"));
  assert.deepEqual(forged, [], "no forged event reached the tab");
  assert.equal(target.received("disconnect", since).length, 0);
  assert.ok(target.connected);
});

test("SendDirect without a message is INVALID_ARGUMENT naming message", async () => {
  const res = await grpcCall(gw.grpcAddr, "messaging.v1.Messaging/SendDirect", {
    receiver_id: "someone",
    sender_id: "svc",
  });
  assertInvalidArgument(res, /message/);
});

test("ListOnline with a garbage page_token is INVALID_ARGUMENT naming page_token", async () => {
  const res = await grpcCall(gw.grpcAddr, "messaging.v1.Messaging/ListOnline", { page_size: 1, page_token: "!!!" });
  assertInvalidArgument(res, /page_token/);
});

test("ListOnline with a tampered page_token is INVALID_ARGUMENT", async () => {
  clients.push(await connectUser(gw.url, "tamper-a"), await connectUser(gw.url, "tamper-b"));
  const first = await grpcOk(gw.grpcAddr, "messaging.v1.Messaging/ListOnline", { page_size: 1 });
  const token = first.nextPageToken;
  assert.ok(token, `page 1 of several should have a next_page_token: ${JSON.stringify(first)}`);
  // Change one character in the middle of the token to another of the same class.
  const i = Math.floor(token.length / 2);
  const ch = token[i];
  const repl = /[0-9]/.test(ch) ? (ch === "0" ? "1" : "0") : /[a-z]/.test(ch) ? (ch === "a" ? "b" : "a") : ch === "A" ? "B" : "A";
  const tampered = token.slice(0, i) + repl + token.slice(i + 1);
  assert.notEqual(tampered, token);
  const res = await grpcCall(gw.grpcAddr, "messaging.v1.Messaging/ListOnline", { page_size: 1, page_token: tampered });
  assertInvalidArgument(res, /page_token/);
});

test("the gateway still serves after the errors", async () => {
  const res = await runGrpcurl(["-plaintext", "-max-time", "10", gw.grpcAddr, "grpc.health.v1.Health/Check"]);
  assert.equal(res.code, 0, res.stderr);
  assert.match(res.stdout, /"status": "SERVING"/);
});

testCleanExit();
