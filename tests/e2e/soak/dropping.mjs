// Tabs that drop their transport and come back by themselves (connection state recovery,
// issue 21). Each dropping user has one tab, so a send's delivered_sockets + pending_sockets
// says whether the gateway counted that very socket. Every few seconds a tab closes its
// transport (`socket.io.engine.close()`) or has its TCP connection destroyed, stays down for
// a while (in a cluster, half the time it comes back through another node) and socket.io-
// client reconnects with the pid and offset it was given; now and then a drop outlasts the
// window. Two lanes of their own (SendDirect and SendToUsers) keep sending to these users
// meanwhile. Judged once the load has stopped: every message counted for a socket whose
// session was recovered arrived once and in send order, a message counted for no socket
// never arrived, and every drop within the window was recovered (one past it was not).
import { setTimeout as sleep } from "node:timers/promises";
import { toValue } from "../../../examples/node/value.mjs";
import { DROP_DOWN_MS, DROP_UP_MS, DROPPING_USERS, LONG_DROP_EVERY, RECOVERY_WINDOW_MS } from "./shape.mjs";
import { nodeAt, openTab, waitUp } from "./tabs.mjs";
import { unary } from "./wire.mjs";

export const INV_RECOVERED = "a recovered socket received every message sent to it, once, in order";
export const INV_COUNTS = "delivered_sockets + pending_sockets of a dropping tab is at most 1, and 0 only when the message never reaches it";
export const INV_WINDOW = "a drop within the recovery window is recovered (no bound hit, no fault), one past it is not";
export const INV_FLAP = "a dropping user is announced offline only when its session was not recovered (no flap)";
export const INV_EXPIRE = "sessions kept for recovery expire after the window (none away at the end)";

/** How far a presence event may be heard outside the drop that explains it (in a cluster it crosses Redis). */
const PRESENCE_SLACK_MS = 2_000;
/** A message answered this long before a drop began may still have been on its way when it dropped. */
const IN_FLIGHT_MS = 1_000;
/** How long a tab may take to come back after its planned time down. */
const BACK_WITHIN_MS = 30_000;
/** The lanes of soak/dropping.mjs, whose order per user is checked. */
const LANES = ["x", "y"];

const between = ([lo, hi]) => lo + Math.random() * (hi - lo);

/** Whether t falls in a fault (one still under way included) or within two leases after one. */
const underFault = (run, t) => run.recovering(t) || run.faultLog.some((f) => f.end === null && f.start <= t);

/**
 * The recovery metrics summed over the nodes that answer within 2 s: overflows by bound,
 * attempts by outcome, sessions away, kept bytes, and the metric names seen.
 */
export async function recoveryMetrics(run) {
  const m = { overflows: {}, attempts: {}, away: 0, keptBytes: 0, nodes: 0, seen: new Set() };
  await Promise.all(
    run.metricsPorts.map(async (port) => {
      const text = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2_000) })
        .then((r) => r.text())
        .catch(() => null);
      if (text === null) return;
      m.nodes += 1;
      for (const [, name, label, value] of text.matchAll(/^gateway_recovery_(\w+?)(?:\{\w+="(\w+)"\})? (\S+)$/gm)) {
        m.seen.add(name);
        const v = Number(value);
        if (name === "overflows_total") m.overflows[label] = (m.overflows[label] ?? 0) + v;
        else if (name === "attempts_total") m.attempts[label] = (m.attempts[label] ?? 0) + v;
        else if (name === "sessions_away") m.away += v;
        else if (name === "kept_bytes") m.keptBytes += v;
      }
    }),
  );
  return m;
}

/** What grew from `a` to `b` (label -> count), as text. */
function grown(a, b) {
  const d = Object.entries(b).filter(([k, v]) => v > (a[k] ?? 0)).map(([k, v]) => `${k} +${v - (a[k] ?? 0)}`);
  return d.length ? d.join(", ") : "none";
}

/** Opens one tab per dropping user (into run.dropping) and waits until all are connected. */
export async function openDroppingTabs(run) {
  for (let u = 0; u < DROPPING_USERS; u++) {
    const userId = `drop-${u}`;
    const tab = openTab(run, {
      userId,
      node: run.nodeIndex(u),
      rejoin: true,
      io: { randomizationFactor: 0 }, // the drop's time down is the reconnection delay, exactly
      onSoak: (t, m) => t.arrivals.push({ id: m.id, lane: m.lane, seq: m.seq, conn: t.gaps.length }),
    });
    Object.assign(tab, { arrivals: [], sends: [], planned: [], attempts: [] });
    // What a drop that does not come back was doing meanwhile.
    tab.socket.io.on("reconnect_attempt", (n) => tab.attempts.push({ t: Date.now(), what: `attempt ${n}` }));
    tab.socket.on("connect_error", (e) => tab.attempts.push({ t: Date.now(), what: `connect_error ${e?.message ?? e}` }));
    run.dropping.push(userId);
  }
  await waitUp(run.dropping.map((u) => run.tabsOf(u)[0]), 30_000, "dropping tabs");
}

