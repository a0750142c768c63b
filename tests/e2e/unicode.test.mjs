// Payloads and user ids with any Unicode arrive exactly, over both transports.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  gatewayForSuite,
  startGateway,
  stopAndAssertClean,
  sendDirect,
  delivered,
  connectUser,
  listOnlineAll,
} from "./helpers.mjs";

const { gw, clients, testCleanExit } = gatewayForSuite();

const STRINGS = [
  "emoji 😀🎉👩‍👩‍👧‍👦🏳️‍🌈 and a flag 🇯🇵",
  "CJK 漢字かなカナ한국어 中文",
  "RTL עברית العربية مرحبا",
  "mixed ltr עברית ltr again",
  "control \n newline \t tab \r cr \b bs \f ff \u0001 \u001f \u007f",
  'quotes " double \' single ` back',
  "backslashes \\ \\\\ \\n \\u0041 C:\\path\\to",
  "astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 🀄",
  "combining é vs é, zero width \u200b\u200d, bom \ufeff, replacement \ufffd",
  "json-ish {\"a\": [1, 2]} </script> <b>&amp;</b>",
  "line sep \u2028 para sep \u2029",
];

for (const transport of ["websocket", "polling"]) {
  test(`[${transport}] Unicode strings, keys and nesting arrive exactly`, async () => {
    const user = `uni-${transport}`;
    const u = await connectUser(gw.url, user, { transports: [transport] });
    clients.push(u);
    for (const s of STRINGS) {
      const message = { text: s, [s]: [s, { [s]: s }] };
      const since = u.mark();
      const resp = await sendDirect(gw.grpcAddr, { receiver_id: user, message, sender_id: "svc" });
      assert.equal(delivered(resp), 1, JSON.stringify(s));
      const got = await u.waitFor("newMessage", { since });
      assert.deepEqual(got.args[0], message, `payload ${JSON.stringify(s)}`);
    }
    // One string that is all of them, as the whole message.
    const all = STRINGS.join("|");
    const since = u.mark();
    assert.equal(delivered(await sendDirect(gw.grpcAddr, { receiver_id: user, message: all })), 1);
    assert.equal((await u.waitFor("newMessage", { since })).args[0], all);
  });
}

test("user ids with Unicode and URL-special characters work in the query and in auth", async () => {
  const ids = ["José Ñandú", "ユーザー😀", "a&b=c?d#e/f%20g+h", "مستخدم"];
  for (const id of ids) {
    for (const how of ["query", "auth"]) {
      const opts = how === "query" ? {} : { auth: { userId: id } };
      const u = await connectUser(gw.url, how === "query" ? id : undefined, opts);
      clients.push(u);
      await u.waitOnlineUsers((l) => l.includes(id));
      const since = u.mark();
      const resp = await sendDirect(gw.grpcAddr, { receiver_id: id, message: { to: id, how } });
      assert.equal(delivered(resp), 1, `${how} ${JSON.stringify(id)}`);
      assert.deepEqual((await u.waitFor("newMessage", { since })).args[0], { to: id, how });
      const { ids: online } = await listOnlineAll(gw.grpcAddr);
      assert.ok(online.includes(id), `ListOnline shows ${JSON.stringify(id)} as is: ${JSON.stringify(online)}`);
      u.close();
    }
  }
});

test("a large payload (about 400 KB of JSON) arrives exactly when --max-message-bytes allows it", async () => {
  // The default message limit is 64 KiB: this test runs its own gateway with a larger one.
  const big = await startGateway({ extraArgs: ["--max-message-bytes", "1000000"] });
  try {
    for (const transport of ["websocket", "polling"]) {
      const user = `big-${transport}`;
      const u = await connectUser(big.url, user, { transports: [transport] });
      clients.push(u);
      const chunk = "ab€😀漢\n"; // 13 bytes of UTF-8
      const message = {
        blob: chunk.repeat(Math.ceil(300_000 / 13)),
        items: Array.from({ length: 500 }, (_, i) => ({ i, s: `item ${i}` })),
      };
      const since = u.mark();
      assert.equal(delivered(await sendDirect(big.grpcAddr, { receiver_id: user, message })), 1, transport);
      const got = await u.waitFor("newMessage", { since, timeoutMs: 10_000 });
      assert.deepEqual(got.args[0], message, transport);
      u.close();
    }
    await stopAndAssertClean(big);
  } finally {
    await big.kill();
  }
});

testCleanExit();
