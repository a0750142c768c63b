// TLS on the Socket.IO port (--http-tls-cert / --http-tls-key): the official socket.io-client
// over wss and over https long polling, trusting the test CA (its `ca` option), and headless
// Chromium loading the gateway's page over https and receiving a message over wss; a
// plain-HTTP request and a connection that never starts its handshake are turned away while
// the port keeps serving; an unusable certificate exits 2 with one line; and --auth jwt on a
// non-loopback address without TLS is warned about.
//
// The certificates (a CA and a server certificate for 127.0.0.1 and localhost) are made with
// the `openssl` CLI (scripts/test installs it); without it these tests fail. The Chromium test
// needs /usr/bin/chromium (CHROMIUM_BIN overrides; SKIP_BROWSER=1 skips it).
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import {
  CHROMIUM_ARGS,
  CHROMIUM_BIN,
  GATEWAY_BIN,
  USING_BINARY,
  WAIT_MS,
  Client,
  closeAll,
  delivered,
  freePorts,
  launchChromium,
  runCommand,
  sendDirect,
  sleep,
  startGateway,
  stopAndAssertClean,
} from "./helpers.mjs";

const skip = USING_BINARY ? false : "GATEWAY_CMD is set: not the gateway binary";
/** --connect-timeout-ms of the TLS gateway: how long a silent connection may stay. */
const CONNECT_TIMEOUT_MS = 1500;

let dir;
let pki; // { ca, cert, key, caPem }

/** Runs openssl with args in `dir`; fails with its stderr unless it exits 0. */
async function openssl(...args) {
  const res = await runCommand("openssl", args, { cwd: dir }).catch((err) => {
    throw new Error(`${err.message}: install openssl (scripts/test does)`);
  });
  assert.equal(res.code, 0, `openssl ${args.join(" ")}: ${res.stderr}`);
}

/** A test CA and a server certificate it signed for 127.0.0.1 and localhost, as files. */
async function makePki() {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await openssl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=gateway e2e test CA",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  await openssl("req", ...ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost");
  fs.writeFileSync(
    path.join(dir, "server.ext"),
    "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
  );
  await openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
    "-extfile", "server.ext", "-out", "server.pem");
  const file = (name) => path.join(dir, name);
  return { ca: file("ca.pem"), cert: file("server.pem"), key: file("server.key"), caPem: fs.readFileSync(file("ca.pem")) };
}

/**
 * An https GET trusting the test CA, offering h2 and http/1.1 by ALPN: resolves { status,
 * body, alpn } (the protocol the server picked).
 */
function httpsGet(port, pathname) {
  return new Promise((resolve, reject) => {
    const options = { host: "127.0.0.1", port, path: pathname, ca: pki.caPem, ALPNProtocols: ["h2", "http/1.1"], timeout: WAIT_MS };
    const req = https.get(options, (res) => {
      const alpn = res.socket.alpnProtocol;
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode, body, alpn }));
    });
    req.once("timeout", () => req.destroy(new Error("https GET timed out")));
    req.once("error", reject);
  });
}

/** A clear-text HTTP GET: resolves { status } or { error } (never rejects). */
function plainGet(port, pathname) {
  return new Promise((resolve) => {
    const req = http.get({ host: "127.0.0.1", port, path: pathname, timeout: WAIT_MS }, (res) => {
      res.resume();
      resolve({ status: res.statusCode });
    });
    req.once("timeout", () => req.destroy(new Error("plain GET timed out")));
    req.once("error", (err) => resolve({ error: err.code || err.message }));
  });
}

before(async () => {
  if (skip) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "gateway-tls-"));
  pki = await makePki();
});

