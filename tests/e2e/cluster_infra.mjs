// What a cluster test needs around the gateway: Redis, a three-master Redis Cluster and nginx
// (deploy/nginx.conf), each started on free loopback ports with its files in a temporary
// directory, and stopped (or SIGKILLed when the test process ends, see track()).
//
// Also a command line, for the benchmark and soak runs (bash):
//   node tests/e2e/cluster_infra.mjs redis                 one Redis
//   node tests/e2e/cluster_infra.mjs redis-cluster         a three-master Redis Cluster
//   node tests/e2e/cluster_infra.mjs nginx HTTP_PORT...    nginx in front of those nodes
// prints one JSON line ({"ports":[...],"urls":[...],"pids":[...]}) once it is ready, and
// stops what it started on SIGTERM or SIGINT.
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { REPO_ROOT, STARTUP_MS, freePort, waitPort, track, startGateway } from "./helpers.mjs";

export const NGINX_CONF = path.join(REPO_ROOT, "deploy", "nginx.conf");

export const LEASE_MS = 3_000;
export const CLUSTER_TIMEOUT_MS = 1_000;

/**
 * Three nodes (a, b, c) in cluster mode on `redisArgs`, each with a metrics address.
 * Returns the array of gateways, each with `.id` and `.metricsUrl`.
 */
export async function startNodes(redisArgs, { count = 3, leaseMs = LEASE_MS } = {}) {
  const nodes = [];
  for (const id of ["a", "b", "c"].slice(0, count)) {
    const metricsPort = await freePort();
    const gw = await startGateway({
      extraArgs: [
        ...redisArgs,
        "--node-id", `node-${id}`,
        "--node-lease-ms", String(leaseMs),
        "--cluster-timeout-ms", String(CLUSTER_TIMEOUT_MS),
        "--metrics-addr", `127.0.0.1:${metricsPort}`,
      ],
    });
    nodes.push(Object.assign(gw, { id, metricsUrl: `http://127.0.0.1:${metricsPort}/metrics` }));
  }
  return nodes;
}

export async function metric(node, name) {
  const text = await (await fetch(node.metricsUrl)).text();
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(text);
  return m ? Number(m[1]) : undefined;
}

/** Polls `probe` until pred(value) holds, at most timeoutMs; returns { value, ms }. */
export async function until(probe, pred, timeoutMs, what) {
  const t0 = Date.now();
  let value;
  for (;;) {
    value = await probe();
    if (pred(value)) return { value, ms: Date.now() - t0 };
    if (Date.now() - t0 > timeoutMs) {
      throw new Error(`${what}: not within ${timeoutMs} ms; last: ${JSON.stringify(value)}`);
    }
    await sleep(50);
  }
}

/** The path of `cmd` (also looked up in /usr/sbin); throws a readable error when missing. */
export function requireCommand(cmd) {
  const r = spawnSync("sh", ["-c", `PATH="$PATH:/usr/sbin" command -v ${cmd}`], { encoding: "utf8" });
  if (r.status !== 0) {
    throw new Error(`${cmd} is not installed: scripts/test installs it (apt-get install -y redis-server nginx)`);
  }
  return r.stdout.trim();
}

// Every temporary directory made here goes when the process exits, however it exits.
const tempDirs = new Set();
process.on("exit", () => {
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
});
function tempDir(what) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `msg-${what}-`));
  tempDirs.add(d);
  return d;
}

/** Spawns a long-running child with its output kept; returns a handle with stop() and kill(). */
function spawnService(name, cmd, args, opts = {}) {
  const child = track(spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...opts }));
  let output = "";
  const append = (chunk) => {
    output += chunk.toString();
    if (output.length > 100_000) output = output.slice(-50_000);
  };
  child.stdout.on("data", append);
  child.stderr.on("data", append);
  let exitInfo = null;
  const exited = new Promise((resolve) => {
    child.once("error", (error) => resolve((exitInfo = { error })));
    child.once("exit", (code, signal) => resolve((exitInfo = { code, signal })));
  });
  return {
    name,
    child,
    pid: child.pid,
    exited,
    logs: () => output,
    dead: () => exitInfo && `${name} exited (${JSON.stringify(exitInfo)}): ${output}`,
    /** SIGTERM, then SIGKILL after timeoutMs. */
    async stop(timeoutMs = 5_000) {
      if (exitInfo) return exitInfo;
      child.kill("SIGTERM");
      if (!(await Promise.race([exited, sleep(timeoutMs).then(() => null)]))) child.kill("SIGKILL");
      return exited;
    },
    async kill() {
      if (!exitInfo) child.kill("SIGKILL");
      return exited;
    },
  };
}

