// Smoke version of the soak-and-chaos run (scripts/soak, issue 13): 30 s of churn, traffic,
// slow readers, flooders, hostile frames and tabs that drop and recover (issue 21) against
// one gateway; every invariant must hold.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { count, invariants, soak } from "./soak/smoke.mjs";

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
      "a recovered socket received every message sent to it, once, in order",
      "a drop within the recovery window is recovered (no bound hit, no fault), one past it is not",
      "sessions kept for recovery expire after the window (none away at the end)",
      "a dropping user is announced offline only when its session was not recovered (no flap)",
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
      "dropping tabs: drops, transport closed",
      "dropping tabs: drops, TCP destroyed",
      "dropping tabs: reconnects recovered",
      "dropping tabs: messages answered pending, kept for replay",
      "dropping tabs: messages kept while away that arrived",
      "dropping tabs: reconnects past the window, not recovered as they should",
    ]) {
      assert.ok(count(report, label) > 0, `${label}: 0 in\n${report}`);
    }
    assert.ok(fs.readFileSync(path.join(dir, "SOAK-single.svg"), "utf8").includes("<polyline"));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
