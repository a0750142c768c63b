// The peer's backend: `io.to(userId).emit("newMessage", msg)` with @socket.io/redis-emitter,
// at a fixed rate or at saturation (send-loop.js), to users spread over the population.
// Prints one JSON line (sent, CPU of this process) when done.
//
// Environment: REDIS_URL, USERS, PREFIX (user ids PREFIX0..), RATE (messages/s; 0 = as fast as
// IN_FLIGHT publishes not yet answered by Redis allow), DURATION (s), MESSAGES (at most),
// PAYLOAD (filler bytes), IN_FLIGHT.
const { Emitter } = require("@socket.io/redis-emitter");
const { createClient } = require("redis");
const { options, run } = require("./send-loop");

const o = options({
  REDIS_URL: "redis://127.0.0.1:6379",
  USERS: 3000,
  PREFIX: "u",
  RATE: 1000,
  DURATION: 10,
  MESSAGES: 1e9,
  PAYLOAD: 100,
  IN_FLIGHT: 256,
});

async function main() {
  const redis = createClient({ url: o.REDIS_URL });
  redis.on("error", (e) => console.error(`redis: ${e.message}`));
  await redis.connect();
  const io = new Emitter(redis);
  // The emitter's publish returns nothing: a PING answered means every earlier publish on
  // this connection was, so it bounds the publishes in flight.
  const result = await run(
    o,
    (userId, msg) => {
      io.to(userId).emit("newMessage", msg);
    },
    () => redis.ping(),
  );
  console.log(JSON.stringify({ backend: "redis-emitter", ...result }));
  await redis.quit();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
