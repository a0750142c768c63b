// The soak's check of UNAVAILABLE answers (soak/answers.mjs) on recorded tab histories, no
// gateway: a tab that got a refused message counts against the sockets the answer names when
// the session it got it through was held by the answering node while the send ran (taken by
// its socket there, or kept there while away and replayed by a recovery through another
// node); any other arrival is a breach.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Answers, INV_REFUSED } from "./soak/answers.mjs";

/** A run with one tab per user: just what the check reads, and the breaches it records. */
function fakeRun(tabs) {
  const run = {
    t0: 0,
    counts: {},
    breaches: [],
    tabsOf: (u) => tabs.filter((t) => t.userId === u),
    everyTab: () => tabs,
    faultAt: () => "no fault under way",
    bump: (c) => (run.counts[c] = (run.counts[c] ?? 0) + 1),
    invariant: (name, ok, detail) => ok || run.breaches.push(`${name}: ${detail}`),
  };
  return run;
}

/**
 * A dropping tab that started on `firstNode`; `gaps`: { start, end, recovered, to } each, `to`
 * the node it came back through; `conn`: the connection msg arrived on.
 */
function tab(firstNode, gaps, conn) {
  return {
    userId: "drop-0",
    firstNode,
    got: new Map([["msg", 1]]),
    arrivals: [{ id: "msg", conn }],
    gaps: gaps.map(({ start, end, recovered }) => ({ start, end, recovered })),
    moves: gaps.filter((g, i) => g.to !== (i ? gaps[i - 1].to : firstNode)).map((g) => ({ t: g.end, node: g.to })),
  };
}

/** The breaches of a refusal by node 2 of a send that ran from t=1500 to t=2500 ms. */
function judge(t, why = "0 socket(s) on this node took the message, 1 kept it for a recovery") {
  const run = fakeRun([t]);
  const answers = new Answers(run);
  answers.refuse("msg", ["drop-0"], 2, { details: `other gateway nodes hold sockets of drop-1 but cannot be reached: x; ${why}` }, 1_500);
  answers.refused[0].t1 = 2_500;
  answers.checkRefused();
  return run.breaches;
}

test("a message kept by the answering node for a session away, replayed by its recovery through another node, is one it named", () => {
  // Dropped from node 2 at 1000, recovered through node 1 at 2000 (before the answer).
  assert.deepEqual(judge(tab(2, [{ start: 1_000, end: 2_000, recovered: true, to: 1 }], 1)), []);
});

test("a message the answering node's socket took before its tab moved is one it named", () => {
  const moved = tab(2, [{ start: 1_600, end: 2_200, recovered: false, to: 1 }], 0);
  assert.deepEqual(judge(moved, "1 socket(s) on this node took the message, 0 kept it for a recovery"), []);
});

test("a message reaching a session held by another node is a breach", () => {
  // On node 1 all along.
  const [breach] = judge(tab(1, [], 0));
  assert.ok(breach.startsWith(`${INV_REFUSED}: `), breach);
  assert.match(breach, /reached 1 tab\(s\) on other nodes \(drop-0 on connection 0, its session held by node\(s\) 1 meanwhile\)/);
  // Node 2 held the old session, but a new session on node 1 got it.
  const renewed = tab(2, [{ start: 1_000, end: 1_200, recovered: false, to: 1 }], 1);
  assert.match(judge(renewed)[0], /reached 1 tab\(s\) on other nodes \(drop-0 on connection 1, its session held by node\(s\) 1 meanwhile\)/);
  // Recovered through node 1 from node 0, which held it while the send ran.
  assert.equal(judge(tab(0, [{ start: 1_000, end: 2_000, recovered: true, to: 1 }], 1)).length, 1);
});

test("more tabs reached on the answering node than it named is a breach", () => {
  const kept = tab(2, [{ start: 1_000, end: 2_000, recovered: true, to: 1 }], 1);
  assert.match(judge(kept, "0 socket(s) on this node took the message, 0 kept it for a recovery")[0], /and 1 on node 2 \(answer names 0\)/);
});