after(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe("the Socket.IO port over TLS", { skip }, () => {
  let gw;
  const clients = [];
  const url = () => `https://127.0.0.1:${gw.httpPort}`;

  before(async () => {
    gw = await startGateway({
      extraArgs: [
        "--http-tls-cert",
        pki.cert,
        "--http-tls-key",
        pki.key,
        "--connect-timeout-ms",
        String(CONNECT_TIMEOUT_MS),
        "--presence-interval-ms",
        "20",
      ],
    });
  });
  after(async () => {
    closeAll(clients);
    await gw?.kill();
  });

  for (const transport of ["websocket", "polling"]) {
    test(`socket.io-client over ${transport === "websocket" ? "wss" : "https long polling"} receives a SendDirect`, async () => {
      const user = `tls-${transport}`;
      const c = new Client(url(), { userId: user, transports: [transport], upgrade: false, ca: pki.caPem });
      clients.push(c);
      await c.connect();
      assert.equal(c.socket.io.engine.transport.name, transport);
      const resp = await sendDirect(gw.grpcAddr, { receiver_id: user, message: { over: transport }, sender_id: "tls-e2e" });
      assert.equal(delivered(resp), 1);
      const got = await c.waitFor("newMessage");
      assert.deepEqual(got.args[0], { over: transport });
      c.close();
    });
  }

  test("a client that does not trust the CA is refused by its own TLS check", async () => {
    const c = new Client(url(), { userId: "untrusting", transports: ["websocket"] });
    clients.push(c);
    await assert.rejects(c.connect(), /connect_error/);
  });

  test("a plain-HTTP request fails cleanly, a silent connection is closed, and the port keeps serving", async () => {
    const plain = await plainGet(gw.httpPort, "/healthz");
    assert.ok(plain.error, `a clear-text request gets no HTTP answer: ${JSON.stringify(plain)}`);

    // A connection that opens TCP and sends nothing holds no task past the handshake timeout,
    // and does not keep the accept loop from serving others meanwhile.
    const silent = net.connect({ host: "127.0.0.1", port: gw.httpPort });
    const opened = Date.now();
    const closed = new Promise((resolve) => silent.once("close", () => resolve(Date.now() - opened)));
    silent.on("error", () => {});
    await new Promise((resolve) => silent.once("connect", resolve));
    const healthz = await httpsGet(gw.httpPort, "/healthz");
    assert.equal(healthz.status, 200);
    assert.equal(healthz.alpn, "http/1.1");
    const ms = await Promise.race([closed, sleep(CONNECT_TIMEOUT_MS + WAIT_MS).then(() => "still open")]);
    assert.ok(typeof ms === "number" && ms >= CONNECT_TIMEOUT_MS - 200, `silent connection closed after ${ms} ms`);

    const after = new Client(url(), { userId: "after-plain", transports: ["websocket"], ca: pki.caPem });
    clients.push(after);
    await after.connect();
    assert.ok(gw.logs().includes(`Socket.IO listening on https://127.0.0.1:${gw.httpPort}/socket.io/`), gw.logs());
  });

  const browserSkip = process.env.SKIP_BROWSER === "1" ? "SKIP_BROWSER=1" : false;
  test("headless Chromium loads the page over https and receives a message over wss", { skip: browserSkip }, async () => {
    if (!fs.existsSync(CHROMIUM_BIN)) {
      throw new Error(`${CHROMIUM_BIN} not found: install Debian's chromium (scripts/test does), set CHROMIUM_BIN, or SKIP_BROWSER=1`);
    }
    // The test CA is not in Chromium's store; the certificate itself is checked by Node above.
    const browser = await launchChromium((timeout) =>
      chromium.launch({
        executablePath: CHROMIUM_BIN,
        headless: true,
        args: [...CHROMIUM_ARGS, "--ignore-certificate-errors"],
        timeout,
      }),
    );
    try {
      const page = await browser.newPage();
      await page.goto(`${url()}/`, { waitUntil: "load", timeout: WAIT_MS });
      const connected = await page.evaluate(
        (waitMs) =>
          new Promise((resolve, reject) => {
            window.__messages = [];
            const socket = io({ query: { userId: "tls-browser" }, transports: ["websocket"], reconnection: false });
            socket.on("newMessage", (m) => window.__messages.push(m));
            socket.on("connect", () => resolve({ protocol: location.protocol, transport: socket.io.engine.transport.name }));
            socket.on("connect_error", (err) => reject(new Error(err.message)));
            setTimeout(() => reject(new Error("no connect")), waitMs);
          }),
        WAIT_MS,
      );
      assert.deepEqual(connected, { protocol: "https:", transport: "websocket" });
      const resp = await sendDirect(gw.grpcAddr, { receiver_id: "tls-browser", message: "over wss", sender_id: "tls-e2e" });
      assert.equal(delivered(resp), 1);
      await page.waitForFunction(() => window.__messages.length > 0, null, { timeout: WAIT_MS });
      assert.deepEqual(await page.evaluate(() => window.__messages), ["over wss"]);
    } finally {
      await browser.close();
    }
  });

  test(`exits 0 on SIGTERM`, async () => {
    closeAll(clients);
    await stopAndAssertClean(gw);
  });
});

test("an unusable certificate or key exits 2 with one line", { skip }, async () => {
  const junk = path.join(dir, "junk.pem");
  fs.writeFileSync(junk, "not a certificate\n");
  const cases = [
    [["--http-tls-cert", junk, "--http-tls-key", pki.key], "--http-tls-cert"],
    [["--http-tls-cert", pki.cert, "--http-tls-key", pki.ca], "--http-tls-key"],
    [["--http-tls-cert", pki.cert], "--http-tls-key"],
  ];
  for (const [args, needle] of cases) {
    const res = await runCommand(GATEWAY_BIN, ["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", ...args]);
    const what = `${JSON.stringify(args)}: ${JSON.stringify(res)}`;
    assert.equal(res.code, 2, what);
    const lines = res.stderr.split("\n").filter((l) => l.trim());
    assert.equal(lines.length, 1, `one stderr line: ${what}`);
    assert.ok(lines[0].includes(needle), `names ${needle}: ${what}`);
  }
});

test("--auth jwt off loopback without TLS is warned about; with TLS it is not", { skip }, async () => {
  const jwt = ["--auth", "jwt", "--jwt-secret", "a-test-secret-of-32-bytes-length", "--cors-origins", "https://app.test"];
  const logsOf = async (extra) => {
    const [httpPort, grpcPort] = await freePorts(2);
    const gw = await startGateway({ httpPort, grpcPort, extraArgs: ["--http-addr", `0.0.0.0:${httpPort}`, ...jwt, ...extra] });
    const logs = gw.logs();
    await stopAndAssertClean(gw);
    return logs;
  };
  const warning = "Socket.IO without TLS on a non-loopback address with --auth jwt";
  const [clear, tls] = await Promise.all([logsOf([]), logsOf(["--http-tls-cert", pki.cert, "--http-tls-key", pki.key])]);
  assert.ok(clear.includes(warning), clear);
  assert.ok(clear.includes("set --http-tls-cert and --http-tls-key, or terminate TLS in a proxy"), clear);
  assert.ok(!tls.includes(warning), tls);
});