/** Sends one inline Redis command to 127.0.0.1:port; resolves with the raw reply text. */
export function redisCommand(port, command, timeoutMs = 2_000) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: "127.0.0.1" });
    let reply = "";
    const done = (err) => {
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(reply);
    };
    const timer = setTimeout(() => done(new Error(`redis ${port}: no reply to ${command} in ${timeoutMs} ms`)), timeoutMs);
    sock.once("error", done);
    sock.on("data", (chunk) => {
      reply += chunk.toString();
      // A simple reply, an error, or a bulk string whose whole body has arrived.
      const bulk = /^\$(-?\d+)\r\n/.exec(reply);
      if (/^[+\-:].*\r\n$/s.test(reply) || (bulk && (bulk[1] === "-1" || reply.length >= bulk[0].length + Number(bulk[1]) + 2))) {
        done();
      }
    });
    sock.once("connect", () => sock.write(`${command}\r\n`));
  });
}

async function waitRedis(port, svc, pred = (r) => r.startsWith("+PONG"), command = "PING") {
  const deadline = Date.now() + STARTUP_MS;
  let last = "";
  while (Date.now() < deadline) {
    const dead = svc?.dead();
    if (dead) throw new Error(dead);
    try {
      last = await redisCommand(port, command);
      if (pred(last)) return;
    } catch (err) {
      last = err.message;
    }
    await sleep(50);
  }
  throw new Error(`redis on ${port}: ${command} not as expected within ${STARTUP_MS} ms (last reply: ${last})`);
}

const REDIS_BASE_ARGS = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"];

/**
 * One Redis without persistence on a free loopback port (or `port`).
 * Returns { port, url, pid, stop(), kill(), restart(), logs() }: restart() stops it and
 * starts an empty one on the same port.
 */
export async function startRedis({ port } = {}) {
  requireCommand("redis-server");
  port ??= await freeLowPort();
  const dir = tempDir("redis");
  let svc;
  const launch = async () => {
    svc = spawnService(`redis-server :${port}`, "redis-server", ["--port", String(port), "--dir", dir, ...REDIS_BASE_ARGS]);
    await waitRedis(port, svc);
  };
  await launch();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    get pid() {
      return svc.pid;
    },
    logs: () => svc.logs(),
    stop: () => svc.stop(),
    kill: () => svc.kill(),
    async restart() {
      await svc.stop();
      await launch();
    },
    async cleanup() {
      await svc.kill();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Whether 127.0.0.1:port can be bound right now. */
function portFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
  });
}

const takenPorts = new Set();
/**
 * A free loopback port below the ephemeral range, so that no client socket takes it between
 * this check and the server's bind, nor while a restarted Redis binds it again. With
 * `bus`, P+10000 (a Redis Cluster node's bus port) is free too.
 */
async function freeLowPort({ bus = false } = {}) {
  for (let i = 0; i < 1_000; i++) {
    const p = 20_000 + Math.floor(Math.random() * 9_000);
    if (takenPorts.has(p)) continue;
    if ((await portFree(p)) && (!bus || (await portFree(p + 10_000)))) {
      takenPorts.add(p);
      return p;
    }
  }
  throw new Error("no free loopback port in 20000-29000");
}

/**
 * A local Redis Cluster of `masters` masters and no replicas, all slots assigned.
 * Returns { ports, urls, pids, stop(), kill(), logs() }.
 */
