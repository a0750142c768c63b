// The backend examples in examples/ (Node, Python, Rust) against a live gateway that
// requires an API key: each one's message reaches both tabs of a socket.io-client user, its
// pages of ListOnline add up to the users online, and without the key it fails with
// UNAUTHENTICATED.
//
// Environment (scripts/test sets them up):
//   EXAMPLE_RUST_BIN     the built Rust example (default target/debug/examples/backend;
//                        `cargo test` and `cargo build --examples` build it)
//   EXAMPLE_PYTHONPATH   where grpcio and grpcio-tools are installed for the Python example
//                        (default target/test-tools/python-examples, if it exists)
//   examples/node/node_modules comes from `npm ci` in examples/node.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { gatewayForSuite, connectUser, runCommand, REPO_ROOT, USING_BINARY } from "./helpers.mjs";

const API_KEY = "examples-test-key-0123456789";
const RUST_BIN = path.resolve(REPO_ROOT, process.env.EXAMPLE_RUST_BIN || "target/debug/examples/backend");
const PY_DEPS = path.resolve(REPO_ROOT, process.env.EXAMPLE_PYTHONPATH || "target/test-tools/python-examples");

const EXAMPLES = [
  { lang: "node", cmd: "node", args: [path.join(REPO_ROOT, "examples/node/backend.mjs")] },
  { lang: "python", cmd: "python3", args: [path.join(REPO_ROOT, "examples/python/backend.py")] },
  { lang: "rust", cmd: RUST_BIN, args: [] },
];

// The key goes in as a flag so that the same start works for another server (GATEWAY_CMD).
const { gw, clients, testCleanExit } = gatewayForSuite({ extraArgs: USING_BINARY ? ["--api-key", API_KEY] : [] });

/** Runs one example with only the variables it documents (plus PATH, HOME, PYTHONPATH). */
function runExample({ cmd, args }, extraArgs, env) {
  const pythonPath = [fs.existsSync(PY_DEPS) ? PY_DEPS : "", process.env.PYTHONPATH || ""].filter(Boolean).join(":");
  return runCommand(cmd, [...args, ...extraArgs], {
    timeoutMs: 60_000,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, PYTHONPATH: pythonPath, ...env },
  });
}

const describeRun = (res) => `exit ${res.code} (signal ${res.signal})\nstdout: ${res.stdout}\nstderr: ${res.stderr}`;

for (const example of EXAMPLES) {
  test(`${example.lang} example: sends one message to both tabs and pages through ListOnline with the API key`, async () => {
    // Fresh users per example: the expected pages do not depend on the other tests.
    const [a, b, c] = ["a", "b", "c"].map((x) => `${example.lang}-${x}`);
    const tabs = [await connectUser(gw.url, b), await connectUser(gw.url, b)];
    const others = [await connectUser(gw.url, a), await connectUser(gw.url, c)];
    clients.push(...tabs, ...others);
    const online = await tabs[0].waitOnlineUsers((ids) => [a, b, c].every((u) => ids.includes(u)));
    const marks = tabs.map((t) => t.mark());
    const text = `order 42 shipped (${example.lang})`;

    const res = await runExample(example, [b, text], {
      GATEWAY_GRPC_ADDR: gw.grpcAddr,
      GATEWAY_API_KEY: API_KEY,
      PAGE_SIZE: "2",
    });
    assert.equal(res.code, 0, describeRun(res));

    for (const [i, tab] of tabs.entries()) {
      const ev = await tab.waitFor("newMessage", { since: marks[i] });
      assert.deepEqual(ev.args, [{ text, from: `examples/${example.lang}` }]);
    }
    const lines = res.stdout.trim().split("\n");
    assert.equal(lines[0], `sent to ${b}: delivered to 2 socket(s)`, describeRun(res));
    // Pages of two in id order, then the total: exactly the users online.
    const sorted = [...online].sort();
    const pages = [];
    for (let i = 0; i < sorted.length; i += 2) pages.push(sorted.slice(i, i + 2));
    assert.deepEqual(
      lines.slice(1),
      [...pages.map((p, i) => `online page ${i + 1}: ${p.join(", ")}`), `${sorted.length} user(s) online`],
      describeRun(res),
    );
  });

  test(`${example.lang} example: without the API key it fails with UNAUTHENTICATED and delivers nothing`, async () => {
    const user = `${example.lang}-nokey`;
    const tab = await connectUser(gw.url, user);
    clients.push(tab);
    const since = tab.mark();
    const res = await runExample(example, [user, "must not arrive"], { GATEWAY_GRPC_ADDR: gw.grpcAddr });
    assert.equal(res.code, 1, describeRun(res));
    assert.match(res.stderr, /^error: UNAUTHENTICATED: missing authorization/m, describeRun(res));
    assert.equal(res.stdout, "", describeRun(res));
    // With the key, a second message arrives: it is the only one the tab ever gets.
    const ok = await runExample(example, [user, "with the key"], { GATEWAY_GRPC_ADDR: gw.grpcAddr, GATEWAY_API_KEY: API_KEY });
    assert.equal(ok.code, 0, describeRun(ok));
    await tab.waitFor("newMessage", { since });
    assert.deepEqual(
      tab.received("newMessage", since).map((e) => e.args[0].text),
      ["with the key"],
    );
  });
}

testCleanExit();
