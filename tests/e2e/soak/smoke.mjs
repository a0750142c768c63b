// What the soak smoke tests share: running tests/e2e/soak.mjs and reading its report.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { REPO_ROOT, runCommand } from "../helpers.mjs";

/** Runs tests/e2e/soak.mjs with `args`; returns its report once it exited 0 with no breach. */
export async function soak(dir, args) {
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
export const invariants = (report) => [...report.matchAll(/^\| (.+) \| (\d+) \| (\d+) \|$/gm)].map((r) => r[1]);
export const count = (report, label) => Number(new RegExp(`^\\| ${label} \\| (\\d+) \\|$`, "m").exec(report)?.[1] ?? 0);

