// The contract probes sent while a fault is under way, each judged against what the gateway
// answered once the fault is over: idempotent sends retried with their key, sends kept for
// an offline user (`ttl_seconds`), a Broadcast, and around a frozen node a user whose only
// tab sits on it, mail kept for that user and a DisconnectUser of another such user.
import { setTimeout as sleep } from "node:timers/promises";
import grpc from "@grpc/grpc-js";
import { toValue } from "../../../examples/node/value.mjs";
import { LEASE_MS, RECONCILE_MS, RETRY_DEADLINE_MS, RPC_DEADLINE_MS } from "./shape.mjs";
import { closeTab, openTab, tabHadGap, waitUp } from "./tabs.mjs";
import { unary } from "./wire.mjs";

export const INV_RETRY = "a retry with the same idempotency_key after an error delivers once, answered within 3 s";
export const INV_QUEUED = "queued: true reaches the user's next connected tab";
export const INV_WOKEN = "a woken node's sockets are told and reconnect, or are online on every node again";
export const INV_DISCONNECT = "a DisconnectUser decided while a node slept is carried out when it wakes";

/** Kept mail's ttl_seconds: longer than any probe waits. */
const TTL_SECONDS = 120;

/** Whether `userId` is listed online by GetPresence on every node; { ok, detail }. */
async function onlineEverywhere(run, userId) {
  const views = await Promise.all(
    run.clients.map((c) =>
      unary(c, "GetPresence", { user_ids: [userId] })
        .then((r) => (r.users[0]?.online ? "online" : "offline"))
        .catch((e) => `error ${grpc.status[e.code] ?? e.message}`),
    ),
  );
  return { ok: views.every((v) => v === "online"), detail: views.map((v, i) => `node ${i}: ${v}`).join(", ") };
}

/** Polls `probe` (async, returning truthy when done) every 200 ms until it holds or ms pass. */
async function within(ms, probe) {
  const until = Date.now() + ms;
  for (;;) {
    if (await probe()) return true;
    if (Date.now() > until) return false;
    await sleep(200);
  }
}

/**
 * One SendDirect of a probe; files the answer with the run's ledger. Returns
 * { id, receiver, answer } or { id, receiver, err } (err: the gRPC error).
 */
async function probeSend(run, node, receiver, id, extra = {}, deadlineMs = RPC_DEADLINE_MS) {
  const t0 = Date.now();
  const req = { receiver_id: receiver, sender_id: "soak", event: "soak", message: toValue({ id, lane: `p-${id}`, seq: 0 }), ...extra };
  try {
    const answer = await unary(run.clients[node], "SendDirect", req, deadlineMs);
    run.bump("probe sends answered");
    return { id, receiver, key: extra.idempotency_key, answer, t0, t1: Date.now() };
  } catch (err) {
    if (run.answers.refusedBy(err)) run.answers.refuse(id, [receiver], node, err, t0);
    else run.bump(`probe sends failed ${grpc.status[err.code] ?? "?"}`);
    return { id, receiver, key: extra.idempotency_key, err, t0, t1: Date.now() };
  }
}

/** Files a probe's answer for the exact delivery check (a queued answer is judged apart). */
function fileAnswer(run, s) {
  if (s.answer && !s.answer.queued) run.answers.expect(s.id, s.receiver, s.answer.delivered_sockets, s.answer.partial, s.t0);
}

/**
 * Sends during a Redis pause through `node`: idempotent sends to steady users with no tab on
 * `node` (a cross-node delivery), kept mail to a user who is offline, and a Broadcast.
 */