/** The load drivers of the dropping tabs: [name, promise] for load()'s map. */
export function dropDrivers(run, durationMs) {
  const until = Date.now() + durationMs;
  return [
    ["dropping tabs' SendDirect lane", directLane(run)],
    ["dropping tabs' SendToUsers lane", toUsersLane(run)],
    ...run.dropping.map((u, k) => [`dropping tab ${u}`, dropLoop(run, run.tabsOf(u)[0], k, until)]),
  ];
}

/** Files one answered send to a dropping user (also for the load's exact check). */
function file(run, userId, sent, answer) {
  if (answer.pending_sockets === undefined) throw new Error(`the gateway's answer has no pending_sockets: ${JSON.stringify(answer)}`);
  run.tabsOf(userId)[0].sends.push({
    ...sent,
    t1: Date.now(),
    delivered: answer.delivered_sockets,
    pending: answer.pending_sockets,
    partial: answer.partial,
  });
  run.answers.expect(sent.id, userId, answer.delivered_sockets, answer.partial, sent.t0);
  if (answer.pending_sockets) run.bump("dropping tabs: messages answered pending, kept for replay");
}

async function directLane(run) {
  for (let seq = 0; !run.stopping; seq++) {
    const userId = run.dropping[seq % run.dropping.length];
    const id = `x-${seq}`;
    const node = run.liveNode(seq);
    const t0 = Date.now();
    try {
      const r = await unary(run.clients[node], "SendDirect", {
        receiver_id: userId,
        sender_id: "soak",
        event: "soak",
        message: toValue({ id, lane: "x", seq }),
      });
      run.bump("dropping tabs: SendDirect calls");
      run.invariant("every RPC answered within its deadline", true);
      file(run, userId, { id, lane: "x", seq, t0, node }, r);
    } catch (err) {
      run.rpcError(`SendDirect ${id}`, err, { node, t0, id, receivers: [userId] });
    }
    await sleep(25);
  }
}

async function toUsersLane(run) {
  for (let seq = 0; !run.stopping; seq++) {
    const id = `y-${seq}`;
    const node = run.liveNode(seq);
    const t0 = Date.now();
    try {
      const r = await unary(run.clients[node], "SendToUsers", {
        receiver_ids: run.dropping,
        sender_id: "soak",
        event: "soak",
        message: toValue({ id, lane: "y", seq }),
      });
      run.bump("dropping tabs: SendToUsers calls");
      run.invariant("every RPC answered within its deadline", true);
      for (const d of r.deliveries) file(run, d.receiver_id, { id, lane: "y", seq, t0, node }, d);
    } catch (err) {
      run.rpcError(`SendToUsers ${id}`, err, { node, t0, id, receivers: run.dropping });
    }
    await sleep(60);
  }
}

/** The node a drop comes back through: in a cluster, another one half the time. */
function nextNode(run, node) {
  const n = run.nodes.length;
  if (n === 1 || Math.random() < 0.5) return node;
  return (node + 1 + Math.floor(Math.random() * (n - 1))) % n;
}

/** Tab k drops every few seconds until the load stops (no drop past the window near the end). */
async function dropLoop(run, tab, k, until) {
  for (let n = 0; !run.stopping; n++) {
    await sleep(between(DROP_UP_MS));
    while (!tab.up && !run.stopping) await sleep(100); // a fault dropped it meanwhile
    if (run.stopping) return;
    const long = (n + k) % LONG_DROP_EVERY === 2 && until - Date.now() > RECOVERY_WINDOW_MS + 5_000;
    const kind = long ? "past the window" : Math.random() < 0.5 ? "transport closed" : "TCP destroyed";
    const downMs = Math.round(long ? RECOVERY_WINDOW_MS + 2_000 : between(DROP_DOWN_MS));
    const before = await recoveryMetrics(run);
    if (!tab.up) continue;
    const drop = { kind, downMs, from: tab.node, to: nextNode(run, tab.node), before, start: Date.now(), gap: tab.gaps.length };
    tab.planned.push(drop);
    run.bump(`dropping tabs: drops, ${kind}`);
    if (drop.to !== drop.from) run.bump("dropping tabs: drops coming back through another node");
    const io = tab.socket.io;
    io.uri = `http://127.0.0.1:${run.httpPorts[drop.to]}`;
    io.reconnectionDelay(downMs);
    io.reconnectionDelayMax(downMs);
    if (kind === "TCP destroyed") io.engine.transport.ws._socket.destroy();
    else io.engine.close();
    const back = () => tab.up && tab.gaps[drop.gap]?.end !== undefined;
    const by = Date.now() + downMs + BACK_WITHIN_MS;
    while (!back() && Date.now() < by) await sleep(50);
    io.reconnectionDelay(200);
    io.reconnectionDelayMax(1_000);
    // Until it is back, the session is held by the node it dropped from.
    tab.node = drop.to;
    if (drop.to !== drop.from) tab.moves.push({ t: tab.gaps[drop.gap]?.end ?? Date.now(), node: drop.to });
    await judgeDrop(run, tab, drop);
  }
}

