// The soak run's clients below socket.io-client: the official gRPC client with the run's
// deadline, and a raw WebSocket for frames no well-behaved client sends and TCP dropped at
// chosen points.
import crypto from "node:crypto";
import net from "node:net";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { REPO_ROOT } from "../helpers.mjs";
import { RPC_DEADLINE_MS } from "./shape.mjs";

const proto = grpc.loadPackageDefinition(
  protoLoader.loadSync("messaging/v1/messaging.proto", {
    includeDirs: [path.join(REPO_ROOT, "proto")],
    keepCase: true,
    longs: Number,
    defaults: true,
  }),
);

export function grpcClient(addr) {
  return new proto.messaging.v1.Messaging(addr, grpc.credentials.createInsecure());
}

export function unary(client, method, request, deadlineMs = RPC_DEADLINE_MS) {
  const deadline = new Date(Date.now() + deadlineMs);
  return new Promise((resolve, reject) =>
    client[method](request, { deadline }, (err, resp) => (err ? reject(err) : resolve(resp))),
  );
}

export async function listOnline(client) {
  const ids = [];
  let page_token = "";
  do {
    const resp = await unary(client, "ListOnline", { page_size: 1000, page_token });
    ids.push(...resp.user_ids);
    page_token = resp.next_page_token;
  } while (page_token);
  return ids;
}

export function wsFrame(opcode, payload, { fin = true, claimLen } = {}) {
  const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const len = claimLen ?? data.length;
  const head = [(fin ? 0x80 : 0) | opcode];
  if (len < 126) head.push(0x80 | len);
  else if (len < 65536) head.push(0x80 | 126, len >> 8, len & 255);
  else {
    head.push(0x80 | 127);
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(len));
    head.push(...b);
  }
  const mask = crypto.randomBytes(4);
  const masked = Buffer.from(data.map((x, i) => x ^ mask[i % 4]));
  return Buffer.concat([Buffer.from(head), mask, masked]);
}

/**
 * Opens an Engine.IO WebSocket session as `userId` (no handshake check beyond the 101).
 * Resolves { sock, send(text), texts } once the open packet arrived; texts collects the
 * server's text frames. Rejects on error or after 5 s.
 */
export function rawWs(port, userId) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: "127.0.0.1" });
    const texts = [];
    let buf = Buffer.alloc(0);
    let upgraded = false;
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error("raw ws: no open packet within 5 s"));
    }, 5_000);
    const session = { sock, texts, send: (t) => sock.write(wsFrame(1, t)) };
    sock.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on("close", () => {
      clearTimeout(timer);
      reject(new Error("raw ws: closed before the open packet"));
    });
    sock.on("connect", () =>
      sock.write(
        `GET /socket.io/?EIO=4&transport=websocket&userId=${encodeURIComponent(userId)} HTTP/1.1\r\n` +
          `Host: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString("base64")}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      ),
    );
    sock.on("data", (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (!upgraded) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        if (!buf.subarray(0, 12).toString().includes("101")) {
          sock.destroy();
          return reject(new Error(`raw ws: ${buf.subarray(0, end).toString().split("\r\n")[0]}`));
        }
        upgraded = true;
        buf = buf.subarray(end + 4);
      }
      while (buf.length >= 2) {
        let len = buf[1] & 0x7f;
        let off = 2;
        if (len === 126) {
          if (buf.length < 4) return;
          len = buf.readUInt16BE(2);
          off = 4;
        } else if (len === 127) {
          if (buf.length < 10) return;
          len = Number(buf.readBigUInt64BE(2));
          off = 10;
        }
        if (buf.length < off + len) return;
        if ((buf[0] & 0x0f) === 1) {
          const text = buf.subarray(off, off + len).toString();
          texts.push(text);
          if (text.startsWith("0{")) {
            clearTimeout(timer);
            resolve(session);
          }
          if (text === "2") session.send("3");
        }
        buf = buf.subarray(off + len);
      }
    });
  });
}
