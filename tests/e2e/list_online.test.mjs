// ListOnline through grpcurl: sorted, paged with an opaque token, total = online users.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gatewayForSuite, grpcOk, listOnlineAll, waitOnline, connectUser } from "./helpers.mjs";

const { gw, clients, testCleanExit } = gatewayForSuite();
const LIST = "messaging.v1.Messaging/ListOnline";

test("ListOnline on an empty gateway returns no users and total 0", async () => {
  const resp = await grpcOk(gw.grpcAddr, LIST, {});
  // grpcurl omits empty fields.
  assert.deepEqual(resp.userIds ?? [], []);
  assert.equal(resp.total ?? 0, 0);
  assert.equal(resp.nextPageToken ?? "", "");
});

test("ListOnline pages through the users sorted by id", async () => {
  // Connected out of order, one with two tabs, one over polling.
  const ids = ["mia", "lee", "noor", "kai"];
  for (const id of ids) clients.push(await connectUser(gw.url, id));
  clients.push(await connectUser(gw.url, "lee", { transports: ["polling"] }));
  const sorted = [...ids].sort();
  await waitOnline(gw.grpcAddr, (l) => l.length === ids.length, 5_000, "all users online");

  // page_size 1: one user per page, in order; token empty only on the last page.
  let token = "";
  const seen = [];
  for (let page = 0; page < sorted.length; page++) {
    const req = { page_size: 1 };
    if (token) req.page_token = token;
    const resp = await grpcOk(gw.grpcAddr, LIST, req);
    assert.deepEqual(resp.userIds, [sorted[page]], `page ${page}: ${JSON.stringify(resp)}`);
    assert.equal(resp.total, sorted.length, `total on page ${page}`);
    token = resp.nextPageToken ?? "";
    if (page < sorted.length - 1) {
      assert.ok(token, `page ${page} is not the last: it needs a next_page_token`);
    } else {
      assert.equal(token, "", `the last page has an empty next_page_token: ${JSON.stringify(resp)}`);
    }
    seen.push(...resp.userIds);
  }
  assert.deepEqual(seen, sorted);

  // page_size 3: two pages.
  const { ids: all3, pages } = await listOnlineAll(gw.grpcAddr, 3);
  assert.deepEqual(all3, sorted);
  assert.equal(pages.length, 2);
  assert.deepEqual(pages[0].userIds, sorted.slice(0, 3));
  assert.deepEqual(pages[1].userIds, sorted.slice(3));

  // page_size 0 means the default (100): everything in one page.
  const resp = await grpcOk(gw.grpcAddr, LIST, {});
  assert.deepEqual(resp.userIds, sorted);
  assert.equal(resp.total, sorted.length);
  assert.equal(resp.nextPageToken ?? "", "");
});

test("a user who leaves between pages is not returned and nobody else is skipped or repeated", async () => {
  const before = (await listOnlineAll(gw.grpcAddr)).ids;
  assert.deepEqual(before, ["kai", "lee", "mia", "noor"]);
  const p1 = await grpcOk(gw.grpcAddr, LIST, { page_size: 2 });
  assert.deepEqual(p1.userIds, ["kai", "lee"]);
  // "mia" leaves and "lara" (sorts before the cursor) plus "ned" (after it) arrive.
  for (const c of clients.filter((c) => c.socket.io.opts.query.userId === "mia")) c.close();
  clients.push(await connectUser(gw.url, "lara"), await connectUser(gw.url, "ned"));
  await waitOnline(gw.grpcAddr, (l) => !l.includes("mia") && l.includes("lara") && l.includes("ned"));
  const rest = [];
  let token = p1.nextPageToken;
  while (token) {
    const resp = await grpcOk(gw.grpcAddr, LIST, { page_size: 2, page_token: token });
    rest.push(...(resp.userIds ?? []));
    token = resp.nextPageToken ?? "";
  }
  assert.deepEqual(rest, ["ned", "noor"], "the rest continues after the cursor, in order");
});

testCleanExit();
