// SIGTERM with clients connected: they get disconnected, the process exits 0 within 5 s.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, stopAndAssertClean, sendDirect, delivered, connectUser, closeAll, SHUTDOWN_MS } from "./helpers.mjs";

const gateways = [];
const clients = [];

after(async () => {
  closeAll(clients);
  for (const gw of gateways) await gw.kill();
});

test("SIGTERM with WebSocket and polling clients connected: clients are disconnected, exit 0 within 5 s", async () => {
  const gw = await startGateway();
  gateways.push(gw);
  const ws = await connectUser(gw.url, "sam-ws", { transports: ["websocket"] });
  const ws2 = await connectUser(gw.url, "sam-ws"); // second tab
  const poll = await connectUser(gw.url, "sam-polling", { transports: ["polling"] });
  const upgraded = await connectUser(gw.url, "sam-upgrade", { transports: ["polling", "websocket"] });
  const all = [ws, ws2, poll, upgraded];
  clients.push(...all);
  await ws.waitOnlineUsers((ids) => ["sam-ws", "sam-polling", "sam-upgrade"].every((u) => ids.includes(u)));
  const since = ws.mark();
  assert.equal(delivered(await sendDirect(gw.grpcAddr, { receiver_id: "sam-ws", message: "before stop" })), 2);
  await ws.waitFor("newMessage", { since });

  const disconnected = Promise.all(all.map((c) => c.waitFor("disconnect", { timeoutMs: SHUTDOWN_MS + 1_000 })));
  const res = await stopAndAssertClean(gw);
  await disconnected; // every client saw `disconnect` (bounded wait)
  assert.ok(all.every((c) => !c.connected), "no client is still connected");
  assert.ok(res.ms <= SHUTDOWN_MS, `exit took ${res.ms} ms`);
});

test("SIGTERM on an idle gateway: exit 0 within 5 s, ports released", async () => {
  const gw = await startGateway();
  gateways.push(gw);
  await stopAndAssertClean(gw);
  // The ports are free again: a new gateway can bind the very same addresses.
  const again = await startGateway({ httpPort: gw.httpPort, grpcPort: gw.grpcPort });
  gateways.push(again);
  await stopAndAssertClean(again);
});