export async function startRedisCluster({ masters = 3 } = {}) {
  requireCommand("redis-server");
  requireCommand("redis-cli");
  const dir = tempDir("redis-cluster");
  const ports = [];
  for (let i = 0; i < masters; i++) ports.push(await freeLowPort({ bus: true }));
  const nodes = ports.map((p) =>
    spawnService(`redis-server cluster :${p}`, "redis-server", [
      "--port", String(p), "--dir", dir, "--cluster-enabled", "yes",
      "--cluster-config-file", `nodes-${p}.conf`, "--cluster-node-timeout", "5000", ...REDIS_BASE_ARGS,
    ]),
  );
  const cluster = {
    ports,
    urls: ports.map((p) => `redis://127.0.0.1:${p}`),
    pids: nodes.map((n) => n.pid),
    logs: () => nodes.map((n) => n.logs()).join("\n"),
    stop: () => Promise.all(nodes.map((n) => n.stop())),
    kill: () => Promise.all(nodes.map((n) => n.kill())),
    async cleanup() {
      await cluster.kill();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await Promise.all(ports.map((p, i) => waitRedis(p, nodes[i])));
    const create = spawnSync(
      "redis-cli",
      ["--cluster", "create", ...ports.map((p) => `127.0.0.1:${p}`), "--cluster-replicas", "0", "--cluster-yes"],
      { encoding: "utf8", timeout: STARTUP_MS },
    );
    if (create.status !== 0) {
      throw new Error(`redis-cli --cluster create exited ${create.status}: ${create.stdout}${create.stderr}`);
    }
    await Promise.all(ports.map((p, i) => waitRedis(p, nodes[i], (r) => r.includes("cluster_state:ok"), "CLUSTER INFO")));
  } catch (err) {
    await cluster.cleanup();
    throw err;
  }
  return cluster;
}

/**
 * The text of deploy/nginx.conf with its listen port, its upstream servers and every path
 * nginx writes to moved into `dir` (no root paths). Throws when the file no longer has the
 * lines this rewrites.
 */
export function nginxConfig({ listenPort, upstreamPorts, dir }) {
  let conf = fs.readFileSync(NGINX_CONF, "utf8");
  const listen = /^(\s*)listen 127\.0\.0\.1:\d+;$/m;
  const server = /^(\s*)server 127\.0\.0\.1:\d+( [^;]*)?;\n/gm;
  const servers = [...conf.matchAll(server)];
  if (!listen.test(conf) || servers.length === 0 || !/^http \{$/m.test(conf)) {
    throw new Error(`${NGINX_CONF}: expected 'http {', 'listen 127.0.0.1:PORT;' and 'server 127.0.0.1:PORT ...;' lines`);
  }
  const [, indent, opts = ""] = servers[0];
  const upstream = upstreamPorts.map((p) => `${indent}server 127.0.0.1:${p}${opts};\n`).join("");
  let first = true;
  conf = conf.replace(server, () => (first ? ((first = false), upstream) : ""));
  conf = conf.replace(listen, `$1listen 127.0.0.1:${listenPort};`);
  const paths = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    .map((t) => `    ${t}_temp_path ${dir}/${t}_temp;\n`)
    .join("");
  return conf.replace(/^http \{$/m, `http {\n    access_log ${dir}/access.log;\n${paths}`);
}

/**
 * nginx in the foreground (one process, no root paths) with deploy/nginx.conf in front of
 * the given Socket.IO ports. Returns { port, url, dir, stop(), kill(), logs(), accessLog() }.
 */
export async function startNginx(upstreamPorts, { port } = {}) {
  const bin = requireCommand("nginx");
  port ??= await freePort();
  const dir = tempDir("nginx");
  const confPath = path.join(dir, "nginx.conf");
  fs.writeFileSync(confPath, nginxConfig({ listenPort: port, upstreamPorts, dir }));
  // master_process off: a single process, so a SIGKILL leaves no orphaned worker behind.
  const svc = spawnService(`nginx :${port}`, bin, [
    "-p", dir, "-e", path.join(dir, "error.log"), "-c", confPath,
    "-g", `daemon off; master_process off; pid ${dir}/nginx.pid;`,
  ]);
  const errorLog = () => {
    try {
      return fs.readFileSync(path.join(dir, "error.log"), "utf8");
    } catch {
      return "";
    }
  };
  const dead = () => svc.dead() && `${svc.dead()}\n--- error.log ---\n${errorLog()}`;
  const nginx = {
    port,
    url: `http://127.0.0.1:${port}`,
    dir,
    pid: svc.pid,
    logs: () => `${svc.logs()}${errorLog()}`,
    accessLog: () => {
      try {
        return fs.readFileSync(path.join(dir, "access.log"), "utf8");
      } catch {
        return "";
      }
    },
    stop: () => svc.stop(),
    kill: () => svc.kill(),
    async cleanup() {
      await svc.kill();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await waitPort(port, STARTUP_MS, dead);
  } catch (err) {
    await nginx.cleanup();
    throw err;
  }
  return nginx;
}

// ---------------------------------------------------------------------------------------
// Command line (scripts/bench, soak runs)

async function main([what, ...rest]) {
  let svc;
  if (what === "redis") svc = await startRedis();
  else if (what === "redis-cluster") svc = await startRedisCluster();
  else if (what === "nginx" && rest.length) svc = await startNginx(rest.map(Number));
  else {
    console.error("usage: cluster_infra.mjs redis | redis-cluster | nginx HTTP_PORT...");
    process.exit(2);
  }
  const ports = svc.ports ?? [svc.port];
  const urls = svc.urls ?? [svc.url];
  const pids = svc.pids ?? [svc.pid];
  console.log(JSON.stringify({ ports, urls, pids }));
  // Runs until SIGTERM or SIGINT: helpers.mjs then kills every child and exits.
  setInterval(() => {}, 1 << 30);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((err) => {
    console.error(`cluster_infra: ${err.message}`);
    process.exit(1);
  });
}
