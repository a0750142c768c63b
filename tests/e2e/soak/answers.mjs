// What the gateway answered, checked against what the tabs got: every answered send of the
// load and of the fault probes is filed here and judged once it is old enough for its
// message to have arrived (or, for a refusal, once the run has ended).
import grpc from "@grpc/grpc-js";
import { connNode, nodeAt, sessionNodes, tabHadGap } from "./tabs.mjs";

export const INV_EXACT = "delivered_sockets = sockets reached (no loss, no extra)";
export const INV_DUP = "no duplicate delivery";
export const INV_COUNTED = "every connected tab counted";
export const INV_PARTIAL = "partial: true is a lower bound (sockets reached >= delivered_sockets)";
export const INV_REFUSED = "an UNAVAILABLE answer is never delivered (beyond the sockets it names)";

/**
 * A grpc-js status the client library made up because the connection failed (node killed,
 * connection reset): not the gateway's answer, so nothing is concluded from it.
 */
export function transportFailure(err) {
  return /No connection established|Connection dropped|ECONNRESET|ECONNREFUSED|EPIPE|RST_STREAM|Call cancelled|Stream refused|GOAWAY|socket hang up/i.test(
    `${err.details ?? ""} ${err.message ?? ""}`,
  );
}

export class Answers {
  constructor(run) {
    this.run = run;
    this.pending = []; // answered, not yet checked
    this.refused = []; // answered UNAVAILABLE by the gateway
  }

  /** Files one answered send: receiver, delivered_sockets and partial as answered. */
  expect(id, receiver, delivered, partial, t0) {
    this.pending.push({ id, receiver, delivered, partial, t0, t1: Date.now() });
  }

  /**
   * Files a send the gateway answered UNAVAILABLE on `node`: it must never reach a tab on
   * another node, nor more tabs on `node` than the answer says took it. receivers: null for a
   * Broadcast (every user); t0: when the send began (it is answered now).
   */
  refuse(id, receivers, node, err, t0) {
    const why = err.details ?? err.message ?? "";
    // The sockets that took it, and those that kept it for a recovery (they replay it if their
    // client reconnects in time).
    const local = /(\d+) socket\(s\)(?: on this node)? took the message(?:, (\d+) kept it for a recovery)?/.exec(why);
    const named = local ? Number(local[1]) + Number(local[2] ?? 0) : 0;
    this.refused.push({ id, receivers, node, local: named, t0, t1: Date.now(), why: err.details ?? err.message });
    this.run.counts["sends answered UNAVAILABLE (checked never delivered)"] =
      (this.run.counts["sends answered UNAVAILABLE (checked never delivered)"] ?? 0) + 1;
  }

  /** Drops the refusals of `id`: it is sent again under the same id (a retry). */
  forget(id) {
    this.refused = this.refused.filter((r) => r.id !== id);
  }

  /** Judges a send's RPC error: returns true when it was the gateway's UNAVAILABLE. */
  refusedBy(err) {
    return err.code === grpc.status.UNAVAILABLE && !transportFailure(err);
  }

  /** Checks answered sends older than `ageMs` (all of them with 0). */
  checkDeliveries(ageMs) {
    const run = this.run;
    const cutoff = Date.now() - ageMs;
    const keep = [];
    for (const p of this.pending) {
      if (p.t1 > cutoff) {
        keep.push(p);
        continue;
      }
      run.counts["messages checked per receiver"] += 1;
      const tabs = run.tabsOf(p.receiver);
      const at = run.faultAt(p.t0);
      if (tabs.some((t) => tabHadGap(t, p.t0, p.t1))) {
        run.bump("excluded: receiver tab reconnecting");
        continue;
      }
      const per = tabs.map((t) => t.got.get(p.id) ?? 0);
      const reached = per.filter((c) => c > 0).length;
      run.invariant(INV_DUP, per.every((c) => c <= 1), `msg ${p.id} to ${p.receiver}: ${per}`, at);
      if (p.partial) {
        run.invariant(INV_PARTIAL, reached >= p.delivered, `msg ${p.id} to ${p.receiver}: partial answer ${p.delivered}, reached ${reached}`, at);
        continue;
      }
      run.invariant(INV_EXACT, reached === p.delivered, `msg ${p.id} to ${p.receiver}: answer ${p.delivered}, reached ${reached}`, at);
      if (p.delivered < tabs.length && run.recovering(p.t0)) {
        run.bump("answers under-counted during fault recovery");
        continue;
      }
      run.invariant(INV_COUNTED, p.delivered === tabs.length, `msg ${p.id} to ${p.receiver}: answer ${p.delivered} of ${tabs.length} connected tabs`, at);
    }
    this.pending = keep;
  }

  /**
   * Checks every refusal (at the end of the run: a late arrival counts too). A tab that got
   * the message counts against the sockets the answer names when the session it got it
   * through was held by the answering node while the send ran: taken by its socket there, or
   * kept there while it was away and replayed by its recovery, maybe through another node
   * (the answer names it as kept for a recovery). Otherwise it reached another node's socket.
   */
  checkRefused() {
    const run = this.run;
    for (const r of this.refused) {
      const tabs = r.receivers ? r.receivers.flatMap((u) => run.tabsOf(u)) : run.everyTab();
      const got = tabs.filter((t) => t.got.has(r.id));
      const through = (t) => t.arrivals?.find((a) => a.id === r.id)?.conn;
      const held = (t) => (through(t) === undefined ? new Set([nodeAt(t, r.t0)]) : sessionNodes(t, through(t), r.t0, r.t1));
      const elsewhere = got.filter((t) => !held(t).has(r.node));
      const here = got.length - elsewhere.length;
      const replayed = got.filter((t) => !elsewhere.includes(t) && through(t) !== undefined && connNode(t, through(t)) !== r.node);
      if (replayed.length) run.bump("dropping tabs: UNAVAILABLE answers' kept messages replayed by a recovery through another node");
      const at = (t) => ((t - run.t0) / 1000).toFixed(2);
      const how = (t) =>
        `${t.userId} on connection ${through(t) ?? "?"}, its session held by node(s) ${[...held(t)].join(", ") || "none"} meanwhile`;
      run.invariant(
        INV_REFUSED,
        elsewhere.length === 0 && here <= r.local,
        `msg ${r.id} sent at t=${at(r.t0)} s, answered UNAVAILABLE by node ${r.node} at t=${at(r.t1)} s ("${String(r.why).slice(0, 100)}") ` +
          `reached ${elsewhere.length} tab(s) on other nodes (${elsewhere.map(how).join("; ")}) and ${here} on node ${r.node} (answer names ${r.local})`,
        run.faultAt(r.t0),
      );
    }
    this.refused = [];
  }
}