/** Whether the drop was recovered as it should have been; why not, when it was not. */
async function judgeDrop(run, tab, drop) {
  const gap = tab.gaps[drop.gap];
  const who = `${tab.userId} (socket ${gap?.prevId}, node ${drop.from} -> ${drop.to}, ${drop.kind} at t=${at(run, drop.start)} s)`;
  if (gap?.end === undefined) {
    const io = tab.socket.io;
    const tried = tab.attempts.filter((a) => a.t >= drop.start).map((a) => `${a.what} at t=${at(run, a.t)} s`);
    run.invariant(
      INV_WINDOW,
      false,
      `${who}: not back ${drop.downMs + BACK_WITHIN_MS} ms after the drop (down ${drop.downMs} ms planned); since: ${tried.join(", ") || "nothing"}; ` +
        `now engine ${io.engine?.readyState}, manager ${io._readyState}, socket ${tab.socket.connected ? "connected" : "not connected"}`,
    );
    return;
  }
  const took = gap.end - gap.start;
  if (gap.recovered) run.bump("dropping tabs: reconnects recovered");
  if (gap.recovered && drop.to !== drop.from) run.bump("dropping tabs: reconnects recovered through another node");
  if (drop.kind === "past the window") {
    run.invariant(INV_WINDOW, !gap.recovered, `${who}: down ${took} ms, past the ${RECOVERY_WINDOW_MS} ms window, yet recovered as ${gap.id}`);
    if (!gap.recovered) run.bump("dropping tabs: reconnects past the window, not recovered as they should");
    return;
  }
  if (gap.recovered) return run.invariant(INV_WINDOW, true);
  const after = await recoveryMetrics(run);
  if ((after.overflows.total_bytes ?? 0) > (drop.before.overflows.total_bytes ?? 0)) {
    run.bump("dropping tabs: reconnects not recovered, the node-wide bound was hit");
  } else if (underFault(run, drop.start) || underFault(run, gap.end)) {
    run.bump("dropping tabs: reconnects not recovered under a fault");
  } else if (took >= RECOVERY_WINDOW_MS) {
    run.bump("dropping tabs: reconnects not recovered, back after the window");
  } else {
    run.invariant(
      INV_WINDOW,
      false,
      `${who}: down ${took} ms (window ${RECOVERY_WINDOW_MS} ms), came back as a new session ${gap.id} (recovered false); ` +
        `recovery attempts meanwhile: ${grown(drop.before.attempts, after.attempts)}; overflows meanwhile: ${grown(drop.before.overflows, after.overflows)}`,
    );
  }
}

const at = (run, t) => ((t - run.t0) / 1000).toFixed(2);

/** A tab's k-th connection (0: the first), as a breach report names it. */
function connLabel(run, tab, k) {
  if (!k) return "first connection";
  const g = tab.gaps[k - 1];
  return `connection ${k} (${g.recovered ? "recovered" : "new session"} ${g.id} through node ${nodeAt(tab, g.end)} at t=${at(run, g.end)} s after ${g.end - g.start} ms down)`;
}

/** Judges the dropping tabs once the load has stopped and every answer is old enough. */
export function checkDropping(run) {
  for (const tab of run.dropping.map((u) => run.tabsOf(u)[0])) {
    tab.gaps.forEach((g, i) => {
      if (g.recovered) run.invariant(INV_RECOVERED, g.id === g.prevId, `${tab.userId}: ${connLabel(run, tab, i + 1)} recovered, but was ${g.prevId} before`);
    });
    checkOrder(run, tab);
    for (const e of tab.sends) checkSend(run, tab, e);
    checkPresence(run, tab);
  }
}

