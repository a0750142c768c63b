// The soak run's report: a Markdown page of counters, invariants and resource drift per
// mode, with an SVG chart of each node's RSS and fds over time next to it.
import fs from "node:fs";
import path from "node:path";
import { GATEWAY_BIN, REPO_ROOT } from "../helpers.mjs";
import {
  CHURN_LOOPS,
  CLUSTER_TIMEOUT_MS,
  DRIVER_STOP_MS,
  DROP_DOWN_MS,
  DROP_UP_MS,
  DROPPING_USERS,
  FD_BOUND,
  FLOODERS,
  FREEZE_MS,
  KEYS_PER_NODE,
  KEYS_PER_USER,
  LEASE_MS,
  LONG_DROP_EVERY,
  RECONCILE_MS,
  RECOVERY_WINDOW_MS,
  REDIS_PAUSE_LONG_MS,
  REDIS_PAUSE_MS,
  RETRY_DEADLINE_MS,
  RPC_DEADLINE_MS,
  RSS_BOUND_MIB,
  SLOW_READERS,
  STEADY_USERS,
  TABS_PER_USER,
} from "./shape.mjs";

function svgChart(run) {
  const W = 720;
  const H = 260;
  const pad = 44;
  const tMax = Math.max(1, ...run.samples.map((s) => s.t));
  const rMax = Math.max(1, ...run.samples.map((s) => s.rss)) * 1.1;
  const fMax = Math.max(1, ...run.samples.map((s) => s.fds)) * 1.1;
  const x = (t) => (pad + (t / tMax) * (W - 2 * pad)).toFixed(1);
  const yR = (v) => (H - pad - (v / rMax) * (H - 2 * pad)).toFixed(1);
  const yF = (v) => (H - pad - (v / fMax) * (H - 2 * pad)).toFixed(1);
  const colors = ["#1f77b4", "#2ca02c", "#9467bd"];
  const lines = [];
  run.nodes.forEach((_, node) => {
    const pts = run.samples.filter((s) => s.node === node);
    lines.push(`<polyline fill="none" stroke="${colors[node]}" stroke-width="1.5" points="${pts.map((s) => `${x(s.t)},${yR(s.rss)}`).join(" ")}"/>`);
    lines.push(`<polyline fill="none" stroke="${colors[node]}" stroke-dasharray="4 3" stroke-width="1.2" points="${pts.map((s) => `${x(s.t)},${yF(s.fds)}`).join(" ")}"/>`);
  });
  const end = run.loadEnd ?? tMax;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">
<rect width="${W}" height="${H}" fill="white"/>
<text x="${W / 2}" y="16" text-anchor="middle" font-size="13">${run.mode}: RSS (solid, MiB, left) and open fds (dashed, right) per node over time (s)</text>
<line x1="${pad}" y1="${H - pad}" x2="${W - pad}" y2="${H - pad}" stroke="black"/>
<line x1="${pad}" y1="${pad}" x2="${pad}" y2="${H - pad}" stroke="black"/>
<line x1="${W - pad}" y1="${pad}" x2="${W - pad}" y2="${H - pad}" stroke="black"/>
<text x="${pad - 4}" y="${pad + 4}" text-anchor="end">${rMax.toFixed(0)}</text>
<text x="${pad - 4}" y="${H - pad}" text-anchor="end">0</text>
<text x="${W - pad + 4}" y="${pad + 4}">${fMax.toFixed(0)}</text>
<text x="${W - pad + 4}" y="${H - pad}">0</text>
<text x="${pad}" y="${H - pad + 16}" text-anchor="middle">0</text>
<text x="${W - pad}" y="${H - pad + 16}" text-anchor="middle">${tMax.toFixed(0)}</text>
<line x1="${x(end)}" y1="${pad}" x2="${x(end)}" y2="${H - pad}" stroke="#d62728" stroke-dasharray="2 2"/>
<text x="${x(end)}" y="${H - pad + 28}" text-anchor="middle" fill="#d62728">load stops</text>
${run.faults.map((f) => {
  const ft = Number(/t=(\d+)/.exec(f)[1]);
  return `<line x1="${x(ft)}" y1="${pad}" x2="${x(ft)}" y2="${H - pad}" stroke="#ff7f0e" stroke-dasharray="1 3"/>`;
}).join("\n")}
${lines.join("\n")}
${run.nodes.map((_, i) => `<text x="${pad + 8 + i * 70}" y="${pad - 8}" fill="${colors[i]}">node ${i}</text>`).join("\n")}
</svg>
`;
}

/**
 * Writes opts.out (the command line's --duration, --mode and --out in opts) for the
 * finished runs, and each run's chart next to it; `skipped` says why the cluster run did not.
 */
export function report(runs, skipped, opts) {
  const rel = (p) => path.relative(path.dirname(opts.out), p);
  const out = [
    "# Soak-and-chaos run",
    "",
    `\`scripts/soak --duration ${opts.duration}\` (${opts.mode === "both" ? "single node, then a three-node cluster on Redis" : opts.mode}), ` +
      `${new Date().toISOString().slice(0, 16)} UTC, binary \`${path.relative(REPO_ROOT, GATEWAY_BIN)}\`, on a shared 2-core machine.`,
    "",
    `Load per mode: ${STEADY_USERS} steady users × ${TABS_PER_USER} tabs (socket.io-client, every message checked), ` +
      `3 SendDirect lanes + 1 SendToUsers lane (3 receivers) + 1 SendStream per node (each lane sequential, one call in flight), ` +
      `${CHURN_LOOPS} churn loops (clean close / TCP dropped / TCP dropped right after the namespace CONNECT), ` +
      `${SLOW_READERS} slow readers sent 8 kB messages (renewed every 20 s), ${FLOODERS} flooders (150 events per 500 ms), ` +
      `one hostile frame or request every 100 ms. RPC deadline ${RPC_DEADLINE_MS} ms. ` +
      `Connection state recovery (every node \`--recovery-window-ms ${RECOVERY_WINDOW_MS}\`): ${DROPPING_USERS} dropping users with one tab each, ` +
      `up ${DROP_UP_MS[0] / 1000}-${DROP_UP_MS[1] / 1000} s, then the transport closed (\`socket.io.engine.close()\`) or its TCP connection destroyed, ` +
      `down ${DROP_DOWN_MS[0] / 1000}-${DROP_DOWN_MS[1] / 1000} s (one drop in ${LONG_DROP_EVERY}: window + 2 s) before socket.io-client reconnects by itself ` +
      `(in a cluster through another node half the time), sent to by a SendDirect lane and a SendToUsers lane of their own; ` +
      `every message whose answer counted the tab (delivered_sockets + pending_sockets) is checked to arrive once and in order when the session was recovered. ` +
      `Bounds: RSS within +${RSS_BOUND_MIB} MiB and fds within +${FD_BOUND} of the baseline (steady users connected, before the load) once the load stops; ` +
      `presence settled within 5 s (single) or lease + lease/5 + 5 s (cluster, lease ${LEASE_MS} ms); ` +
      `Redis keys ≤ ${KEYS_PER_USER} per user online + ${KEYS_PER_NODE} per node.`,
    "",
    `Cluster faults (\`--faults ${opts.faults.join(",")} --fault-every ${opts.faultEvery}\`, node lease ${LEASE_MS} ms, cluster timeout ${CLUSTER_TIMEOUT_MS} ms): ` +
      `Redis paused ${REDIS_PAUSE_MS} ms and ${REDIS_PAUSE_LONG_MS} ms, a node frozen ${FREEZE_MS} ms. During each pause, through node 0: ` +
      `SendDirect with an idempotency_key to users with no tab there (each retried with its key after the pause, deadline ${RETRY_DEADLINE_MS} ms), ` +
      `SendDirect with ttl_seconds to an offline user (whose next tab then connects), a Broadcast. During each freeze, past the lease, through another node: ` +
      `DisconnectUser of a user whose only tab is on the frozen node, SendDirect with ttl_seconds to another such user. ` +
      `Judged ${RECONCILE_MS} ms after the fault at the latest. Every UNAVAILABLE answer of the load and the probes is checked at the end never to have reached a tab it does not name; ` +
      `presence is heard on every steady tab (getOnlineUsers and onlineUsersChanged) and through WatchPresence on every node.`,
    "",
  ];
  fs.mkdirSync(path.dirname(opts.out), { recursive: true });
  if (skipped) out.push(`Cluster run skipped: ${skipped}.`, "");
  for (const run of runs) {
    const svg = opts.out.replace(/\.md$/, "") + `-${run.mode}.svg`;
    fs.writeFileSync(svg, svgChart(run));
    out.push(`## ${run.mode === "single" ? "Single node" : "Cluster (3 nodes, one Redis)"}`, "");
    out.push("| counter | value |", "| --- | ---: |");
    for (const [k, v] of Object.entries(run.counts)) out.push(`| ${k} | ${v} |`);
    out.push("");
    if (run.faults.length) out.push("Faults injected:", "", ...run.faults.map((f) => `- ${f}`), "");
    if (run.hung.length) out.push(`Load drivers of this run that had not stopped ${DRIVER_STOP_MS / 1000} s after the load ended (left behind): ${run.hung.join(", ")}.`, "");
    if (run.churnErrors.size) {
      out.push("Churn connect failures by cause:", "", ...[...run.churnErrors].map(([why, n]) => `- ${n}× ${why}`), "");
    }
    out.push("| invariant | checks | breaches |", "| --- | ---: | ---: |");
    for (const [k, v] of Object.entries(run.inv)) out.push(`| ${k} | ${v.checked} | ${v.breaches} |`);
    out.push("");
    if (run.byFault.size) {
      out.push("Breaches by the fault under way (or recovering) when they happened or were sent:", "");
      out.push("| fault | invariant | breaches |", "| --- | --- | ---: |");
      for (const [fault, per] of run.byFault) for (const [k, n] of per) out.push(`| ${fault} | ${k} | ${n} |`);
      out.push("");
    }
    out.push(`Presence settled ${run.settleMs === null ? "NOT within the bound" : `${run.settleMs} ms`} after the load stopped (bound ${run.presenceBound} ms).`, "");
    out.push("| node | RSS baseline → peak → end (MiB) | fds baseline → peak → end | threads baseline → end |", "| --- | --- | --- | --- |");
    for (const d of run.drift) {
      const ss = run.samples.filter((s) => s.node === d.i);
      out.push(
        `| ${d.i} | ${d.b.rss.toFixed(1)} → ${Math.max(...ss.map((s) => s.rss)).toFixed(1)} → ${d.l.rss.toFixed(1)} | ` +
          `${d.b.fds} → ${Math.max(...ss.map((s) => s.fds))} → ${d.l.fds} | ${d.b.threads} → ${d.l.threads} |`,
      );
    }
    out.push("");
    out.push(
      `Gateway counters at the end (sum over nodes${run.mode === "cluster" ? "; a restarted node starts from 0" : ""}): ` +
        (Object.entries(run.metrics).map(([k, v]) => `\`${k}\` ${v}`).join(", ") || "none"),
      "",
    );
    if (run.recoveryEnd) {
      out.push(`Recovery at the end (sum over nodes): ${run.recoveryEnd.away} session(s) away, ${run.recoveryEnd.keptBytes} byte(s) kept.`, "");
    }
    if (run.redis) out.push(`Redis keys: peak ${run.redisKeysMax}, end ${run.redisKeysEnd}.`, "");
    out.push(`![RSS and fds over time, ${run.mode}](${rel(svg)})`, "");
    if (run.breaches.length) out.push("Breaches (first 50):", "", ...run.breaches.map((b) => `- ${b.replace(/\n/g, " ").slice(0, 400)}`), "");
  }
  fs.writeFileSync(opts.out, out.join("\n"));
}
