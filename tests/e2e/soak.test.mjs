// Smoke version of the soak-and-chaos run (scripts/soak, issue 13): 60 s of churn, traffic,
// slow readers, flooders and hostile frames against one gateway; every invariant must hold.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { REPO_ROOT, runCommand } from "./helpers.mjs";

test("soak smoke: 60 s single node, every invariant holds", { timeout: 170_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "soak-smoke-"));
  try {
    const out = path.join(dir, "SOAK.md");
    const res = await runCommand(
      process.execPath,
      [path.join(REPO_ROOT, "tests/e2e/soak.mjs"), "--duration", "60", "--mode", "single", "--out", out],
      { timeoutMs: 160_000 },
    );
    const ctx = `exit ${res.code}\n${res.stdout.slice(-6000)}\n${res.stderr.slice(-3000)}`;
    assert.equal(res.code, 0, ctx);
    const report = fs.readFileSync(out, "utf8");
    // Every invariant was checked at least once and never breached.
    const rows = [...report.matchAll(/^\| (.+) \| (\d+) \| (\d+) \|$/gm)];
    const names = rows.map((r) => r[1]);
    for (const name of [
      "delivered_sockets = sockets reached (no loss, no extra)",
      "no duplicate delivery",
      "per-connection order",
      "no ghosts: ListOnline and getOnlineUsers = live users on every node",
      "every RPC answered within its deadline",
      "no process crashed",
    ]) {
      assert.ok(names.includes(name), `invariant ${name} missing from the report:\n${report}`);
    }
    for (const [, name, checks, breaches] of rows) {
      assert.ok(Number(checks) > 0, `${name} never checked`);
      assert.equal(Number(breaches), 0, `${name} breached:\n${report}`);
    }
    // The load really ran: churn of each kind, messages checked, attacks sent.
    const count = (label) => Number(new RegExp(`^\\| ${label} \\| (\\d+) \\|$`, "m").exec(report)?.[1] ?? 0);
    for (const label of [
      "churn: TCP dropped without a close",
      "churn: TCP dropped during the namespace CONNECT",
      "messages checked per receiver",
      "hostile frames/requests",
      "flood bursts",
    ]) {
      assert.ok(count(label) > 0, `${label}: 0 in\n${report}`);
    }
    assert.ok(fs.readFileSync(path.join(dir, "SOAK-single.svg"), "utf8").includes("<polyline"));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