/**
 * Presence never said the tab's user was offline while the tab was connected, nor during a
 * drop whose session was recovered; during a drop that ended in a new session it may have.
 */
function checkPresence(run, tab) {
  // A drop explains what is heard from just before its start (the gateway may notice a
  // destroyed TCP connection first) until a little after its end (in a cluster it crosses Redis).
  const explains = (g, h) => g.start - 200 <= h.t && h.t <= (g.end ?? Infinity) + PRESENCE_SLACK_MS;
  // Heard during or right after a drop that ended in a new session: the user may well have been offline.
  const heard = run.droppingOffline.filter((h) => h.u === tab.userId && !tab.gaps.some((g) => !g.recovered && explains(g, h)));
  const say = (h) => `${h.source} at t=${at(run, h.t)} s`;
  tab.gaps.forEach((g, i) => {
    if (!g.recovered) return;
    const flaps = heard.filter((h) => explains(g, h));
    const excused = flaps.length && flaps.every((h) => underFault(run, h.t));
    if (excused) run.bump("dropping tabs: announced offline during a recovered drop under a fault");
    else run.invariant(INV_FLAP, !flaps.length, `${tab.userId} announced offline during its drop that ${connLabel(run, tab, i + 1)}: ${flaps.slice(0, 3).map(say).join("; ")}`);
  });
  for (const h of heard.filter((x) => !tab.gaps.some((g) => explains(g, x)))) {
    if (underFault(run, h.t)) run.bump("dropping tabs: announced offline while connected, under a fault");
    else run.invariant(INV_FLAP, false, `${tab.userId} announced offline while its tab was connected: ${say(h)}`);
  }
}

/** Per lane, the messages a tab got arrived in send order (a duplicate is judged per message). */
function checkOrder(run, tab) {
  const last = new Map(); // lane -> last arrival
  const seen = new Set();
  for (const a of tab.arrivals) {
    if (!LANES.includes(a.lane) || seen.has(a.id)) continue;
    seen.add(a.id);
    const prev = last.get(a.lane);
    const ok = !prev || a.seq > prev.seq;
    run.invariant(
      INV_RECOVERED,
      ok,
      `${tab.userId}: lane ${a.lane} seq ${a.seq} (${connLabel(run, tab, a.conn)}) arrived after seq ${prev?.seq} (${connLabel(run, tab, prev?.conn)})`,
    );
    if (ok) last.set(a.lane, a);
  }
}

