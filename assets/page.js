// The live page: one Socket.IO connection to this gateway, as a frontend would open it.
// Everything received is shown with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const jwtMode = document.body.dataset.auth === "jwt";
const sendOn = document.body.dataset.send === "on";
const MAX_MESSAGES = 200;

let socket = null;
let me = null;
let messageCount = 0;

function setStatus(text, state) {
  const el = $("status");
  el.textContent = text;
  el.className = `pill ${state}`;
}

function showError(text) {
  const el = $("connect-error");
  el.textContent = text;
  el.hidden = !text;
}

/** The token's `sub`, for display only: the gateway verifies the token, the page does not. */
function subOf(token) {
  try {
    const part = token.split(".")[1].replaceAll("-", "+").replaceAll("_", "/");
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    const sub = JSON.parse(new TextDecoder().decode(bytes)).sub;
    return typeof sub === "string" ? sub : null;
  } catch {
    return null;
  }
}

function connect(credential) {
  disconnect();
  showError("");
  const options = jwtMode ? { auth: { token: credential } } : { query: { userId: credential } };
  // The reconnections of a failed handshake would only repeat its error.
  socket = io({ ...options, reconnectionAttempts: jwtMode ? 0 : Infinity });
  setStatus("connecting…", "wait");
  socket.on("connect", () => {
    me = jwtMode ? subOf(credential) : credential;
    setStatus("connected", "on");
    $("disconnect").hidden = false;
    $("me").hidden = false;
    $("me").textContent = jwtMode
      ? `You are ${me ?? "the token's sub"} (from the token); socket ${socket.id}.`
      : `You are ${me}; socket ${socket.id}.`;
    if (!jwtMode) history.replaceState(null, "", `?userId=${encodeURIComponent(credential)}`);
    renderGrpcurl();
  });
  socket.on("connect_error", (err) => {
    setStatus("refused", "off");
    showError(`Connection refused: ${err.message}`);
  });
  socket.on("disconnect", (reason) => {
    setStatus(`disconnected (${reason})`, "off");
  });
  socket.on("getOnlineUsers", renderOnline);
  socket.onAny((event, ...args) => {
    // With connection state recovery the last argument is the event's offset (a string that
    // socket.io-client keeps to recover the session after a drop), not part of the message.
    if (socket._pid && typeof args[args.length - 1] === "string") args = args.slice(0, -1);
    if (event !== "getOnlineUsers") addMessage(event, args);
  });
}

function disconnect() {
  if (!socket) return;
  socket.removeAllListeners();
  socket.disconnect();
  socket = null;
  me = null;
  setStatus("not connected", "off");
  $("disconnect").hidden = true;
  $("me").hidden = true;
  renderOnline([]);
}

function renderOnline(userIds) {
  const list = $("online");
  const items = (Array.isArray(userIds) ? userIds : []).map((id) => {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = id;
    li.append(name);
    if (id === me) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "you";
      li.append(tag);
    }
    li.title = "send a message to this user";
    li.addEventListener("click", () => {
      $("send-to").value = id;
      renderGrpcurl();
    });
    return li;
  });
  list.replaceChildren(...items);
  $("online-count").textContent = String(items.length);
  $("online-empty").hidden = items.length > 0;
}

function addMessage(event, args) {
  messageCount += 1;
  const li = document.createElement("li");
  const head = document.createElement("div");
  head.className = "meta";
  const name = document.createElement("span");
  name.className = "event";
  name.textContent = event;
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  head.append(name, time);
  const body = document.createElement("pre");
  body.className = "payload";
  const payload = args.length === 1 ? args[0] : args;
  body.textContent = JSON.stringify(payload, null, 2);
  li.append(head, body);
  const list = $("messages");
  list.prepend(li);
  while (list.children.length > MAX_MESSAGES) list.lastElementChild.remove();
  $("message-count").textContent = String(messageCount);
  $("messages-empty").hidden = true;
}

function shellQuote(s) {
  return `'${s.replaceAll("'", "'\\''")}'`;
}

function renderGrpcurl() {
  let message;
  try {
    message = JSON.parse($("send-message").value);
  } catch {
    message = { text: "hello" };
  }
  const request = { receiver_id: $("send-to").value || me || "user123", message };
  const event = $("send-event").value.trim();
  if (event && event !== "newMessage") request.event = event;
  $("grpcurl").textContent =
    `grpcurl -plaintext -d ${shellQuote(JSON.stringify(request))} \\\n` +
    `  ${location.hostname}:${document.body.dataset.grpcPort} messaging.v1.Messaging/SendDirect`;
}

async function send() {
  const result = $("send-result");
  result.className = "";
  let message;
  try {
    message = JSON.parse($("send-message").value);
  } catch (e) {
    result.className = "error";
    result.textContent = `The message is not JSON: ${e.message}`;
    return;
  }
  const request = {
    receiver_id: $("send-to").value.trim(),
    event: $("send-event").value.trim(),
    message,
  };
  result.textContent = "sending…";
  try {
    const response = await fetch("/demo/send", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(request),
    });
    const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (response.ok) {
      const n = answer.deliveredSockets;
      const note = answer.partial ? " (partial: a node holding the user did not answer)" : n === 0 ? " (the user is offline)" : "";
      result.textContent = `Delivered to ${n} socket${n === 1 ? "" : "s"}${note}.`;
      result.className = "ok";
    } else {
      result.textContent = answer.error || `HTTP ${response.status}`;
      result.className = "error";
    }
  } catch (e) {
    result.textContent = `Could not reach the gateway: ${e.message}`;
    result.className = "error";
  }
}

$("connect-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const credential = (jwtMode ? $("token") : $("user-id")).value.trim();
  if (!credential) {
    showError(jwtMode ? "Paste a token first." : "Pick a user id first.");
    return;
  }
  connect(credential);
});
$("disconnect").addEventListener("click", disconnect);
$("send-form").addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});
for (const id of ["send-to", "send-event", "send-message"]) {
  $(id).addEventListener("input", renderGrpcurl);
}

$("as-user").hidden = jwtMode;
$("as-token").hidden = !jwtMode;
$("send-form").hidden = !sendOn;
$("send-off").hidden = sendOn;
$("send-same").hidden = !sendOn;
renderOnline([]);
renderGrpcurl();

const preset = new URLSearchParams(location.search).get("userId");
if (preset && !jwtMode) {
  $("user-id").value = preset;
  connect(preset);
}
