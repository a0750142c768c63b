// The live page at `/`, served by the gateway itself, in headless Chromium: two users in two
// tabs pick their user id in the form, both appear in each other's online list, a message
// sent with grpcurl shows (event name and payload) in the receiver's tab only, the page's
// send form (POST /demo/send) delivers to the other tab, and closing a tab updates the other.
// In JWT mode the page takes a pasted token and has no send form (the endpoint is 404).
// Screenshots go to target/livepage-*.png.
//
// Needs /usr/bin/chromium (CHROMIUM_BIN overrides); SKIP_BROWSER=1 skips these tests.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, CHROMIUM_BIN, REPO_ROOT, launchChromium, USING_BINARY, WAIT_MS, gatewayForSuite, freePorts, mintHs256, sendDirect, sleep } from "./helpers.mjs";

const SHOTS = path.join(REPO_ROOT, "target");
/** How long "nothing shows up" is watched. */
const QUIET_MS = 500;

let browser;

/** A tab on the gateway's page; `log` keeps console messages and page errors for failures. */
async function openPage(url) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 860 } });
  const page = await context.newPage();
  const log = [];
  page.on("console", (m) => log.push(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => log.push(`pageerror: ${e.message}`));
  await page.goto(url, { waitUntil: "load", timeout: WAIT_MS });
  return { page, log, close: () => context.close() };
}

/** What a user reads in an element. */
const textOf = (tab, selector) => tab.page.innerText(selector);

/** Waits until the element's text satisfies pred; the failure shows the text and tab log. */
async function waitText(tab, selector, pred, what, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let text;
  while (!pred((text = await textOf(tab, selector)))) {
    if (Date.now() > deadline) {
      throw new Error(`${what}: not within ${timeoutMs} ms; ${selector} reads ${JSON.stringify(text)}\n${tab.log.join("\n")}`);
    }
    await sleep(50);
  }
  return text;
}

/** The online list as the page shows it: one user id per chip ("you" marks oneself). */
async function onlineUsers(tab) {
  const chips = await tab.page.locator("#online li > span:first-child").allInnerTexts();
  return chips.sort();
}

async function waitOnlineUsers(tab, expected, what) {
  const deadline = Date.now() + WAIT_MS;
  let now;
  while (JSON.stringify((now = await onlineUsers(tab))) !== JSON.stringify(expected)) {
    if (Date.now() > deadline) throw new Error(`${what}: online list ${JSON.stringify(now)}, want ${JSON.stringify(expected)}\n${tab.log.join("\n")}`);
    await sleep(50);
  }
}

