// Presence as the clients and backends hear it, during the whole load: a steady user (tabs
// on two nodes, never closed by the run) must never be announced offline while one of its
// tabs stayed connected to a node that was neither frozen nor killed. Heard three ways:
// getOnlineUsers lists and onlineUsersChanged change sets on the steady tabs themselves
// (tab 0 of each user in `list` mode, tab 1 in `changes` mode), and a WatchPresence stream
// on every node. What is heard of the dropping users (dropping.mjs) is kept for judging once
// the run knows which of their drops were recovered.
import { setTimeout as sleep } from "node:timers/promises";
import { LEASE_MS } from "./shape.mjs";
import { tabHadGap } from "./tabs.mjs";

export const INV_PRESENCE = "a user whose sockets stayed open is never announced offline";

/** Whether some tab of userId stayed connected to a node that was awake around `now`. */
function stayedOpen(run, userId, now) {
  return run
    .tabsOf(userId)
    .some((t) => !t.closed && !tabHadGap(t, now - 1_000, now) && !run.frozenDuring(t.node, now - 2 * LEASE_MS - 1_000, now));
}

/** Judges one presence event heard through `source` that announced `users` offline (maybe none). */
export function heardOffline(run, users, source) {
  if (!run.judgePresence) return;
  const now = Date.now();
  const wrong = users.filter((u) => run.steady.includes(u) && stayedOpen(run, u, now));
  run.invariant(INV_PRESENCE, wrong.length === 0, `${wrong.join(", ")} announced offline by ${source} while a tab of each stayed connected`);
  for (const u of users) if (run.dropping.includes(u)) run.droppingOffline.push({ u, t: now, source });
}

/** The steady tabs' presence events: a list without a steady user announces it offline. */
export function onTabPresence(run, tab, { list, offline }) {
  const source = `${list ? "getOnlineUsers" : "onlineUsersChanged"} on ${tab.userId}'s tab on node ${tab.node}`;
  heardOffline(run, offline ?? [...run.steady, ...run.dropping].filter((u) => !list.includes(u)), source);
}

/** One WatchPresence stream per node, reopened when it ends (node killed), until run.done. */
export async function watchPresence(run, node) {
  while (!run.done) {
    const call = run.clients[node].WatchPresence({ snapshot: false });
    call.on("data", (r) => {
      if (r.change) heardOffline(run, r.change.online ? [] : [r.change.user_id], `WatchPresence on node ${node}`);
    });
    let ended = false;
    call.on("error", () => (ended = true));
    call.on("end", () => (ended = true));
    while (!run.done && !ended) await sleep(200);
    call.cancel();
    if (!run.done) {
      run.bump("WatchPresence streams reopened");
      await sleep(300);
    }
  }
}
