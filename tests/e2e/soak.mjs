// The soak-and-chaos run behind scripts/soak (issue 13): a benchmark-style program, not a
// test file. For --duration seconds per mode it drives, all at once, connect/disconnect
// churn (clean closes, TCP dropped without a close, TCP dropped right after the namespace
// CONNECT), SendDirect / SendToUsers / SendStream traffic to users who stay connected,
// slow readers that stop reading, clients flooding events and hostile frames, tabs that drop
// their transport and recover their session (connection state recovery); in cluster
// mode (three nodes on one Redis) faults come on a schedule, one every --fault-every
// seconds cycling through --faults: a node killed (SIGKILL) and restarted, Redis paused
// (SIGSTOP) past the cluster timeout, Redis restarted empty, a node frozen (SIGSTOP) past
// its lease, Redis paused past the lease; what the gateway answered during each is checked
// once it is over. It checks the invariants continuously and at the end, writes a report
// (default bench/results/SOAK.md, with an SVG chart of RSS and fds per mode next to it)
// and exits 1 on any breach, 2 on a usage error.
//
//   node tests/e2e/soak.mjs [--duration SECS] [--mode both|single|cluster] [--out FILE]
//                           [--faults KIND,...] [--fault-every SECS]
//
// KIND: node-kill, redis-pause, redis-restart, node-freeze, redis-pause-long (default all,
// in that order); --fault-every defaults to duration/5 (at most 60 s, at least 12 s).
//
// Cluster mode needs redis-server and a gateway binary with --redis-url; without either,
// `--mode both` runs single node only and says so in the report.
import { spawnSync } from "node:child_process";
import path from "node:path";
import { GATEWAY_BIN, REPO_ROOT } from "./helpers.mjs";
import { FAULT_KINDS, faultPlan } from "./soak/faults.mjs";
import { report } from "./soak/report.mjs";
import { Run } from "./soak/run.mjs";

function usage(msg) {
  console.error(
    `soak: ${msg} (usage: soak [--duration SECS] [--mode both|single|cluster] [--out FILE] [--faults KIND,...] [--fault-every SECS])`,
  );
  process.exit(2);
}
const opts = { duration: 600, mode: "both", out: path.join(REPO_ROOT, "bench/results/SOAK.md"), faults: FAULT_KINDS, faultEvery: null };
{
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const value = () => inline ?? argv[++i] ?? usage(`${flag} needs a value`);
    if (flag === "--duration") {
      opts.duration = Number(value());
      if (!Number.isInteger(opts.duration) || opts.duration < 10) usage("--duration must be an integer >= 10");
    } else if (flag === "--mode") {
      opts.mode = value();
      if (!["both", "single", "cluster"].includes(opts.mode)) usage(`unknown --mode ${opts.mode}`);
    } else if (flag === "--out") {
      opts.out = path.resolve(value());
    } else if (flag === "--faults") {
      opts.faults = value().split(",").filter(Boolean);
      const bad = opts.faults.filter((k) => !FAULT_KINDS.includes(k));
      if (bad.length) usage(`unknown fault ${bad.join(", ")} (kinds: ${FAULT_KINDS.join(", ")})`);
    } else if (flag === "--fault-every") {
      opts.faultEvery = Number(value());
      if (!Number.isInteger(opts.faultEvery) || opts.faultEvery < 10) usage("--fault-every must be an integer >= 10");
    } else usage(`unknown argument ${argv[i]}`);
  }
  opts.faultEvery ??= Math.min(60, Math.max(12, Math.floor(opts.duration / 5)));
}
const modes = opts.mode === "both" ? ["single", "cluster"] : [opts.mode];
let skipped = null;
if (modes.includes("cluster")) {
  const help = spawnSync(GATEWAY_BIN, ["--help"], { encoding: "utf8" }).stdout ?? "";
  const redis = spawnSync("sh", ["-c", "command -v redis-server"]).status === 0;
  if (!help.includes("--redis-url") || !redis) {
    skipped = !redis ? "redis-server is not installed" : "this gateway binary has no --redis-url (cluster mode)";
    if (opts.mode === "cluster") {
      console.error(`soak: ${skipped}`);
      process.exit(2);
    }
    modes.pop();
  }
}
const runs = [];
for (const mode of modes) {
  const run = new Run(mode, faultPlan(opts.duration * 1_000, opts.faults, opts.faultEvery * 1_000));
  runs.push(run);
  await run.run(opts.duration * 1_000);
}
report(runs, skipped, opts);
let total = 0;
for (const run of runs) {
  console.log(`\n${run.mode}:`);
  for (const [k, v] of Object.entries(run.counts)) console.log(`  ${k}: ${v}`);
  for (const [k, v] of Object.entries(run.inv)) {
    console.log(`  invariant ${k}: ${v.checked} checks, ${v.breaches} breaches`);
    total += v.breaches;
  }
  for (const [fault, per] of run.byFault) for (const [k, n] of per) console.log(`  breaches under ${fault}: ${k}: ${n}`);
  for (const d of run.drift) console.log(`  node ${d.i}: RSS ${d.b.rss.toFixed(1)} -> ${d.l.rss.toFixed(1)} MiB, fds ${d.b.fds} -> ${d.l.fds}`);
}
console.log(`\nreport: ${path.relative(REPO_ROOT, opts.out)}; ${total} breach(es)`);
process.exit(total ? 1 : 0);
