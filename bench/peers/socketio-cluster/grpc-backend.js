// A Node backend of the gateway: SendDirect with @grpc/grpc-js and @grpc/proto-loader on the
// repository's proto/, the same messages and spread as emitter.js (send-loop.js), calls
// spread over the nodes' gRPC ports. User u's calls always go to the same node (the gateway
// keeps the order of calls per connection), node (u / HTTP_NODES) % nodes, so with tabs on
// node u % HTTP_NODES a third of the calls are delivered on the node called, the rest cross.
// Prints one JSON line (sent, answered delivered_sockets, CPU of this process) when done.
//
// Environment: GRPC_ADDRS (comma-separated), HTTP_NODES (default 3), USERS, PREFIX, RATE
// (0 = saturation: IN_FLIGHT calls unanswered at most), DURATION, MESSAGES, PAYLOAD,
// IN_FLIGHT, PROTO_DIR (default ../../../proto).
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const { options, run } = require("./send-loop");

const o = options({
  GRPC_ADDRS: "127.0.0.1:50051",
  HTTP_NODES: 3,
  USERS: 3000,
  PREFIX: "u",
  RATE: 1000,
  DURATION: 10,
  MESSAGES: 1e9,
  PAYLOAD: 100,
  IN_FLIGHT: 64,
  PROTO_DIR: path.resolve(__dirname, "..", "..", "..", "proto"),
});

/** google.protobuf.Value of a flat message of numbers and strings. */
function toValue(msg) {
  const fields = {};
  for (const [k, v] of Object.entries(msg)) fields[k] = typeof v === "number" ? { numberValue: v } : { stringValue: v };
  return { structValue: { fields } };
}

async function main() {
  const definition = protoLoader.loadSync("messaging/v1/messaging.proto", {
    includeDirs: [o.PROTO_DIR],
    keepCase: true,
    longs: Number,
    defaults: true,
  });
  const { Messaging } = grpc.loadPackageDefinition(definition).messaging.v1;
  const clients = o.GRPC_ADDRS.split(",").map((a) => new Messaging(a, grpc.credentials.createInsecure()));
  let delivered = 0;
  const result = await run(o, (userId, msg, u) => {
    const client = clients[Math.floor(u / o.HTTP_NODES) % clients.length];
    return new Promise((resolve, reject) =>
      client.SendDirect({ receiver_id: userId, sender_id: "grpc-backend", message: toValue(msg) }, (err, resp) => {
        if (err) return reject(err);
        delivered += resp.delivered_sockets;
        resolve();
      }),
    );
  });
  console.log(JSON.stringify({ backend: "grpc-js", delivered_sockets: delivered, ...result }));
  for (const c of clients) c.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
