// The binary's command line: --help documents every option, bad values fail readably,
// every flag is also an environment variable, startup logs name the addresses.
// Only meaningful for the gateway binary (skipped when GATEWAY_CMD starts something else).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import {
  GATEWAY_BIN,
  USING_BINARY,
  startGateway,
  stopAndAssertClean,
  grpcOk,
  connectUser,
  sendDirect,
  delivered,
  closeAll,
  freePorts,
  sleep,
} from "./helpers.mjs";

const skip = USING_BINARY ? false : "GATEWAY_CMD is set: not the gateway binary";
const gateways = [];
const clients = [];

after(async () => {
  closeAll(clients);
  for (const gw of gateways) await gw.kill();
});

/** Runs the binary to completion (bounded); resolves { code, signal, stdout, stderr, ms }. */
function runBin(args, { timeoutMs = 10_000, env = {} } = {}) {
  return new Promise((resolve, reject) => {
    const baseEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("GATEWAY_")));
    const t0 = Date.now();
    const child = spawn(GATEWAY_BIN, args, { env: { ...baseEnv, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c) => (stdout += c));
    child.stderr.on("data", (c) => (stderr += c));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - t0 });
    });
  });
}

test("--help documents every option", { skip }, async () => {
  const res = await runBin(["--help"]);
  assert.equal(res.code, 0, res.stderr);
  for (const flag of [
    "--http-addr",
    "--grpc-addr",
    "--cors-origins",
    "--ping-interval-ms",
    "--ping-timeout-ms",
    "--connect-timeout-ms",
    "--max-payload-bytes",
    "--log-format",
    "--presence-interval-ms",
  ]) {
    assert.ok(res.stdout.includes(flag), `--help should document ${flag}:\n${res.stdout}`);
  }
  for (const env of ["GATEWAY_HTTP_ADDR", "GATEWAY_GRPC_ADDR"]) {
    assert.ok(res.stdout.includes(env), `--help should name the env var ${env}`);
  }
  for (const def of ["127.0.0.1:5000", "127.0.0.1:50051"]) {
    assert.ok(res.stdout.includes(def), `--help should show the default ${def}`);
  }
});

for (const [what, args] of [
  ["an unparsable --http-addr", ["--http-addr", "not-an-address"]],
  ["an unparsable --grpc-addr", ["--grpc-addr", "127.0.0.1:notaport"]],
  ["a non-numeric --ping-interval-ms", ["--ping-interval-ms", "soon"]],
  ["an unknown --log-format", ["--log-format", "xml"]],
  ["an unknown flag", ["--no-such-flag"]],
]) {
  test(`${what} exits non-zero with a readable error`, { skip }, async () => {
    const res = await runBin(args);
    assert.notEqual(res.code, 0, `should fail: ${JSON.stringify(res)}`);
    assert.equal(res.signal, null);
    const firstLine = res.stderr.split("\n").find((l) => l.trim()) ?? "";
    assert.match(firstLine, /error/i, `first stderr line should say what is wrong: ${res.stderr}`);
    assert.doesNotMatch(res.stderr, /panicked|RUST_BACKTRACE/, res.stderr);
  });
}

test("a port already in use makes it exit non-zero, not hang", { skip }, async () => {
  const blocker = net.createServer();
  await new Promise((r) => blocker.listen(0, "127.0.0.1", r));
  try {
    const [httpPort] = await freePorts(1);
    const grpcAddr = `127.0.0.1:${blocker.address().port}`;
    const res = await runBin(["--http-addr", `127.0.0.1:${httpPort}`, "--grpc-addr", grpcAddr]);
    assert.notEqual(res.code, 0, `should fail: ${JSON.stringify(res)}`);
    assert.equal(res.signal, null, `should exit by itself (not be killed at the timeout): ${JSON.stringify(res)}`);
  } finally {
    blocker.close();
  }
});

test("addresses from GATEWAY_HTTP_ADDR / GATEWAY_GRPC_ADDR; startup logs name them", { skip }, async () => {
  const gw = await startGateway({ addrVia: "env" });
  gateways.push(gw);
  const u = await connectUser(gw.url, "env-user");
  clients.push(u);
  const since = u.mark();
  assert.equal(delivered(await sendDirect(gw.grpcAddr, { receiver_id: "env-user", message: "via env" })), 1);
  assert.equal((await u.waitFor("newMessage", { since })).args[0], "via env");
  assert.ok(gw.logs().includes(gw.httpAddr), `startup logs should name ${gw.httpAddr}:\n${gw.logs()}`);
  assert.ok(gw.logs().includes(gw.grpcAddr), `startup logs should name ${gw.grpcAddr}:\n${gw.logs()}`);
  u.close();
  await stopAndAssertClean(gw);
});