if (process.env.SKIP_BROWSER === "1") {
  test("live page in headless Chromium", { skip: "SKIP_BROWSER=1" }, () => {});
} else {
  before(async () => {
    if (!fs.existsSync(CHROMIUM_BIN)) {
      throw new Error(`${CHROMIUM_BIN} not found: install Debian's chromium (scripts/test does), set CHROMIUM_BIN, or SKIP_BROWSER=1`);
    }
    fs.mkdirSync(SHOTS, { recursive: true });
    browser = await launchChromium((timeout) =>
      chromium.launch({ executablePath: CHROMIUM_BIN, headless: true, args: CHROMIUM_ARGS, timeout }),
    );
  });
  after(async () => {
    await browser?.close().catch(() => {});
  });

  describe("--auth none on loopback (the defaults): the page with its send form", { skip: !USING_BINARY && "GATEWAY_CMD is set" }, () => {
    // A closed tab's session stays recoverable for the window (connection state recovery),
    // its user online meanwhile: a short window, so that the other tab's list updates soon.
    const { gw, testCleanExit } = gatewayForSuite({ extraArgs: ["--recovery-window-ms", "1000"] });

    test("two tabs: both online, grpcurl's message in the right tab only, the send form delivers, closing a tab updates the other", async () => {
      const connectAs = async (user) => {
        const tab = await openPage(`${gw.url}/`);
        await tab.page.fill("#user-id", user);
        await tab.page.click("#connect");
        await waitText(tab, "#status", (t) => t === "connected", `${user} connects`);
        return tab;
      };
      const alice = await connectAs("alice");
      const bob = await connectAs("bob");
      await waitOnlineUsers(alice, ["alice", "bob"], "alice's tab lists both");
      await waitOnlineUsers(bob, ["alice", "bob"], "bob's tab lists both");
      assert.match(await textOf(alice, "#online"), /alice\s+you/, "the page marks the user's own chip");
      assert.equal(await textOf(alice, "#online-count"), "2");

      // A backend sends to bob with grpcurl, with its own event name.
      const message = { text: "Your order shipped", orderId: 42, html: "<b>not bold</b>" };
      const resp = await sendDirect(gw.grpcAddr, { receiver_id: "bob", event: "orderShipped", message });
      assert.deepEqual(resp, { deliveredSockets: 1 });
      const shown = await waitText(bob, "#messages", (t) => t.includes("orderShipped"), "bob sees the message");
      assert.match(shown, /"text": "Your order shipped"/);
      assert.match(shown, /"orderId": 42/);
      assert.match(shown, /"html": "<b>not bold<\/b>"/, "the payload is shown as text, not HTML");
      assert.equal(await bob.page.locator("#messages b").count(), 0, "nothing in the payload was rendered as HTML");
      assert.equal(await textOf(bob, "#message-count"), "1");
      await sleep(QUIET_MS);
      assert.equal(await textOf(alice, "#message-count"), "0", "alice's tab got nothing");
      assert.equal(await alice.page.locator("#messages li").count(), 0);

      // Alice answers through the page: clicking bob's chip fills the receiver.
      await alice.page.locator("#online li", { hasText: "bob" }).click();
      assert.equal(await alice.page.inputValue("#send-to"), "bob");
      await alice.page.fill("#send-message", '{"text": "hi bob, from the page"}');
      await alice.page.click("#send");
      await waitText(alice, "#send-result", (t) => t.startsWith("Delivered"), "the send form answers");
      assert.equal(await textOf(alice, "#send-result"), "Delivered to 1 socket.");
      await waitText(bob, "#messages", (t) => t.includes("hi bob, from the page"), "bob gets the page's message");
      assert.equal(await textOf(bob, "#message-count"), "2");
      assert.match(await textOf(bob, "#messages li:first-child .event"), /^newMessage$/);

      // A bad message is refused with the gateway's reason, in the page.
      await alice.page.fill("#send-event", "connect");
      await alice.page.click("#send");
      await waitText(alice, "#send-result", (t) => t.startsWith("event:"), "a reserved event is refused");
      await alice.page.fill("#send-event", "newMessage");

      await bob.page.screenshot({ path: path.join(SHOTS, "livepage-bob.png"), fullPage: true });
      await alice.page.screenshot({ path: path.join(SHOTS, "livepage-alice.png"), fullPage: true });

      await bob.close();
      await waitOnlineUsers(alice, ["alice"], "bob's closed tab leaves alice's list");
      assert.equal(await textOf(alice, "#online-count"), "1");
      await alice.close();
      for (const tab of [alice, bob]) {
        assert.deepEqual(tab.log.filter((l) => l.startsWith("pageerror")), [], "no script errors");
      }
    });

    testCleanExit();
  });

  describe("--auth jwt: a pasted token, no send form", { skip: !USING_BINARY && "GATEWAY_CMD is set" }, () => {
    const secret = randomBytes(16).toString("hex");
    const { gw, testCleanExit } = gatewayForSuite(async () => {
      const [httpPort, grpcPort] = await freePorts(2);
      // The page's own origin must be listed, as for any frontend.
      const origin = `http://127.0.0.1:${httpPort}`;
      return { httpPort, grpcPort, extraArgs: ["--auth", "jwt", "--jwt-secret", secret, "--cors-origins", origin] };
    });

    test("the token's sub connects and receives; POST /demo/send is 404", async () => {
      const tab = await openPage(`${gw.url}/`);
      assert.ok(await tab.page.isHidden("#user-id"), "no user id field in JWT mode");
      assert.ok(await tab.page.isHidden("#send-form"), "no send form without --demo");
      assert.match(await textOf(tab, "#send-off"), /--demo/);
      const now = Math.floor(Date.now() / 1000);
      await tab.page.fill("#token", mintHs256({ sub: "carol", iat: now, exp: now + 600 }, secret));
      await tab.page.click("#connect");
      await waitText(tab, "#status", (t) => t === "connected", "carol connects");
      await waitOnlineUsers(tab, ["carol"], "carol is online");
      assert.match(await textOf(tab, "#online"), /carol\s+you/, "the token's sub is marked as the user");
      assert.deepEqual(await sendDirect(gw.grpcAddr, { receiver_id: "carol", message: { text: "for carol" } }), { deliveredSockets: 1 });
      await waitText(tab, "#messages", (t) => t.includes("for carol"), "carol sees the message");
      const status = await tab.page.evaluate(async () => {
        const r = await fetch("/demo/send", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ receiver_id: "carol", message: "x" }),
        });
        return r.status;
      });
      assert.equal(status, 404);
      await tab.page.screenshot({ path: path.join(SHOTS, "livepage-jwt.png"), fullPage: true });

      // A bad token: the page says why.
      await tab.page.fill("#token", "not-a-token");
      await tab.page.click("#connect");
      await waitText(tab, "#connect-error", (t) => /unauthorized/.test(t), "a bad token is refused in the page");
      await tab.close();
    });

    testCleanExit();
  });
}