export async function duringRedisPause(run, node, label) {
  const n = run.faults.length;
  const remote = run.steady.filter((u) => run.tabsOf(u).every((t) => t.node !== node));
  const idem = remote.slice(0, 4).map((u, i) => probeSend(run, node, u, `i${n}-${i}`, { idempotency_key: `soak-${n}-${i}` }));
  const mailUser = `mbox-${n}`;
  const mail = [0, 1, 2].map((i) => probeSend(run, node, mailUser, `m${n}-${i}`, { ttl_seconds: TTL_SECONDS }));
  const broadcast = (async () => {
    const id = `b${n}`;
    const t0 = Date.now();
    try {
      await unary(run.clients[node], "Broadcast", { sender_id: "soak", event: "soak", message: toValue({ id, lane: `p-${id}`, seq: 0 }) });
      run.bump("probe broadcasts answered");
    } catch (err) {
      if (run.answers.refusedBy(err)) run.answers.refuse(id, null, node, err, t0);
    }
  })();
  const [idemSends, mailSends] = await Promise.all([Promise.all(idem), Promise.all(mail), broadcast]);
  return { label, node, idemSends, mailUser, mailSends };
}

/** After the pause: retries every idempotent send, then drains the offline user's kept mail. */
export async function afterRedisPause(run, probe) {
  const { label, node } = probe;
  await Promise.all(probe.idemSends.map((s) => retryOnce(run, node, s, label)));
  probe.idemSends.forEach((s) => fileAnswer(run, s));
  probe.mailSends.forEach((s) => fileAnswer(run, s));
  const queued = probe.mailSends.filter((s) => s.answer?.queued);
  const tab = openTab(run, { userId: probe.mailUser, node: (node + 1) % run.nodes.length, rejoin: true });
  await within(RECONCILE_MS, () => queued.every((s) => tab.got.has(s.id)));
  for (const s of queued) {
    run.invariant(INV_QUEUED, tab.got.has(s.id), `msg ${s.id} answered queued: true to offline ${s.receiver} never reached its next tab within ${RECONCILE_MS} ms`, label);
  }
  closeTab(tab);
}

/**
 * Retries one idempotent send with its key (RETRY_DEADLINE_MS); after an error the retry
 * must answer and deliver to every tab once, after an answer it must not deliver again.
 */
async function retryOnce(run, node, s, label) {
  // The retry carries the same message id: after an error the two are told apart by the
  // count per tab (exactly one), not by the refusal check.
  if (s.err) run.answers.forget(s.id);
  const r = await probeSend(run, node, s.receiver, s.id, { idempotency_key: s.key }, RETRY_DEADLINE_MS);
  if (!s.err) {
    // The first call delivered it: a retry refused meanwhile does not undo that.
    run.answers.forget(s.id);
    fileAnswer(run, r);
    return;
  }
  await sleep(1_500);
  const tabs = run.tabsOf(s.receiver);
  const per = tabs.map((t) => t.got.get(s.id) ?? 0);
  if (r.answer && tabs.some((t) => tabHadGap(t, r.t0, r.t1))) {
    run.bump("excluded: retry's receiver tab reconnecting");
    return;
  }
  // Once on every tab; a partial answer (a node late to answer) may have missed some.
  const reached = per.filter((c) => c > 0).length;
  const once = per.every((c) => c <= 1) && reached >= 1 && (reached === tabs.length || r.answer?.partial);
  run.invariant(
    INV_RETRY,
    Boolean(r.answer) && once,
    `msg ${s.id} to ${s.receiver}: first ${grpc.status[s.err.code]} "${String(s.err.details).slice(0, 120)}", ` +
      `retry ${r.answer ? `answered ${JSON.stringify(r.answer)} in ${r.t1 - r.t0} ms` : `${grpc.status[r.err.code]} after ${r.t1 - r.t0} ms`}, tabs got it ${per}`,
    label,
  );
  fileAnswer(run, r);
}

/**
 * Before a freeze of node `victim`: a user whose only tab is there, and another one to be
 * disconnected while it sleeps; both listed online by every node before the freeze.
 */
