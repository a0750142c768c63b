// Smoke versions of the soak-and-chaos run (scripts/soak, issue 13): 30 s of churn, traffic,
// slow readers, flooders and hostile frames against one gateway, then 40 s of the same against
// three nodes on Redis through a Redis pause past the cluster timeout, one past the lease and
// a node frozen past its lease (issue 20); every invariant must hold.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { REPO_ROOT, runCommand } from "./helpers.mjs";

/** Runs tests/e2e/soak.mjs with `args`; returns its report once it exited 0 with no breach. */
async function soak(dir, args) {
  const out = path.join(dir, "SOAK.md");
  const res = await runCommand(process.execPath, [path.join(REPO_ROOT, "tests/e2e/soak.mjs"), ...args, "--out", out], {
    timeoutMs: 150_000,
  });
  const report = fs.existsSync(out) ? fs.readFileSync(out, "utf8") : "(no report)";
  const ctx = `exit ${res.code}\n${res.stdout.slice(-6000)}\n${res.stderr.slice(-3000)}\n${report}`;
  // Every invariant was checked at least once and never breached.
  for (const [, name, checks, breaches] of report.matchAll(/^\| (.+) \| (\d+) \| (\d+) \|$/gm)) {
    assert.ok(Number(checks) > 0, `${name} never checked:\n${ctx}`);
    assert.equal(Number(breaches), 0, `${name} breached:\n${ctx}`);
  }
  assert.equal(res.code, 0, ctx);
  return report;
}

/** The report's invariant names and counters. */
const invariants = (report) => [...report.matchAll(/^\| (.+) \| (\d+) \| (\d+) \|$/gm)].map((r) => r[1]);
const count = (report, label) => Number(new RegExp(`^\\| ${label} \\| (\\d+) \\|$`, "m").exec(report)?.[1] ?? 0);

test("soak smoke: 30 s single node, every invariant holds", { timeout: 170_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "soak-smoke-"));
  try {
    const report = await soak(dir, ["--duration", "30", "--mode", "single"]);
    for (const name of [
      "delivered_sockets = sockets reached (no loss, no extra)",
      "no duplicate delivery",
      "per-connection order",
      "no ghosts: ListOnline and getOnlineUsers = live users on every node",
      "every RPC answered within its deadline",
      "no process crashed",
    ]) {
      assert.ok(invariants(report).includes(name), `invariant ${name} missing from the report:\n${report}`);
    }
    // The load really ran: churn of each kind, messages checked, attacks sent.
    for (const label of [
      "churn: TCP dropped without a close",
      "churn: TCP dropped during the namespace CONNECT",
      "messages checked per receiver",
      "hostile frames/requests",
      "flood bursts",
    ]) {
      assert.ok(count(report, label) > 0, `${label}: 0 in\n${report}`);
    }
    assert.ok(fs.readFileSync(path.join(dir, "SOAK-single.svg"), "utf8").includes("<polyline"));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("soak smoke: 40 s on three nodes, Redis paused twice and a node frozen, every answer true", { timeout: 170_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "soak-faults-"));
  try {
    const report = await soak(dir, [
      "--duration", "40", "--mode", "cluster",
      "--faults", "redis-pause,redis-pause-long,node-freeze", "--fault-every", "12",
    ]);
    for (const fault of ["Redis paused (SIGSTOP) 1.6 s", "Redis paused (SIGSTOP) 4.5 s", "node 1 frozen (SIGSTOP) 4.5 s"]) {
      assert.ok(report.includes(fault), `fault "${fault}" not injected:\n${report}`);
    }
    // Checked in every run; the others (an UNAVAILABLE answer never delivered, partial as a
    // lower bound, queued mail arriving, the retry with the key, the DisconnectUser carried
    // out) are checked for each answer that calls for them, and above must not be breached.
    for (const name of [
      "a user whose sockets stayed open is never announced offline",
      "a woken node's sockets are told and reconnect, or are online on every node again",
      "delivered_sockets = sockets reached (no loss, no extra)",
      "no process crashed",
    ]) {
      assert.ok(invariants(report).includes(name), `invariant ${name} missing from the report:\n${report}`);
    }
    assert.ok(count(report, "probe sends answered") > 0, `no probe answered:\n${report}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
