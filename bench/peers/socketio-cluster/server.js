// One process of the socket.io + Redis adapter peer (issue 23): socket.io 4.8 on
// @socket.io/redis-adapter, each tab joining the room named after its user, as teams that
// outgrow one Node process run it. Three of these on one Redis form the peer cluster; the
// backend reaches a user's tabs with @socket.io/redis-emitter (emitter.js).
//
//   node server.js [PORT]
//
// Environment: PORT (default 3000; the argument wins), REDIS_URL (default
// redis://127.0.0.1:6379). Clients connect with `?userId=ID` (WebSocket or polling).
const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.argv[2] || process.env.PORT || 3000);
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379";

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) c.on("error", (e) => console.error(`redis: ${e.message}`));
  await Promise.all([pub.connect(), sub.connect()]);

  const server = http.createServer();
  const io = new Server(server, { adapter: createAdapter(pub, sub) });
  io.on("connection", (socket) => {
    const userId = socket.handshake.query.userId;
    if (typeof userId === "string" && userId) socket.join(userId);
  });
  server.listen(port, "127.0.0.1", () => console.log(`socket.io peer on 127.0.0.1:${port}, redis ${redisUrl}`));

  const stop = () => io.close(() => Promise.all([pub.quit(), sub.quit()]).finally(() => process.exit(0)));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