export async function beforeFreeze(run, victim) {
  const n = run.faults.length + 1; // the number the freeze is about to get
  const stay = openTab(run, { userId: `frozen-stay-${n}`, node: victim, rejoin: true });
  const gone = openTab(run, { userId: `frozen-dc-${n}`, node: victim });
  await waitUp([stay, gone], 10_000, "frozen-node probe tabs");
  await within(5_000, async () => (await onlineEverywhere(run, stay.userId)).ok && (await onlineEverywhere(run, gone.userId)).ok);
  return { victim, stay, gone };
}

/** While the node sleeps, past its lease: a DisconnectUser and kept mail through another node. */
export async function duringFreeze(run, probe) {
  const node = run.nodes.findIndex((_, i) => i !== probe.victim);
  probe.dcAt = Date.now();
  probe.dc = await unary(run.clients[node], "DisconnectUser", { user_id: probe.gone.userId, reason: "soak: disconnected while its node slept" })
    .then((answer) => ({ answer }))
    .catch((err) => ({ err }));
  const n = run.faults.length;
  probe.mailSends = await Promise.all(
    [0, 1, 2].map((i) => probeSend(run, node, probe.stay.userId, `f${n}-${i}`, { ttl_seconds: TTL_SECONDS })),
  );
}

/** Once the node is awake: its sockets, the disconnect and the kept mail, within RECONCILE_MS. */
export async function afterFreeze(run, probe, label, frozeAt) {
  const { stay, gone } = probe;
  const queued = probe.mailSends.filter((s) => s.answer?.queued);
  probe.mailSends.forEach((s) => fileAnswer(run, s));
  const told = (tab, since) => tab.reasons.some((r) => r.t >= since);
  // Carried out: its socket was told and closed (a page may connect again: its choice).
  const goneDone = () => Boolean(probe.dc.err) || (gone.disconnects.some((t) => t >= probe.dcAt) && told(gone, probe.dcAt));
  let view = { ok: false, detail: "not asked" };
  const stayDone = async () => {
    const dropped = stay.disconnects.some((t) => t >= frozeAt);
    if (!stay.up || (dropped && !told(stay, frozeAt))) return false;
    view = await onlineEverywhere(run, stay.userId);
    return view.ok;
  };
  await within(RECONCILE_MS, async () => goneDone() && (await stayDone()) && queued.every((s) => stay.got.has(s.id)));
  const dropped = stay.disconnects.filter((t) => t >= frozeAt).length;
  run.invariant(
    INV_WOKEN,
    await stayDone(),
    `${stay.userId} (only tab on node ${probe.victim}) ${RECONCILE_MS} ms after the wake: ${stay.up ? "connected" : "down"}, ` +
      `${dropped} disconnect(s) since the freeze, ${stay.reasons.filter((r) => r.t >= frozeAt).length} disconnectReason(s); presence ${view.detail}`,
    label,
  );
  if (probe.dc.err) run.bump(`DisconnectUser during a freeze failed ${grpc.status[probe.dc.err.code]}`);
  else {
    run.invariant(
      INV_DISCONNECT,
      goneDone(),
      `DisconnectUser ${gone.userId} answered ${JSON.stringify(probe.dc.answer)} while node ${probe.victim} slept; ${RECONCILE_MS} ms after the wake ` +
        `its tab had ${gone.disconnects.filter((t) => t >= probe.dcAt).length} disconnect(s) since and was told ${gone.reasons.length} reason(s)`,
      label,
    );
  }
  for (const s of queued) {
    run.invariant(INV_QUEUED, stay.got.has(s.id), `msg ${s.id} answered queued: true while ${stay.userId}'s tab on node ${probe.victim} slept, not received ${RECONCILE_MS} ms after the wake`, label);
  }
  closeTab(stay);
  closeTab(gone);
}

/** How long a freeze waits before its probes: the others have presumed the node dead. */
export const PRESUMED_DEAD_MS = LEASE_MS + LEASE_MS / 5 + 700;
