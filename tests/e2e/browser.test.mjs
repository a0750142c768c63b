// A real browser: Debian's headless Chromium, driven by playwright-core, opens a page that
// does what a frontend does (the socket.io-client browser bundle, `io(gatewayUrl, { query:
// { userId } })` or `{ auth: { token } }`, newMessage and getOnlineUsers handlers). The page
// is served from another port than the gateway, so every request is cross-origin (CORS).
//
// Needs /usr/bin/chromium (CHROMIUM_BIN overrides; scripts/test installs Debian's
// `chromium`). Without it these tests fail; SKIP_BROWSER=1 skips them explicitly.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import {
  CHROMIUM_ARGS,
  CHROMIUM_BIN,
  launchChromium,
  USING_BINARY,
  WAIT_MS,
  gatewayForSuite,
  mintHs256,
  sendDirect,
  delivered,
  listOnlineAll,
  waitOnline,
  sleep,
} from "./helpers.mjs";

const BUNDLE = path.join(
  path.dirname(fileURLToPath(import.meta.url)),
  "node_modules/socket.io-client/dist/socket.io.min.js",
);
const QUIET_MS = 300;
/** How long a page that must not connect is watched. */
const BLOCKED_MS = 3_000;

// ---------------------------------------------------------------------------------------
// The frontend: one HTML page, configured by its query string.

const PAGE = `<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>messaging-gateway e2e</title>
<script src="/socket.io.min.js"></script>
</head>
<body>
<script>
  const params = new URLSearchParams(location.search);
  const options = {};
  if (params.has("userId")) options.query = { userId: params.get("userId") };
  if (params.has("token")) options.auth = { token: params.get("token") };
  if (params.has("transports")) options.transports = params.get("transports").split(",");

  window.__events = [];
  const record = (event, ...args) => window.__events.push({ event, args });
  const socket = io(params.get("gateway"), options);
  window.__socket = socket;
  socket.on("connect", () => record("connect", socket.id));
  socket.on("connect_error", (err) => record("connect_error", err.message));
  socket.on("disconnect", (reason) => record("disconnect", reason));
  socket.on("newMessage", (message) => record("newMessage", message));
  socket.on("getOnlineUsers", (userIds) => record("getOnlineUsers", userIds));
</script>
</body>
</html>
`;

