// What emitter.js and grpc-backend.js share: the message of loadgen (loadgen/src/send.rs
// `message`) with an epoch clock, the spread of messages over the users, and the two ways to
// send (a fixed rate, or saturation with bounded in-flight work), each bounded by a duration
// and a count. The result is one JSON line on stdout, which scripts/bench hands to the tabs.

/** Microseconds since the Unix epoch, from the monotonic clock anchored at process start. */
function epochMicros() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

/** Numeric options from the environment, with defaults. */
function options(defaults) {
  const out = {};
  for (const [k, v] of Object.entries(defaults)) {
    const raw = process.env[k];
    out[k] = raw === undefined || raw === "" ? v : typeof v === "number" ? Number(raw) : raw;
  }
  return out;
}

/**
 * Message i goes to user i % USERS (`PREFIX<index>`), with that user's next sequence number.
 * `send(userId, msg, userIndex)` returns a promise when the backend can say a send was done
 * (grpc-js: answered), or nothing (the emitter's publish: `settle()` then waits for it).
 * RATE > 0: a fixed rate; RATE = 0: as fast as IN_FLIGHT unfinished sends allow.
 */
async function run({ USERS, PREFIX, RATE, DURATION, MESSAGES, PAYLOAD, IN_FLIGHT }, send, settle) {
  const filler = PAYLOAD > 0 ? "x".repeat(PAYLOAD) : undefined;
  const seq = new Array(USERS).fill(0);
  const ids = Array.from({ length: USERS }, (_, u) => `${PREFIX}${u}`);
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  const deadline = start + DURATION * 1000;
  let sent = 0;
  let errors = 0;
  let inFlight = 0;
  let unsettled = 0;
  let firstError;
  const pending = new Set();
  const one = () => {
    const u = sent % USERS;
    const msg = { r: u, s: seq[u]++, t: epochMicros() };
    if (filler !== undefined) msg.z = filler;
    sent += 1;
    const p = send(ids[u], msg, u);
    if (!p) {
      unsettled += 1;
      return;
    }
    inFlight += 1;
    const tracked = p
      .catch((e) => {
        errors += 1;
        firstError ??= String(e.message || e);
      })
      .finally(() => {
        inFlight -= 1;
        pending.delete(tracked);
      });
    pending.add(tracked);
  };
  // Waits until fewer than `bound` sends are unfinished.
  const room = async (bound) => {
    if (unsettled >= bound) {
      await settle();
      unsettled = 0;
    }
    while (inFlight >= bound) await Promise.race(pending);
  };
  if (RATE > 0) {
    while (sent < MESSAGES) {
      const now = performance.now();
      if (now >= deadline) break;
      const due = Math.min(MESSAGES, Math.floor(((now - start) / 1000) * RATE) + 1);
      while (sent < due) {
        one();
        await room(IN_FLIGHT * 16);
      }
      await new Promise((r) => setTimeout(r, 1));
    }
  } else {
    while (sent < MESSAGES && performance.now() < deadline) {
      one();
      await room(IN_FLIGHT);
    }
  }
  const sendEnd = performance.now();
  if (unsettled) await settle();
  await Promise.all(pending);
  const cpu = process.cpuUsage(cpu0);
  return {
    mode: RATE > 0 ? "rate" : "saturation",
    offered_rate: RATE,
    in_flight: IN_FLIGHT,
    users: USERS,
    sent,
    errors,
    first_error: firstError,
    send_s: Math.round(sendEnd - start) / 1000,
    done_s: Math.round(performance.now() - start) / 1000,
    cpu_s: Math.round((cpu.user + cpu.system) / 1000) / 1000,
  };
}

module.exports = { epochMicros, options, run };
