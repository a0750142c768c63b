// The soak run's browser tabs: socket.io-client sockets that reconnect like a page does and
// keep, across reconnects, every soak message they got, when they were down (and whether
// the reconnect recovered the session) and every disconnectReason they were told. Every tab stays in the run's ledger after it closes, so a
// message that arrives late (after an answer said it would not) is still seen.
import { io } from "socket.io-client";

/**
 * Opens a tab of `userId` on node `node` of `run` and files it under run.tabsOf(userId).
 * `presence` is the Socket.IO presence mode; `onSoak(tab, m)` is called for each soak message,
 * `onOnline(tab, { list } | { offline })` for each presence event. A `rejoin` tab connects
 * again when the server disconnects it, as a page that means to stay does (socket.io-client
 * itself reconnects only after a dropped transport). `io` adds socket.io-client options.
 */
export function openTab(run, { userId, node, presence = "list", rejoin = false, onSoak, onOnline, io: ioOptions = {} }) {
  const tab = {
    userId,
    node,
    firstNode: node,
    got: new Map(), // message id -> times received
    gaps: [], // { start, end, prevId, id, recovered } while disconnected, and how it came back
    drops: [], // why it disconnected, during the load
    reasons: [], // { t, reason } of each disconnectReason
    disconnects: [], // ms since the epoch of each disconnect
    lastOnline: null,
    moves: [], // { t, node }: reconnected through another node at t (a dropping tab)
    up: false,
    closed: false,
  };
  const s = io(`http://127.0.0.1:${run.httpPorts[node]}`, {
    query: { userId, presence },
    transports: ["websocket"],
    reconnectionDelay: 200,
    reconnectionDelayMax: 1_000,
    forceNew: true,
    ...ioOptions,
  });
  tab.socket = s;
  s.on("connect", () => {
    run.counts.connects += 1;
    const gap = tab.gaps.at(-1);
    if (gap && gap.end === undefined) Object.assign(gap, { end: Date.now(), id: s.id, recovered: Boolean(s.recovered) });
    tab.id = s.id;
    tab.up = true;
  });
  s.on("disconnect", (reason) => {
    tab.up = false;
    tab.gaps.push({ start: Date.now(), prevId: tab.id });
    tab.disconnects.push(Date.now());
    if (!run.stopping && !tab.closed) tab.drops.push(`t=${run.t.toFixed(1)} s: ${reason}`);
    if (rejoin && reason === "io server disconnect") setTimeout(() => tab.closed || s.connect(), 200);
  });
  s.on("disconnectReason", (reason) => tab.reasons.push({ t: Date.now(), reason }));
  // A `changes` tab keeps its list from the whole list and the change sets after it.
  s.on("getOnlineUsers", (ids) => {
    tab.lastOnline = ids;
    onOnline?.(tab, { list: ids });
  });
  s.on("onlineUsersChanged", ({ online, offline }) => {
    const set = new Set(tab.lastOnline ?? []);
    online.forEach((u) => set.add(u));
    offline.forEach((u) => set.delete(u));
    tab.lastOnline = [...set];
    onOnline?.(tab, { offline });
  });
  s.on("soak", (m) => {
    tab.got.set(m.id, (tab.got.get(m.id) ?? 0) + 1);
    onSoak?.(tab, m);
  });
  run.tabsOf(userId).push(tab);
  return tab;
}

/** Closes a tab for good (its record stays in the run). */
export function closeTab(tab) {
  tab.closed = true;
  tab.socket.close();
}

/** The node tab was connected through (or, while down, held by) at time t. */
export function nodeAt(tab, t) {
  return tab.moves.findLast((m) => m.t <= t)?.node ?? tab.firstNode;
}

/**
 * The nodes through which `tab`'s connection `conn` (0: the first) and the earlier connections
 * whose session it recovered held that session at some time in [from, to]. A node holds a
 * session from the drop before its connection (the server admits a reconnect before its client
 * hears the CONNECT) until the client's next connect (kept while away, until another node takes
 * it over), so a message a node kept for the session while it was away, replayed by a recovery
 * through another node, is traced to the node that kept it.
 */
export function sessionNodes(tab, conn, from, to) {
  let first = conn;
  while (first > 0 && tab.gaps[first - 1].recovered) first -= 1;
  const nodes = new Set();
  for (let i = first; i <= conn; i++) {
    const start = i === 0 ? -Infinity : tab.gaps[i - 1].start;
    const end = tab.gaps[i]?.end ?? Infinity;
    if (start <= to && from <= end) nodes.add(connNode(tab, i));
  }
  return nodes;
}

/** The node `tab`'s connection `conn` (0: the first) went through. */
export function connNode(tab, conn) {
  return conn === 0 ? tab.firstNode : nodeAt(tab, tab.gaps[conn - 1].end);
}

/** Whether tab was down (or reconnecting) at any time in [from - slack, to + slack]. */
export function tabHadGap(tab, from, to, slack = 1_000) {
  return !tab.up || tab.gaps.some((g) => g.start <= to + slack && (g.end ?? Infinity) >= from - slack);
}

/** Resolves once every tab is connected; throws after timeoutMs. */
export async function waitUp(tabs, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (tabs.some((t) => !t.up)) {
    if (Date.now() > deadline) throw new Error(`${what}: not all connected within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
