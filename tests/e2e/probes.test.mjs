// /healthz and /readyz on the HTTP port of the real binary, as a load balancer polls them:
// ready while serving; in cluster mode not ready while Redis is down and ready again once it
// is back; not ready (but alive) through the drain after SIGTERM, until the listeners close.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, stopAndAssertClean, sleep } from "./helpers.mjs";
import { startRedis } from "./cluster_infra.mjs";

/** How long Redis going away or coming back may take to show in /readyz (loaded machine). */
const FLIP_MS = 15_000;
const cleanups = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function probe(gw, path) {
  const r = await fetch(`${gw.url}${path}`, { signal: AbortSignal.timeout(5_000) });
  return { status: r.status, body: await r.text() };
}

/** Polls `path` until its status is `status`; returns the answer and how long it took. */
async function waitProbe(gw, path, status, what) {
  const t0 = Date.now();
  let last;
  while (Date.now() - t0 < FLIP_MS) {
    last = await probe(gw, path).catch((e) => ({ status: null, body: String(e) }));
    if (last.status === status) return { ...last, ms: Date.now() - t0 };
    await sleep(50);
  }
  throw new Error(`${what}: ${path} still ${JSON.stringify(last)} after ${FLIP_MS} ms\n${gw.logs()}`);
}

test("cluster mode: /readyz is 503 while Redis is down and 200 once it is back; /healthz stays 200", async () => {
  const redis = await startRedis();
  cleanups.push(() => redis.cleanup());
  const gw = await startGateway({ extraArgs: ["--redis-url", redis.url, "--node-id", "probe-a"] });
  cleanups.push(() => gw.kill());
  assert.deepEqual(await waitProbe(gw, "/readyz", 200, "ready with Redis up").then((r) => r.body), "ready\n");

  await redis.stop();
  const down = await waitProbe(gw, "/readyz", 503, "not ready with Redis down");
  assert.match(down.body, /not ready: cluster: Redis is unreachable/);
  assert.deepEqual(await probe(gw, "/healthz"), { status: 200, body: "ok\n" }, "alive all along");
  console.log(`/readyz 503 ${down.ms} ms after Redis stopped`);

  await redis.restart();
  const back = await waitProbe(gw, "/readyz", 200, "ready again once Redis is back");
  console.log(`/readyz 200 ${back.ms} ms after Redis restarted`);
  await stopAndAssertClean(gw);
});

test("SIGTERM: /readyz is 503 (draining) and /healthz 200 until the listeners close after --shutdown-grace-ms", async () => {
  const gw = await startGateway({ extraArgs: ["--shutdown-grace-ms", "2000", "--shutdown-timeout-ms", "4000"] });
  cleanups.push(() => gw.kill());
  assert.equal((await probe(gw, "/readyz")).status, 200);
  gw.child.kill("SIGTERM");
  const draining = await waitProbe(gw, "/readyz", 503, "not ready while draining");
  assert.match(draining.body, /not ready: draining/);
  assert.deepEqual(await probe(gw, "/healthz"), { status: 200, body: "ok\n" }, "alive while draining");
  const exit = await gw.exited;
  assert.equal(exit.code, 0, gw.logs());
});