test("--log-format json writes JSON log lines", { skip }, async () => {
  const gw = await startGateway({ extraArgs: ["--log-format", "json"] });
  gateways.push(gw);
  await grpcOk(gw.grpcAddr, "messaging.v1.Messaging/ListOnline", {});
  await sleep(100);
  const lines = gw.logs().split("\n").filter((l) => l.trim());
  assert.ok(lines.length > 0, "some log lines at startup");
  for (const l of lines) {
    assert.doesNotThrow(() => JSON.parse(l), `not a JSON line: ${l}`);
  }
  await stopAndAssertClean(gw);
});

test("--max-payload-bytes, --ping-* and --presence-interval-ms are accepted", { skip }, async () => {
  const gw = await startGateway({
    extraArgs: [
      "--max-payload-bytes",
      "2000000",
      "--ping-interval-ms",
      "1000",
      "--ping-timeout-ms",
      "1000",
      "--connect-timeout-ms",
      "2000",
      "--presence-interval-ms",
      "20",
      "--cors-origins",
      "*",
    ],
  });
  gateways.push(gw);
  const u = await connectUser(gw.url, "flags-user", { transports: ["polling"] });
  clients.push(u);
  await u.waitOnlineUsers((ids) => ids.includes("flags-user"));
  // With a 1 s ping interval the connection is kept alive by pings for longer than that.
  await sleep(2_500);
  assert.ok(u.connected, "still connected after several ping intervals");
  u.close();
  await stopAndAssertClean(gw);
});

/** Runs the binary on ephemeral ports; asserts exit 2 and one stderr line naming `needle`. */
async function assertRefused(args, needle, env = {}) {
  const res = await runBin(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", ...args], { env });
  const what = `${JSON.stringify(args)} ${JSON.stringify(env)}: ${JSON.stringify(res)}`;
  assert.equal(res.code, 2, what);
  const lines = res.stderr.split("\n").filter((l) => l.trim());
  assert.equal(lines.length, 1, `one stderr line: ${what}`);
  assert.ok(lines[0].startsWith("error: ") && lines[0].includes(needle), `names ${needle}: ${what}`);
  return lines[0];
}

// A bad --node-id used to be checked only with --redis-url: a single node took it silently.
test("a bad --node-id exits 2 with one line in every mode, from the flag or GATEWAY_NODE_ID", { skip }, async () => {
  for (const id of ["has space", "{tag}", "n".repeat(65), "tab\there"]) {
    await assertRefused(["--node-id", id], "--node-id");
    await assertRefused(["--node-id", id, "--redis-url", "redis://127.0.0.1:1"], "--node-id");
  }
  await assertRefused([], "--node-id", { GATEWAY_NODE_ID: "has space" });
  // A good one is still accepted without Redis.
  const gw = await startGateway({ extraArgs: ["--node-id", "solo-1"] });
  gateways.push(gw);
  await stopAndAssertClean(gw);
});

// JWT settings without --auth jwt used to be ignored: the gateway ran unauthenticated.
test("JWT settings without --auth jwt exit 2 with one line naming them, flag or environment", { skip }, async () => {
  for (const [flag, value] of [
    ["--jwt-secret", "a-secret-of-at-least-32-bytes-long!"],
    ["--jwt-secret-file", "/nonexistent"],
    ["--jwt-public-key-file", "/nonexistent"],
    ["--jwt-audience", "web"],
    ["--jwt-issuer", "https://idp.example"],
  ]) {
    const line = await assertRefused([flag, value], flag);
    assert.match(line, /without --auth jwt/, line);
    await assertRefused(["--auth", "none", flag, value], flag);
    const env = `GATEWAY_${flag.slice(2).toUpperCase().replaceAll("-", "_")}`;
    await assertRefused([], env, { [env]: value });
  }
  const both = await assertRefused(["--jwt-audience", "web", "--jwt-issuer", "idp"], "--jwt-audience");
  assert.ok(both.includes("--jwt-issuer"), both);
});
