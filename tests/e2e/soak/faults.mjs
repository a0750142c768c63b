// The cluster run's faults, on a fixed schedule: a node killed (SIGKILL) and restarted, Redis
// restarted empty, Redis paused (SIGSTOP) past the cluster timeout and once past the lease,
// and a node frozen (SIGSTOP) past its lease. Around each pause and freeze the contract
// probes (probes.mjs) send, and judge what the gateway answered once the fault is over.
import { setTimeout as sleep } from "node:timers/promises";
import { afterFreeze, afterRedisPause, beforeFreeze, duringFreeze, duringRedisPause, PRESUMED_DEAD_MS } from "./probes.mjs";
import { FREEZE_MS, LEASE_MS, REDIS_PAUSE_LONG_MS, REDIS_PAUSE_MS } from "./shape.mjs";

const log = (...a) => console.log(`[soak ${new Date().toISOString().slice(11, 19)}]`, ...a);

/** Every fault kind, in the order the schedule cycles through them. */
export const FAULT_KINDS = ["node-kill", "redis-pause", "redis-restart", "node-freeze", "redis-pause-long"];

/**
 * The schedule: one fault every `everyMs` from everyMs/2 on, cycling through `kinds`, none
 * starting in the last 10 s of the load. Returns [{ at, kind }] (at: ms after the load began).
 */
export function faultPlan(durationMs, kinds, everyMs) {
  const plan = [];
  for (let k = 0, at = everyMs / 2; kinds.length && at + 10_000 <= durationMs; k++, at += everyMs) {
    plan.push({ at, kind: kinds[k % kinds.length] });
  }
  return plan;
}

/** Sends `signal` to pid; false when the process is gone (its exit is judged elsewhere). */
function signal(pid, sig) {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

async function nodeKill(run, victim) {
  const f = run.beginFault(`SIGKILL node ${victim}, restarted 2 s later`);
  run.nodes[victim].expectedExit = true;
  run.nodeDownUntil = Date.now() + 60_000;
  await run.nodes[victim].kill();
  await sleep(2_000);
  await run.startNode(victim);
  run.endFault(f);
  run.nodeDownUntil = Date.now() + LEASE_MS * 2;
}

async function redisRestart(run) {
  const f = run.beginFault("Redis restarted (empty)");
  run.redisDownUntil = Date.now() + 60_000;
  await run.redis.restart();
  run.endFault(f);
  run.redisDownUntil = Date.now() + LEASE_MS * 2;
}

/** Redis stopped for `ms`; the probes send through node 0 while it is. */
async function redisPause(run, ms) {
  const f = run.beginFault(`Redis paused (SIGSTOP) ${ms / 1000} s`);
  run.redisDownUntil = Date.now() + 60_000;
  signal(run.redis.pid, "SIGSTOP");
  const sent = sleep(200).then(() => duringRedisPause(run, 0, f.label));
  await sleep(ms);
  signal(run.redis.pid, "SIGCONT");
  run.endFault(f);
  run.redisDownUntil = Date.now() + LEASE_MS * 2;
  const probe = await sent;
  await sleep(300);
  await afterRedisPause(run, probe);
}

/** Node `victim` stopped for FREEZE_MS; past its lease the probes act through another node. */
async function nodeFreeze(run, victim) {
  const probe = await beforeFreeze(run, victim);
  const f = run.beginFault(`node ${victim} frozen (SIGSTOP) ${FREEZE_MS / 1000} s`);
  const freeze = { node: victim, start: Date.now(), end: null };
  run.freezes.push(freeze);
  run.nodeDownUntil = Date.now() + 60_000;
  const pid = run.nodes[victim].child.pid;
  signal(pid, "SIGSTOP");
  await sleep(PRESUMED_DEAD_MS);
  await duringFreeze(run, probe);
  await sleep(Math.max(0, freeze.start + FREEZE_MS - Date.now()));
  signal(pid, "SIGCONT");
  freeze.end = Date.now();
  run.endFault(f);
  run.nodeDownUntil = Date.now() + LEASE_MS * 2;
  await afterFreeze(run, probe, f.label, freeze.start);
}

/** Runs `plan` (faultPlan) against the run's cluster until the load stops. */
export async function injectFaults(run, plan) {
  let kills = 0;
  let freezes = 0;
  for (const { at, kind } of plan) {
    while (!run.stopping && Date.now() - run.loadStart < at) await sleep(100);
    if (run.stopping) return;
    log(`fault: ${kind}`);
    if (kind === "node-kill") await nodeKill(run, 1 + (kills++ % 2));
    else if (kind === "redis-restart") await redisRestart(run);
    else if (kind === "redis-pause") await redisPause(run, REDIS_PAUSE_MS);
    else if (kind === "redis-pause-long") await redisPause(run, REDIS_PAUSE_LONG_MS);
    else await nodeFreeze(run, 1 + (freezes++ % 2));
  }
}
