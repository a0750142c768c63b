// One user with several tabs (sockets): every tab receives, the user stays online until
// the last tab closes.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  gatewayForSuite,
  sendDirect,
  delivered,
  connectUser,
  listOnlineAll,
  waitOnline,
  sleep,
} from "./helpers.mjs";

const { gw, clients, testCleanExit } = gatewayForSuite();

for (const [name, t1, t2] of [
  ["websocket+websocket", "websocket", "websocket"],
  ["websocket+polling", "websocket", "polling"],
]) {
  test(`[${name}] two tabs of one user both receive; a third user receives nothing; presence follows the last tab`, async () => {
    const user = `dana-${name}`;
    const third = `erin-${name}`;
    const tab1 = await connectUser(gw.url, user, { transports: [t1] });
    const tab2 = await connectUser(gw.url, user, { transports: [t2] });
    const other = await connectUser(gw.url, third, { transports: ["websocket"] });
    clients.push(tab1, tab2, other);
    await other.waitOnlineUsers((ids) => ids.includes(user) && ids.includes(third));

    const s1 = tab1.mark();
    const s2 = tab2.mark();
    const message = { text: "to every tab", tabs: 2 };
    const resp = await sendDirect(gw.grpcAddr, { receiver_id: user, message, sender_id: "svc" });
    assert.deepEqual(resp, { deliveredSockets: 2 });
    assert.deepEqual((await tab1.waitFor("newMessage", { since: s1 })).args[0], message);
    assert.deepEqual((await tab2.waitFor("newMessage", { since: s2 })).args[0], message);
    await sleep(300);
    assert.equal(tab1.received("newMessage", s1).length, 1);
    assert.equal(tab2.received("newMessage", s2).length, 1);
    assert.equal(other.received("newMessage").length, 0, "the third user must receive nothing");

    // The user is listed once, however many tabs.
    const { ids } = await listOnlineAll(gw.grpcAddr);
    assert.equal(ids.filter((id) => id === user).length, 1, JSON.stringify(ids));
    const lastList = other.lastOnlineUsers();
    assert.equal(lastList.filter((id) => id === user).length, 1, JSON.stringify(lastList));

    // Closing one tab keeps the user online, and the other tab still receives.
    tab1.close();
    await sleep(500);
    const still = (await listOnlineAll(gw.grpcAddr)).ids;
    assert.ok(still.includes(user), `user must stay online with one tab left: ${JSON.stringify(still)}`);
    assert.ok(other.lastOnlineUsers().includes(user), "getOnlineUsers must still list the user");
    const s2b = tab2.mark();
    const resp2 = await sendDirect(gw.grpcAddr, { receiver_id: user, message: "one tab left" });
    assert.equal(delivered(resp2), 1);
    assert.equal((await tab2.waitFor("newMessage", { since: s2b })).args[0], "one tab left");

    // Closing the last tab takes the user offline: ListOnline and getOnlineUsers agree.
    const so = other.mark();
    tab2.close();
    await waitOnline(gw.grpcAddr, (l) => !l.includes(user), 5_000, `${user} offline in ListOnline`);
    await other.waitOnlineUsers((l) => !l.includes(user) && l.includes(third), { since: so });
    const resp3 = await sendDirect(gw.grpcAddr, { receiver_id: user, message: "gone" });
    assert.equal(delivered(resp3), 0);
    other.close();
  });
}

testCleanExit();
