// `--auth jwt` with the official socket.io-client: a correctly signed token whose header has
// `crit` (extensions the receiver must understand, RFC 7515 section 4.1.11) is refused at
// connect and in `renewToken`, since the gateway understands none.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { Client, WAIT_MS, gatewayForSuite, listOnlineAll, mintHs256 } from "./helpers.mjs";

const secret = randomBytes(16).toString("hex");
const { gw, clients, testCleanExit } = gatewayForSuite({
  extraArgs: ["--auth", "jwt", "--jwt-secret", secret, "--cors-origins", "http://localhost"],
});

const exp = () => Math.floor(Date.now() / 1000) + 600;
/** The headers that must be refused: an extension we do not know, and an empty list. */
const CRITICAL = [{ crit: ["urn:example:tenant"], "urn:example:tenant": "acme" }, { crit: [] }];

test("a token with crit gets connect_error and never comes online; the same claims without crit connect", async () => {
  for (const header of CRITICAL) {
    const c = new Client(gw.url, { auth: { token: mintHs256({ sub: "crit-user", exp: exp() }, secret, header) } });
    clients.push(c);
    await assert.rejects(c.connect(), /connect_error: .*crit/, JSON.stringify(header));
  }
  assert.ok(!(await listOnlineAll(gw.grpcAddr)).ids.includes("crit-user"), "never online");
  const plain = new Client(gw.url, { auth: { token: mintHs256({ sub: "crit-user", exp: exp() }, secret) } });
  clients.push(plain);
  await plain.connect();
});

test("renewToken with a crit token is refused and the socket keeps its first token", async () => {
  const c = new Client(gw.url, { auth: { token: mintHs256({ sub: "renewer", exp: exp() }, secret) } });
  clients.push(c);
  await c.connect();
  for (const header of CRITICAL) {
    const token = mintHs256({ sub: "renewer", exp: exp() + 600 }, secret, header);
    const reply = await c.socket.timeout(WAIT_MS).emitWithAck("renewToken", token);
    assert.equal(reply.ok, false, JSON.stringify(reply));
    assert.match(reply.error, /crit/, JSON.stringify(reply));
  }
  const renewed = await c.socket.timeout(WAIT_MS).emitWithAck("renewToken", mintHs256({ sub: "renewer", exp: exp() }, secret));
  assert.equal(renewed.ok, true, JSON.stringify(renewed));
  assert.ok(c.connected);
});

testCleanExit();