/** One answered send to a dropping tab against what the tab got. */
function checkSend(run, tab, e) {
  const got = tab.arrivals.filter((a) => a.id === e.id);
  const counted = e.delivered + e.pending;
  const answer =
    `sent at t=${at(run, e.t0)} s through node ${e.node}, answered delivered ${e.delivered} pending ${e.pending}` +
    `${e.partial ? " partial" : ""} in ${e.t1 - e.t0} ms`;
  // The drop during (or right after) which it was sent, and whether the session survived it.
  const gi = tab.gaps.findIndex((g) => (g.end ?? Infinity) >= e.t0);
  const gap = tab.gaps[gi];
  // Lost with the session: sent while the old session could still take it (later, only the
  // new socket, kept for while it connects, is counted, and must get it).
  const lost = gap && !gap.recovered && gap.start <= e.t1 + IN_FLIGHT_MS && e.t0 <= gap.start + RECOVERY_WINDOW_MS + IN_FLIGHT_MS;
  const around = gap ? `; the tab dropped at t=${at(run, gap.start)} s, ${gap.end ? connLabel(run, tab, gi + 1) : "never back"}` : "; no drop after it";
  const prior = gi > 0 ? `; before that, ${connLabel(run, tab, gi)}` : "";
  // While a session moves between nodes (one request and answer), both may count it: the
  // node it leaves and the one it joins (README, "Connection state recovery").
  const moving = tab.gaps.some((g) => g.recovered && g.end && e.t0 <= g.end + IN_FLIGHT_MS && g.end - IN_FLIGHT_MS <= e.t1);
  // A reconnect during a fault (Redis paused) that could not reach the node holding its
  // session got a new one; that node keeps the old session, counted, until its window ends.
  const stranded = tab.gaps.some(
    (g) => !g.recovered && g.end && underFault(run, g.end) && g.end <= e.t1 + IN_FLIGHT_MS && e.t0 <= g.start + RECOVERY_WINDOW_MS + IN_FLIGHT_MS,
  );
  if (counted === 2 && moving) run.bump("dropping tabs: answers counting the socket on both nodes while its session moved");
  else if (counted === 2 && stranded) run.bump("dropping tabs: answers counting a session a reconnect during a fault could not recover, until its window");
  else run.invariant(INV_COUNTS, counted <= 1, `${tab.userId}: msg ${e.id} ${answer}, for a user with one tab${around}${prior}`);
  if (got.length > 1) {
    run.invariant(INV_RECOVERED, false, `${tab.userId}: msg ${e.id} arrived ${got.length} times (${got.map((a) => connLabel(run, tab, a.conn)).join("; ")}); ${answer}${around}`);
    return;
  }
  if (counted === 0) {
    if (e.partial) return run.invariant(INV_COUNTS, true);
    // Sent while the session was away and later recovered: it should have been kept for it.
    const kept = tab.gaps.findIndex((g) => g.recovered && g.start <= e.t1 && e.t0 <= g.end);
    const renewed = tab.gaps.some((g) => !g.recovered && g.start <= e.t1 + IN_FLIGHT_MS && e.t0 - IN_FLIGHT_MS <= (g.end ?? Infinity));
    if (!got.length && (kept < 0 || renewed)) return run.invariant(INV_COUNTS, true);
    if (underFault(run, e.t0)) return run.bump("dropping tabs: answers under-counted during fault recovery");
    if (got.length) run.invariant(INV_COUNTS, false, `${tab.userId}: msg ${e.id} reached ${connLabel(run, tab, got[0].conn)} though ${answer}${around}`);
    else run.invariant(INV_RECOVERED, false, `${tab.userId}: msg ${e.id} ${answer}, counted for no socket during the drop that ${connLabel(run, tab, kept + 1)}: never kept, never arrived`);
    return;
  }
  if (got.length) {
    // Kept for a session that was not recovered, well before the new socket connected: the
    // new session must not get it.
    // (Under a fault a reconnect's handshake may take its timeouts: a message answered then
    // may have been kept for the connecting socket, which does get it.)
    const leaked = e.delivered === 0 && lost && got[0].conn > gi && e.t1 < gap.end - IN_FLIGHT_MS && !underFault(run, e.t0);
    run.invariant(INV_COUNTS, !leaked, `${tab.userId}: msg ${e.id} kept for the session that dropped reached ${connLabel(run, tab, got[0].conn)}; ${answer}`);
    run.invariant(INV_RECOVERED, true);
    if (e.pending) run.bump("dropping tabs: messages kept while away that arrived");
    return;
  }
  if (lost) return run.bump("dropping tabs: messages lost with a session not recovered");
  // The call delivers once its turn on the gRPC connection comes (up to a second behind each
  // call before it), so a slow answer may have been delivered to a later drop's session: one
  // not recovered lost it too.
  if (gi >= 0 && tab.gaps.some((g, i) => i > gi && !g.recovered && g.start <= e.t1 + IN_FLIGHT_MS)) {
    return run.bump("dropping tabs: messages lost with a later drop's session, not recovered, during a slow answer");
  }
  // Counted only for the session left stranded (its client reconnected elsewhere during the
  // fault and got a new one): "pending" promised it only to a recovery, which never came.
  if (stranded && e.delivered === 0) return run.bump("dropping tabs: messages kept for a session stranded by a fault, never recovered");
  const lane = tab.arrivals.filter((a) => a.lane === e.lane);
  const before = lane.findLast((a) => a.seq < e.seq);
  const next = lane.find((a) => a.seq > e.seq);
  const near = [before, next].map((a) => (a ? `seq ${a.seq} on ${connLabel(run, tab, a.conn)}` : "none")).join(", next ");
  run.invariant(INV_RECOVERED, false, `${tab.userId}: msg ${e.id} never arrived; ${answer}${around}; lane ${e.lane} got before it ${near}`);
}

/** Once the load has stopped: no session stays away past the window (polled, up to window + 5 s). */
export async function checkExpiry(run) {
  const by = Date.now() + RECOVERY_WINDOW_MS + 5_000;
  let m = await recoveryMetrics(run);
  while ((m.away > 0 || m.nodes < run.nodes.length) && Date.now() < by) {
    await sleep(500);
    m = await recoveryMetrics(run);
  }
  run.recoveryEnd = m;
  run.invariant(
    INV_EXPIRE,
    m.seen.has("sessions_away") && m.nodes === run.nodes.length && m.away === 0,
    `${m.seen.has("sessions_away") ? `${m.away} session(s) still away` : "no gateway_recovery_sessions_away metric"} on ${m.nodes} of ${run.nodes.length} node(s) ${RECOVERY_WINDOW_MS + 5_000} ms after the load (kept bytes ${m.keptBytes})`,
  );
}
