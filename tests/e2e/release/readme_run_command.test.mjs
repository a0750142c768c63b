// The README's run command, run literally from the repository root: it is read from the
// "Two commands" section of README.md, together with the two addresses that section
// promises, and must start the gateway on exactly those addresses; SIGTERM then
// makes it exit 0.
//
// It needs the default ports free, so it is not in the parallel e2e suite: scripts/test
// runs it on its own, after `cargo test` (whose build `cargo run` finds up to date, the
// features being aligned in Cargo.toml, and starts at once). Run alone, the command builds
// first: the wait for the ports allows for a cold build.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { REPO_ROOT, runGrpcurl, waitPort, SHUTDOWN_MS, sleep } from "../helpers.mjs";

/** Bound for the ports to open: a cold build on a loaded 2-core machine. */
const BUILD_AND_START_MS = 15 * 60_000;

/** The run command and the addresses from README.md's "Two commands" section. */
function readmeRunCommand() {
  const readme = fs.readFileSync(path.join(REPO_ROOT, "README.md"), "utf8");
  const section = readme.match(/^## Two commands\n([\s\S]*?)^## /m)?.[1];
  assert.ok(section, 'README.md has no "## Two commands" section');
  const run = section.match(/^Run the gateway[\s\S]*?\n\n {4}(\S.*)$/m)?.[1];
  assert.ok(run, `no indented command after "Run the gateway" in:\n${section}`);
  const http = section.match(/Socket\.IO on\s+`([^`]+)`/)?.[1];
  const grpc = section.match(/gRPC on\s+`([^`]+)`/)?.[1];
  assert.ok(http && grpc, `the section names no Socket.IO and gRPC addresses:\n${section}`);
  return { run, http, grpc };
}

function splitAddr(addr) {
  const i = addr.lastIndexOf(":");
  return { host: addr.slice(0, i), port: Number(addr.slice(i + 1)) };
}

/** Resolves null if host:port can be listened on, else the reason (EADDRINUSE...). */
function bindProblem({ host, port }) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once("error", (err) => resolve(err.code || err.message));
    srv.listen(port, host, () => srv.close(() => resolve(null)));
  });
}

/** The gateway's pid: `pid` itself once cargo has replaced itself with it, else its child. */
function gatewayPid(pid) {
  const exe = (p) => {
    try {
      return fs.readlinkSync(`/proc/${p}/exe`);
    } catch {
      return "";
    }
  };
  if (path.basename(exe(pid)) === "messaging-gateway") return { pid, exe: exe(pid) };
  const kids = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean);
  const kid = kids.map(Number).find((k) => path.basename(exe(k)) === "messaging-gateway");
  return kid ? { pid: kid, exe: exe(kid) } : { pid: null, exe: exe(pid) };
}

let child = null;
after(() => {
  // The whole process group: cargo, and the gateway if cargo did not exec it.
  if (child && child.exitCode === null && child.signalCode === null) process.kill(-child.pid, "SIGKILL");
});

test("the README's run command starts the gateway on the README's addresses; SIGTERM exits 0", async () => {
  const { run, http, grpc } = readmeRunCommand();
  const httpAddr = splitAddr(http);
  const grpcAddr = splitAddr(grpc);
  for (const [name, addr] of [
    ["Socket.IO", http],
    ["gRPC", grpc],
  ]) {
    const problem = await bindProblem(splitAddr(addr));
    assert.equal(
      problem,
      null,
      `${addr} (the README's ${name} address) cannot be bound on this machine (${problem}): ` +
        `another process holds it, so \`${run}\` cannot be checked; free that port and re-run`,
    );
  }

  // Literally the README's line, by the shell, from the repository root; `exec` so that the
  // shell does not stay in between. No GATEWAY_* variable leaks in: the defaults apply.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("GATEWAY_")));
  child = spawn("/bin/sh", ["-c", `exec ${run}`], {
    cwd: REPO_ROOT,
    env,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const append = (chunk) => {
    output = (output + chunk.toString()).slice(-100_000);
  };
  child.stdout.on("data", append);
  child.stderr.on("data", append);
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  let exit = null;
  exited.then((e) => (exit = e));
  const dead = () => exit && `\`${run}\` exited (${JSON.stringify(exit)})\n--- output ---\n${output}`;

  await waitPort(httpAddr.port, BUILD_AND_START_MS, dead);
  await waitPort(grpcAddr.port, BUILD_AND_START_MS, dead);

  const gw = gatewayPid(child.pid);
  assert.ok(gw.pid, `no messaging-gateway process under \`${run}\` (pid ${child.pid} is ${gw.exe})\n${output}`);
  assert.match(gw.exe, /\/target\/debug\/messaging-gateway$/, "the build of the repository runs");

  // Both ports are this gateway's: an Engine.IO handshake and a gRPC health check.
  const hs = await fetch(`http://${http}/socket.io/?EIO=4&transport=polling`);
  const body = await hs.text();
  assert.equal(hs.status, 200, body);
  assert.match(body, /^0\{"sid":"[^"]+"/, "Engine.IO open packet");
  const health = await runGrpcurl(["-plaintext", "-max-time", "10", grpc, "grpc.health.v1.Health/Check"]);
  assert.equal(health.code, 0, health.stderr);
  assert.match(health.stdout, /"status": "SERVING"/);

  const t0 = Date.now();
  process.kill(gw.pid, "SIGTERM");
  const res = await Promise.race([exited, sleep(SHUTDOWN_MS).then(() => null)]);
  const ctx = `\n--- output ---\n${output}`;
  assert.ok(res, `no exit within ${SHUTDOWN_MS} ms of SIGTERM${ctx}`);
  assert.deepEqual(res, { code: 0, signal: null }, `exit after ${Date.now() - t0} ms${ctx}`);
});
