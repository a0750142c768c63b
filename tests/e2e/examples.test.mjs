// The backend examples in examples/ (Node, Python, Rust) against a live gateway that
// requires an API key: each one's message reaches both tabs of a socket.io-client user, its
// pages of ListOnline add up to the users online, and without the key it fails with
// UNAUTHENTICATED. The README's TypeScript stub command, run as written from examples/node,
// generates types that compile against @grpc/grpc-js.
//
// Environment (scripts/test sets them up):
//   EXAMPLE_RUST_BIN     the built Rust example (default target/debug/examples/backend;
//                        `cargo test` and `cargo build --examples` build it)
//   EXAMPLE_PYTHONPATH   where grpcio and grpcio-tools are installed for the Python example
//                        (default target/test-tools/python-examples, if it exists)
//   examples/node/node_modules comes from `npm ci` in examples/node, typescript from
//   `npm ci` in tests/e2e.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
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

/** The README's `$ npx ... proto-loader-gen-types ...` command, continuation lines included. */
function readmeStubCommand() {
  const readme = fs.readFileSync(path.join(REPO_ROOT, "README.md"), "utf8");
  const command = readme.match(/^\$ (npx -p @grpc\/proto-loader proto-loader-gen-types (?:.*\\\n)*.*)$/m)?.[1];
  assert.ok(command, "README.md shows no `$ npx -p @grpc/proto-loader proto-loader-gen-types ...` command");
  const where = readme.match(/^\$ cd (\S+) && npm ci\n\$ npx -p @grpc\/proto-loader/m)?.[1];
  assert.equal(where, "examples/node", "the README runs the stub command in examples/node, after its npm ci");
  return command;
}

// npx alone (`npx proto-loader-gen-types`) would fetch an unrelated placeholder package of
// that name; `-p @grpc/proto-loader` runs the bin of the installed package, offline.
test("the README's TypeScript stub command generates types that compile against @grpc/grpc-js", async () => {
  const command = readmeStubCommand();
  // examples/node as the README's `cd` leaves it (its package files and installed
  // node_modules, ../../proto beside it) in a temporary directory, so `gen` lands there.
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "stubs-"));
  try {
    const dir = path.join(root, "examples", "node");
    fs.mkdirSync(dir, { recursive: true });
    fs.symlinkSync(path.join(REPO_ROOT, "proto"), path.join(root, "proto"));
    const installed = path.join(REPO_ROOT, "examples/node/node_modules");
    assert.ok(fs.existsSync(installed), "examples/node/node_modules is missing: run npm ci there (scripts/test does)");
    fs.symlinkSync(installed, path.join(dir, "node_modules"));
    for (const f of ["package.json", "package-lock.json"]) fs.copyFileSync(path.join(REPO_ROOT, "examples/node", f), path.join(dir, f));

    const env = { PATH: process.env.PATH, HOME: process.env.HOME };
    const res = await runCommand("/bin/sh", ["-c", command], { cwd: dir, env, timeoutMs: 60_000 });
    assert.equal(res.code, 0, describeRun(res));
    for (const f of ["messaging.ts", "messaging/v1/Messaging.ts", "messaging/v1/SendDirectRequest.ts", "google/protobuf/Value.ts"]) {
      assert.ok(fs.existsSync(path.join(dir, "gen", f)), `gen/${f} generated: ${describeRun(res)}`);
    }

    // A caller typed by them: field names as in the proto (keepCase), uint32 as number.
    fs.writeFileSync(
      path.join(dir, "caller.ts"),
      `import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import type { ProtoGrpcType } from "./gen/messaging";

const definition = protoLoader.loadSync("messaging/v1/messaging.proto", {
  includeDirs: ["../../proto"], keepCase: true, longs: Number, defaults: true,
});
const proto = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
const client = new proto.messaging.v1.Messaging("127.0.0.1:50051", grpc.credentials.createInsecure());
client.SendDirect({ receiver_id: "user123", message: { stringValue: "hi" } }, (err, res) => {
  const delivered: number | undefined = res?.delivered_sockets;
  console.log(err?.code, delivered);
});
`,
    );
    const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
    const flags = ["--noEmit", "--strict", "--skipLibCheck", "--module", "esnext", "--moduleResolution", "bundler", "--target", "es2022"];
    const checked = await runCommand(process.execPath, [tsc, ...flags, "caller.ts"], { cwd: dir, env, timeoutMs: 120_000 });
    assert.equal(checked.code, 0, describeRun(checked));
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

testCleanExit();
