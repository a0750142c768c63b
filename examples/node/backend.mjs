// A backend service in Node: sends one message with SendDirect, then pages through
// ListOnline. The contract is loaded from proto/ at run time (@grpc/proto-loader), so there
// is no generated code to keep in sync.
//
//   node backend.mjs [RECEIVER_ID] [TEXT]
//
// Environment: GATEWAY_GRPC_ADDR (default 127.0.0.1:50051), GATEWAY_API_KEY (sent as
// `authorization: Bearer KEY` when set), PAGE_SIZE (ListOnline page size, default 100).
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { toValue } from "./value.mjs";

const PROTO_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "proto");

const [receiverId = "user123", text = "Hello from the Node backend"] = process.argv.slice(2);
const addr = process.env.GATEWAY_GRPC_ADDR || "127.0.0.1:50051";
const apiKey = process.env.GATEWAY_API_KEY || "";
const pageSize = Number(process.env.PAGE_SIZE || 100);

const definition = protoLoader.loadSync("messaging/v1/messaging.proto", {
  includeDirs: [PROTO_DIR],
  keepCase: true,
  longs: Number,
  defaults: true,
});
const { Messaging } = grpc.loadPackageDefinition(definition).messaging.v1;
const client = new Messaging(addr, grpc.credentials.createInsecure());

/** Calls a unary method with the API key (if any) and a deadline. */
function call(method, request) {
  const metadata = new grpc.Metadata();
  if (apiKey) metadata.set("authorization", `Bearer ${apiKey}`);
  const deadline = new Date(Date.now() + 10_000);
  return new Promise((resolve, reject) =>
    client[method](request, metadata, { deadline }, (err, response) => (err ? reject(err) : resolve(response))),
  );
}

try {
  const sent = await call("SendDirect", {
    receiver_id: receiverId,
    sender_id: "examples/node",
    message: toValue({ text, from: "examples/node" }),
  });
  console.log(`sent to ${receiverId}: delivered to ${sent.delivered_sockets} socket(s)`);

  let pageToken = "";
  let page = 0;
  let total = 0;
  do {
    const resp = await call("ListOnline", { page_size: pageSize, page_token: pageToken });
    page += 1;
    total = resp.total;
    console.log(`online page ${page}: ${resp.user_ids.join(", ")}`);
    pageToken = resp.next_page_token;
  } while (pageToken);
  console.log(`${total} user(s) online`);
} catch (err) {
  // A gRPC error carries its status name and the gateway's message.
  console.error(`error: ${grpc.status[err.code] ?? err.code}: ${err.details ?? err.message}`);
  process.exitCode = 1;
} finally {
  client.close();
}