/** Serves the page and the socket.io-client bundle on 127.0.0.1:<free port>. */
async function servePage() {
  const bundle = fs.readFileSync(BUNDLE);
  const server = http.createServer((req, res) => {
    const { pathname } = new URL(req.url, "http://x");
    if (pathname === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
      res.end(PAGE);
    } else if (pathname === "/socket.io.min.js") {
      res.writeHead(200, { "content-type": "application/javascript; charset=utf-8" });
      res.end(bundle);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

const nowSecs = () => Math.floor(Date.now() / 1000);

/** `--recovery-window-ms` of the default-auth suite. */
const RECOVERY_WINDOW_MS = 1500;

// ---------------------------------------------------------------------------------------
// Pages

let context; // one Chromium with a fresh profile: its pages are the tabs of one browser
let userDataDir;
let origin; // the frontend's origin (allowed in JWT mode)
let otherOrigin; // an origin that JWT mode does not allow
const servers = [];

/**
 * Opens a tab on the page from `from` with the given query parameters. Returns a handle
 * whose `log` collects the tab's console messages and page errors (for failure messages).
 */
async function openTab(from, params) {
  const page = await context.newPage();
  const log = [];
  page.on("console", (m) => log.push(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => log.push(`pageerror: ${e.message}`));
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined));
  await page.goto(`${from}/?${query}`, { waitUntil: "load", timeout: WAIT_MS });
  return { page, log };
}

/** The events the tab recorded so far, optionally only those named `name`. */
async function events(tab, name) {
  const all = await tab.page.evaluate(() => window.__events);
  return name ? all.filter((e) => e.event === name) : all;
}

/** Resolves with the first event `name` whose args satisfy pred; fails after timeoutMs. */
async function waitEvent(tab, name, pred = () => true, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const all = await events(tab);
    const hit = all.find((e) => e.event === name && pred(e.args));
    if (hit) return hit;
    if (Date.now() > deadline) {
      throw new Error(
        `no ${name} matching within ${timeoutMs} ms\nevents: ${JSON.stringify(all)}\ntab log:\n${tab.log.join("\n")}`,
      );
    }
    await sleep(50);
  }
}

/** The name of the Engine.IO transport the tab's socket uses now. */
function transportOf(tab) {
  return tab.page.evaluate(() => window.__socket.io.engine?.transport?.name ?? null);
}

async function waitTransport(tab, name, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let now;
  while ((now = await transportOf(tab)) !== name) {
    if (Date.now() > deadline) throw new Error(`transport is ${now}, not ${name}, after ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** Opens a tab and waits for `connect` and a getOnlineUsers list that holds `user`. */
async function connectTab(from, params, user) {
  const tab = await openTab(from, params);
  await waitEvent(tab, "connect");
  await waitEvent(tab, "getOnlineUsers", ([ids]) => Array.isArray(ids) && ids.includes(user));
  return tab;
}

/**
 * Sends `message` to `user` with grpcurl; expects deliveredSockets = tabs.length and
 * exactly one new newMessage carrying the exact JSON in every tab.
 */
async function sendAndExpect(gw, user, message, tabs, { pending = 0 } = {}) {
  const before = await Promise.all(tabs.map((t) => events(t, "newMessage")));
  const resp = await sendDirect(gw.grpcAddr, { receiver_id: user, message, sender_id: "browser-e2e" });
  assert.deepEqual(resp, { deliveredSockets: tabs.length, ...(pending ? { pendingSockets: pending } : {}) });
  for (const [i, tab] of tabs.entries()) {
    const n = before[i].length;
    const deadline = Date.now() + WAIT_MS;
    let got;
    while ((got = await events(tab, "newMessage")).length <= n) {
      if (Date.now() > deadline) throw new Error(`tab ${i} got no new newMessage: ${JSON.stringify(got)}`);
      await sleep(50);
    }
  }
  await sleep(QUIET_MS);
  for (const [i, tab] of tabs.entries()) {
    const fresh = (await events(tab, "newMessage")).slice(before[i].length);
    assert.equal(fresh.length, 1, `tab ${i}: exactly one newMessage: ${JSON.stringify(fresh)}`);
    assert.deepEqual(fresh[0].args, [message], `tab ${i}: the exact JSON`);
  }
}

const MESSAGE = {
  text: "hello from grpcurl 😀 漢字 עברית",
  orderId: 42,
  price: 19.99,
  negative: -7,
  ok: true,
  no: false,
  nothing: null,
  html: "</script><b>&amp;</b>",
  list: [1, "two", [3], {}, []],
  nested: { a: { b: { c: "deep" } } },
};

// ---------------------------------------------------------------------------------------

if (process.env.SKIP_BROWSER === "1") {
  test("headless Chromium tests", { skip: "SKIP_BROWSER=1" }, () => {});
} else {
  before(async () => {
    if (!fs.existsSync(CHROMIUM_BIN)) {
      throw new Error(
        `${CHROMIUM_BIN} not found: install Debian's chromium (scripts/test does), set CHROMIUM_BIN, or SKIP_BROWSER=1 to skip`,
      );
    }
    const page1 = await servePage();
    const page2 = await servePage();
    servers.push(page1, page2);
    origin = page1.origin;
    otherOrigin = page2.origin;
    context = await launchChromium((timeout) => {
      // A fresh profile for each start: a start that timed out may have left its lock behind.
      if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
      userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "gateway-e2e-chromium-"));
      return chromium.launchPersistentContext(userDataDir, {
        executablePath: CHROMIUM_BIN,
        headless: true,
        args: CHROMIUM_ARGS,
        timeout,
      });
    });
  });

  after(async () => {
    await context?.close().catch(() => {});
    await Promise.all(servers.map((s) => s.close()));
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  });

  describe("--auth none, --cors-origins * (the defaults)", () => {
    // A closed tab's session stays recoverable for the window (connection state recovery):
    // a short one, so that the user's offline comes within the test.
    const { gw, testCleanExit } = gatewayForSuite({ extraArgs: ["--recovery-window-ms", String(RECOVERY_WINDOW_MS)] });

    for (const transports of [undefined, "polling"]) {
      const label = transports ?? "default transports";
      test(`[${label}] a page gets SendDirect exactly and is in getOnlineUsers; a second tab of the user gets it too`, async () => {
        const user = `browser-${transports ?? "default"}`;
        const params = { gateway: gw.url, userId: user, transports };

        const tab1 = await connectTab(origin, params, user);
        // Default transports: polling first, then the upgrade to WebSocket.
        await waitTransport(tab1, transports ?? "websocket");
        await sendAndExpect(gw, user, MESSAGE, [tab1]);

        const tab2 = await connectTab(origin, params, user);
        await waitTransport(tab2, transports ?? "websocket");
        const { ids } = await listOnlineAll(gw.grpcAddr);
        assert.equal(ids.filter((id) => id === user).length, 1, `listed once: ${JSON.stringify(ids)}`);
        await sendAndExpect(gw, user, { ...MESSAGE, tab: "both" }, [tab1, tab2]);
        assert.equal(await transportOf(tab1), transports ?? "websocket");

        // Closing one tab keeps the user online; the other still receives.
        await tab2.page.close();
        if (!transports) {
          // A closed WebSocket tab's session is kept for a recovery at once (a polling one's
          // only at the ping timeout): it counts as pending until its window passes.
          await sleep(QUIET_MS);
          assert.ok((await listOnlineAll(gw.grpcAddr)).ids.includes(user), "still online with one tab");
          await sendAndExpect(gw, user, "one tab left", [tab1], { pending: 1 });
          await sleep(RECOVERY_WINDOW_MS);
          await sendAndExpect(gw, user, "one tab left, the other's window passed", [tab1]);
          await tab1.page.close();
          await waitOnline(gw.grpcAddr, (l) => !l.includes(user), RECOVERY_WINDOW_MS + WAIT_MS, `${user} offline after its last tab's window`);
          assert.equal(delivered(await sendDirect(gw.grpcAddr, { receiver_id: user, message: "gone" })), 0);
        } else {
          await tab1.page.close();
        }
      });
    }

    testCleanExit();
  });

  describe("--auth jwt with --cors-origins listing the page's origin", { skip: !USING_BINARY && "GATEWAY_CMD is set" }, () => {
    const secret = randomBytes(16).toString("hex"); // 32 bytes
    const { gw, testCleanExit } = gatewayForSuite(() => ({
      extraArgs: ["--auth", "jwt", "--jwt-secret", secret, "--cors-origins", origin],
    }));
    const token = (sub, exp = nowSecs() + 3600) => mintHs256({ sub, iat: nowSecs(), exp }, secret);

    for (const transports of [undefined, "polling"]) {
      const label = transports ?? "default transports";
      test(`[${label}] a page with auth { token } receives the messages for the token's sub`, async () => {
        const sub = `jwt-${transports ?? "default"}`;
        const tab = await connectTab(origin, { gateway: gw.url, token: token(sub), transports }, sub);
        await waitTransport(tab, transports ?? "websocket");
        await sendAndExpect(gw, sub, MESSAGE, [tab]);
        await tab.page.close();
      });
    }

    test("a page with an expired token gets connect_error saying so, and never comes online", async () => {
      const sub = "jwt-expired";
      const tab = await openTab(origin, { gateway: gw.url, token: token(sub, nowSecs() - 3600) });
      const err = await waitEvent(tab, "connect_error");
      assert.match(err.args[0], /expired/, JSON.stringify(err));
      await sleep(QUIET_MS);
      assert.deepEqual(await events(tab, "connect"), [], "never connected");
      assert.ok(!(await listOnlineAll(gw.grpcAddr)).ids.includes(sub), "never online");
      assert.equal(delivered(await sendDirect(gw.grpcAddr, { receiver_id: sub, message: "x" })), 0);
      await tab.page.close();
    });

    test("a page from an origin not in --cors-origins cannot connect over polling; the same token can from the allowed one", async () => {
      const sub = "jwt-cors";
      const params = { gateway: gw.url, token: token(sub), transports: "polling" };
      const blocked = await openTab(otherOrigin, params);
      await waitEvent(blocked, "connect_error", () => true, BLOCKED_MS);
      await sleep(BLOCKED_MS);
      assert.deepEqual(await events(blocked, "connect"), [], `connected from ${otherOrigin}:\n${blocked.log.join("\n")}`);
      assert.ok(
        blocked.log.some((l) => /CORS/.test(l)),
        `the browser should report the CORS block:\n${blocked.log.join("\n")}`,
      );
      assert.ok(!(await listOnlineAll(gw.grpcAddr)).ids.includes(sub), "never online");
      assert.equal(delivered(await sendDirect(gw.grpcAddr, { receiver_id: sub, message: "x" })), 0);
      await blocked.page.close();

      // Control: the very same token from the allowed origin connects and receives.
      const allowed = await connectTab(origin, params, sub);
      await sendAndExpect(gw, sub, MESSAGE, [allowed]);
      await allowed.page.close();
    });

    testCleanExit();
  });
}
