//! A thin Socket.IO v5 / Engine.IO v4 client over a hand-rolled WebSocket, one task per client.
//!
//! Only what a load generator needs: the upgrade request, unmasked server frames parsed in a
//! small fixed buffer, `40` to join "/", pongs for pings, and two events. Payloads are never
//! buffered whole: a frame is streamed through, keeping its first `HEAD_CAP` bytes (enough for
//! a `newMessage` with its `r`/`s`/`t` fields) and counting commas (an online list of n ids
//! has n commas after the event name, one more when a recovery offset follows it). So a 400 KB `getOnlineUsers` costs one pass over the
//! bytes and no allocation, and 50k idle clients cost about 10 KiB each. An
//! `onlineUsersChanged` change set is streamed through a small scanner that counts the ids of
//! its `online` and `offline` arrays: a client keeps a count, never a set.

use std::{
    cell::RefCell,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::OwnedSemaphorePermit,
};

use crate::args::PresenceMode;

/// Bytes of each message kept for parsing; the rest is only scanned for commas.
const HEAD_CAP: usize = 192;
/// Read buffer per runtime thread (connections keep none of their own).
const SCRATCH_BYTES: usize = 256 * 1024;
const NEW_MESSAGE: &[u8] = b"42[\"newMessage\",";
const ONLINE_USERS: &[u8] = b"42[\"getOnlineUsers\",";
const ONLINE_USERS_CHANGED: &[u8] = b"42[\"onlineUsersChanged\",";

/// Per-client counters, written by the client's own task only.
#[derive(Default)]
pub struct ClientStat {
    pub received: AtomicU64,
    /// Highest sequence seen + 1; 0 before the first delivery.
    pub next_seq: AtomicU64,
    pub reordered: AtomicU64,
    pub duplicates: AtomicU64,
    pub misrouted: AtomicU64,
    pub last_recv_ns: AtomicU64,
    pub online_max: AtomicU32,
}

/// State shared by all clients of one run.
pub struct Hub {
    pub base: Instant,
    pub stats: Vec<ClientStat>,
    pub acked: AtomicUsize,
    pub failed: AtomicUsize,
    pub closed: AtomicUsize,
    pub settled: AtomicUsize,
    /// Online count a client must see in `getOnlineUsers` to count as settled.
    pub presence_target: AtomicU32,
    pub first_ack_ns: AtomicU64,
    pub last_ack_ns: AtomicU64,
    pub last_settle_ns: AtomicU64,
    pub presence_frames: AtomicU64,
    pub last_presence_ns: AtomicU64,
    pub bytes_in: AtomicU64,
    pub frames_in: AtomicU64,
    pub delivered: AtomicU64,
    pub recording: AtomicBool,
    /// Messages carry `t` in microseconds since the Unix epoch (their sender is another
    /// process), not this hub's clock in nanoseconds.
    pub epoch_clock: AtomicBool,
    pub delivery_us: Mutex<Histogram<u64>>,
    pub errors: Mutex<Vec<String>>,
    pub error_count: AtomicU64,
}

/// A lock that a panicked holder does not poison: a load run reports what it measured.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

impl Hub {
    pub fn new(clients: usize, presence_target: u32) -> Self {
        Hub {
            base: Instant::now(),
            stats: (0..clients).map(|_| ClientStat::default()).collect(),
            acked: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            settled: AtomicUsize::new(0),
            presence_target: AtomicU32::new(presence_target),
            first_ack_ns: AtomicU64::new(u64::MAX),
            last_ack_ns: AtomicU64::new(0),
            last_settle_ns: AtomicU64::new(0),
            presence_frames: AtomicU64::new(0),
            last_presence_ns: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            recording: AtomicBool::new(false),
            epoch_clock: AtomicBool::new(false),
            delivery_us: Mutex::new(new_histogram()),
            errors: Mutex::new(Vec::new()),
            error_count: AtomicU64::new(0),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    pub fn error(&self, e: String) {
        self.error_count.fetch_add(1, Relaxed);
        let mut errors = lock(&self.errors);
        if errors.len() < 5 {
            errors.push(e);
        }
    }
}

/// Who a client is.
pub struct Spec {
    pub idx: usize,
    /// Index of its user (the `r` field of messages meant for it).
    pub user: u64,
    /// `None`: connect without a userId.
    pub user_id: Option<String>,
    /// The presence events asked for.
    pub presence: PresenceMode,
    pub src: Ipv4Addr,
    pub server: SocketAddr,
}

/// Connects, joins "/", and then reads until the connection ends. `permit` is released once
/// the client is acked (or failed), so the caller can bound connects in progress.
pub async fn run(
    spec: Spec,
    hub: Arc<Hub>,
    permit: OwnedSemaphorePermit,
    handshake_timeout: Duration,
) {
    let mut permit = Some(permit);
    let opened = tokio::time::timeout(handshake_timeout, open(&spec)).await;
    let (mut stream, early) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            hub.failed.fetch_add(1, Relaxed);
            hub.error(format!("client {}: {e}", spec.idx));
            return;
        }
        Err(_) => {
            hub.failed.fetch_add(1, Relaxed);
            hub.error(format!("client {}: handshake timed out", spec.idx));
            return;
        }
    };
    let mut reader = Reader::new();
    let stat = &hub.stats[spec.idx];
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut done = reader.feed(&early, &hub, stat, &spec, &mut out);
    drop(early);
    loop {
        if reader.acked && permit.is_some() {
            permit = None;
        }
        for frame in out.drain(..) {
            if stream.write_all(&frame).await.is_err() {
                done = true;
            }
        }
        if done {
            break;
        }
        if stream.readable().await.is_err() {
            break;
        }
        // Read into this thread's scratch buffer and parse at once: no await in between, so
        // no read buffer is kept per connection.
        done = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            for _ in 0..4 {
                match stream.try_read(&mut scratch[..]) {
                    Ok(0) => return true,
                    Ok(n) => {
                        hub.bytes_in.fetch_add(n as u64, Relaxed);
                        if reader.feed(&scratch[..n], &hub, stat, &spec, &mut out) {
                            return true;
                        }
                        if n < scratch.len() {
                            return false;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                    Err(_) => return true,
                }
            }
            false
        });
    }
    if !reader.acked {
        hub.failed.fetch_add(1, Relaxed);
        hub.error(format!(
            "client {}: closed before the connect ack",
            spec.idx
        ));
    }
    hub.closed.fetch_add(1, Relaxed);
    drop(permit);
}

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice());
}

/// TCP connect from `spec.src` and the WebSocket upgrade; returns the stream and the bytes
/// that followed the HTTP response.
async fn open(spec: &Spec) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let mut query = match &spec.user_id {
        Some(u) => format!("&userId={u}"),
        None => String::new(),
    };
    match spec.presence {
        PresenceMode::List => {}
        PresenceMode::Changes => query.push_str("&presence=changes"),
        PresenceMode::None => query.push_str("&presence=none"),
    }
    upgrade(spec.src, spec.server, &query).await
}

/// TCP connect from `src` and the WebSocket upgrade of `/socket.io/` with `query` appended;
/// returns the stream and the bytes that followed the HTTP response.
pub async fn upgrade(
    src: Ipv4Addr,
    server: SocketAddr,
    query: &str,
) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    // RST on close: no TIME_WAIT left behind to eat the ephemeral ports of the next run.
    // (A zero linger never blocks, which is what the deprecation is about.)
    #[allow(deprecated)]
    socket.set_linger(Some(Duration::ZERO))?;
    socket.set_nodelay(true)?;
    let mut stream = socket.connect(server).await?;
    let request = format!(
        "GET /socket.io/?EIO=4&transport=websocket{query} HTTP/1.1\r\nHost: {}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; 2048];
    let mut end = 0;
    loop {
        if end == buf.len() {
            return Err(std::io::Error::other("upgrade response too large"));
        }
        let n = stream.read(&mut buf[end..]).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed during the upgrade"));
        }
        end += n;
        if let Some(pos) = find(&buf[..end], b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                let line = String::from_utf8_lossy(&buf[..end.min(80)]).into_owned();
                return Err(std::io::Error::other(format!(
                    "upgrade refused: {}",
                    line.lines().next().unwrap_or("")
                )));
            }
            buf.truncate(end);
            buf.drain(..pos + 4);
            return Ok((stream, buf));
        }
    }
}

enum State {
    Header,
    Payload {
        remaining: u64,
        fin: bool,
        control: u8,
    },
}

struct Reader {
    /// A frame header being assembled across reads.
    hdr: [u8; 14],
    hdr_len: usize,
    state: State,
    head: Vec<u8>,
    commas: u64,
    /// The message's last two bytes: `"]` when its last argument is a string, the offset a
    /// gateway with connection state recovery appends to every event.
    tail: [u8; 2],
    /// Ids counted in the message, while it may be a change set.
    scan: Scan,
    /// Online count from the last whole list and the change sets after it.
    online: i64,
    ctrl: Vec<u8>,
    acked: bool,
    settled: bool,
}

/// Counts the ids of a change set's two arrays, `42["onlineUsersChanged",{"online":[ids],
/// "offline":[ids]}]` (the gateway writes them in that order), as its bytes stream by: each
/// string opened at depth 3 is an id of the array being read. Strings are tracked, escapes
/// included, so ids holding brackets or commas count right.
#[derive(Default)]
struct Scan {
    depth: u8,
    in_str: bool,
    escaped: bool,
    /// Arrays opened at depth 3 so far: 1 while in `online`, 2 in `offline`.
    arrays: u8,
    ids: [u32; 2],
}

impl Scan {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.in_str {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => {
                    self.in_str = true;
                    if self.depth == 3 && (1..=2).contains(&self.arrays) {
                        self.ids[usize::from(self.arrays - 1)] += 1;
                    }
                }
                b'[' | b'{' => {
                    self.depth = self.depth.saturating_add(1);
                    if self.depth == 3 && b == b'[' {
                        self.arrays += 1;
                    }
                }
                b']' | b'}' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
    }
}

/// Client frames: text, FIN, masked with a zero key (legal, and the payload stays as is).
pub const CONNECT_FRAME: &[u8] = &[0x81, 0x82, 0, 0, 0, 0, b'4', b'0'];
pub const PONG_FRAME: &[u8] = &[0x81, 0x81, 0, 0, 0, 0, b'3'];
pub const CLOSE_FRAME: &[u8] = &[0x88, 0x80, 0, 0, 0, 0];

fn header_len(b1: u8) -> usize {
    match b1 & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

impl Reader {
    fn new() -> Self {
        Self {
            hdr: [0; 14],
            hdr_len: 0,
            state: State::Header,
            head: Vec::with_capacity(64),
            commas: 0,
            tail: [0; 2],
            scan: Scan::default(),
            online: 0,
            ctrl: Vec::new(),
            acked: false,
            settled: false,
        }
    }

    /// Parses `data`, streaming payloads through. Frames to send go to `out`. Returns true
    /// when the connection should end.
    fn feed(
        &mut self,
        data: &[u8],
        hub: &Hub,
        stat: &ClientStat,
        spec: &Spec,
        out: &mut Vec<Vec<u8>>,
    ) -> bool {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Header => {
                    let need = if self.hdr_len < 2 {
                        2
                    } else {
                        header_len(self.hdr[1])
                    };
                    let take = (need - self.hdr_len).min(data.len() - i);
                    self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&data[i..i + take]);
                    self.hdr_len += take;
                    i += take;
                    if self.hdr_len < 2 || self.hdr_len < header_len(self.hdr[1]) {
                        continue;
                    }
                    let (b0, b1) = (self.hdr[0], self.hdr[1]);
                    self.hdr_len = 0;
                    if b1 & 0x80 != 0 {
                        hub.error(format!("client {}: masked server frame", spec.idx));
                        return true;
                    }
                    let len = match b1 & 0x7f {
                        126 => u16::from_be_bytes([self.hdr[2], self.hdr[3]]) as u64,
                        127 => {
                            u64::from_be_bytes(self.hdr[2..10].try_into().expect("8 length bytes"))
                        }
                        n => n as u64,
                    };
                    let opcode = b0 & 0x0f;
                    let control = if opcode >= 8 { opcode } else { 0 };
                    if control != 0 {
                        self.ctrl.clear();
                    } else if opcode != 0 {
                        self.head.clear();
                        self.commas = 0;
                        self.tail = [0; 2];
                        self.scan = Scan::default();
                    }
                    let fin = b0 & 0x80 != 0;
                    if len == 0 {
                        if self.end_frame(fin, control, hub, stat, spec, out) {
                            return true;
                        }
                    } else {
                        self.state = State::Payload {
                            remaining: len,
                            fin,
                            control,
                        };
                    }
                }
                State::Payload {
                    remaining,
                    fin,
                    control,
                } => {
                    let n = (remaining.min((data.len() - i) as u64)) as usize;
                    let chunk = &data[i..i + n];
                    if control != 0 {
                        self.ctrl.extend_from_slice(chunk);
                    } else {
                        let room = HEAD_CAP.saturating_sub(self.head.len()).min(n);
                        self.head.extend_from_slice(&chunk[..room]);
                        self.commas += chunk.iter().filter(|&&b| b == b',').count() as u64;
                        self.tail = match chunk {
                            [.., a, b] => [*a, *b],
                            [b] => [self.tail[1], *b],
                            [] => self.tail,
                        };
                        // Until the head rules it out, the message may be a change set.
                        let len = self.head.len().min(ONLINE_USERS_CHANGED.len());
                        if self.head[..len] == ONLINE_USERS_CHANGED[..len] {
                            self.scan.feed(chunk);
                        }
                    }
                    i += n;
                    let left = remaining - n as u64;
                    if left > 0 {
                        self.state = State::Payload {
                            remaining: left,
                            fin,
                            control,
                        };
                    } else {
                        self.state = State::Header;
                        if self.end_frame(fin, control, hub, stat, spec, out) {
                            return true;
                        }
                    }
                }
            }
        }
        false
    }

    fn end_frame(
        &mut self,
        fin: bool,
        control: u8,
        hub: &Hub,
        stat: &ClientStat,
        spec: &Spec,
        out: &mut Vec<Vec<u8>>,
    ) -> bool {
        match control {
            0 if fin => self.on_message(hub, stat, spec, out),
            0x8 => {
                out.push(CLOSE_FRAME.to_vec());
                true
            }
            0x9 => {
                let mut f = vec![0x8a, 0x80 | self.ctrl.len() as u8, 0, 0, 0, 0];
                f.extend_from_slice(&self.ctrl);
                out.push(f);
                false
            }
            _ => false,
        }
    }

    /// One complete Engine.IO packet. Returns true when the connection should end.
    fn on_message(
        &mut self,
        hub: &Hub,
        stat: &ClientStat,
        spec: &Spec,
        out: &mut Vec<Vec<u8>>,
    ) -> bool {
        hub.frames_in.fetch_add(1, Relaxed);
        let head = &self.head[..];
        match head.first() {
            Some(b'0') => out.push(CONNECT_FRAME.to_vec()),
            Some(b'2') => out.push(PONG_FRAME.to_vec()),
            Some(b'1') => return true,
            Some(b'4') => match head.get(1) {
                Some(b'2') => {
                    // `42<ack id>[...]`: a SendDirect with ack_timeout_ms asks for an ack.
                    let ack = head[2..].iter().take_while(|b| b.is_ascii_digit()).count();
                    if ack > 0 && head[2 + ack..].starts_with(&NEW_MESSAGE[2..]) {
                        let mut reply = b"43".to_vec();
                        reply.extend_from_slice(&head[2..2 + ack]);
                        reply.extend_from_slice(b"[]");
                        let mut frame = vec![0x81, 0x80 | reply.len() as u8, 0, 0, 0, 0];
                        frame.extend_from_slice(&reply);
                        out.push(frame);
                        self.on_new_message(hub, stat, spec, ack);
                    } else if head.starts_with(NEW_MESSAGE) {
                        self.on_new_message(hub, stat, spec, 0);
                    } else if head.starts_with(ONLINE_USERS) {
                        let rest = &head[ONLINE_USERS.len()..];
                        let offset = i64::from(self.tail == *b"\"]");
                        self.online = if rest.starts_with(b"[]") {
                            0
                        } else {
                            self.commas as i64 - offset
                        };
                        self.on_presence(hub, stat);
                    } else if head.starts_with(ONLINE_USERS_CHANGED) {
                        let [online, offline] = self.scan.ids;
                        self.online += i64::from(online) - i64::from(offline);
                        self.on_presence(hub, stat);
                    }
                }
                Some(b'0') if !self.acked => {
                    self.acked = true;
                    let now = hub.now_ns();
                    hub.acked.fetch_add(1, Relaxed);
                    hub.first_ack_ns.fetch_min(now, Relaxed);
                    hub.last_ack_ns.fetch_max(now, Relaxed);
                    if spec.presence == PresenceMode::None {
                        self.settled = true;
                        hub.settled.fetch_add(1, Relaxed);
                        hub.last_settle_ns.fetch_max(now, Relaxed);
                    }
                }
                Some(b'4') => {
                    let msg = String::from_utf8_lossy(head).into_owned();
                    hub.error(format!("client {}: connect_error {msg}", spec.idx));
                    return true;
                }
                Some(b'1') => return true,
                _ => {}
            },
            _ => {}
        }
        false
    }

    /// A whole list or a change set arrived: the client is settled once its count reaches
    /// the target.
    fn on_presence(&mut self, hub: &Hub, stat: &ClientStat) {
        let now = hub.now_ns();
        let count = self.online.clamp(0, i64::from(u32::MAX)) as u32;
        hub.presence_frames.fetch_add(1, Relaxed);
        hub.last_presence_ns.fetch_max(now, Relaxed);
        stat.online_max.fetch_max(count, Relaxed);
        if !self.settled && count >= hub.presence_target.load(Relaxed) {
            self.settled = true;
            hub.settled.fetch_add(1, Relaxed);
            hub.last_settle_ns.fetch_max(now, Relaxed);
        }
    }

    /// `ack` is the length of the packet's ack id (0: none).
    fn on_new_message(&self, hub: &Hub, stat: &ClientStat, spec: &Spec, ack: usize) {
        let now = hub.now_ns();
        let body = &self.head[NEW_MESSAGE.len() + ack..];
        let (Some(r), Some(s), Some(t)) = (
            field(body, b"\"r\":"),
            field(body, b"\"s\":"),
            field(body, b"\"t\":"),
        ) else {
            hub.error(format!(
                "client {}: unparsable message {}",
                spec.idx,
                String::from_utf8_lossy(&self.head)
            ));
            return;
        };
        stat.received.fetch_add(1, Relaxed);
        stat.last_recv_ns.store(now, Relaxed);
        hub.delivered.fetch_add(1, Relaxed);
        if r != spec.user {
            stat.misrouted.fetch_add(1, Relaxed);
        }
        let next = stat.next_seq.load(Relaxed);
        if s + 1 == next {
            stat.duplicates.fetch_add(1, Relaxed);
        } else if s + 1 < next {
            stat.reordered.fetch_add(1, Relaxed);
        } else {
            stat.next_seq.store(s + 1, Relaxed);
        }
        if hub.recording.load(Relaxed) {
            let us = if hub.epoch_clock.load(Relaxed) {
                epoch_us().saturating_sub(t)
            } else {
                now.saturating_sub(t) / 1000
            };
            lock(&hub.delivery_us).saturating_record(us.max(1));
        }
    }
}

/// Microseconds since the Unix epoch: the clock of messages sent by another process.
pub fn epoch_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The unsigned integer after `key` (e.g. `"s":`), if any.
fn field(body: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(body, key)? + key.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse() {
        let body = br#"{"r":12,"s":3,"t":123456789,"z":"xx"}]"#;
        assert_eq!(field(body, b"\"r\":"), Some(12));
        assert_eq!(field(body, b"\"s\":"), Some(3));
        assert_eq!(field(body, b"\"t\":"), Some(123456789));
        assert_eq!(field(body, b"\"q\":"), None);
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x81];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n < 65536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// One client's spec, for feeding a reader by hand.
    fn test_spec(presence_changes: bool) -> Spec {
        Spec {
            idx: 0,
            user: 0,
            user_id: None,
            presence: if presence_changes {
                PresenceMode::Changes
            } else {
                PresenceMode::List
            },
            src: Ipv4Addr::LOCALHOST,
            server: "127.0.0.1:1".parse().unwrap(),
        }
    }

    /// Feeds `stream` to a fresh reader of one client in chunks of `step` bytes, none of
    /// which may end the connection; returns the hub, the reader and the frames it answered.
    fn feed_in_chunks(
        stream: &[u8],
        step: usize,
        presence_target: u32,
        presence_changes: bool,
    ) -> (Hub, Reader, Vec<Vec<u8>>) {
        let hub = Hub::new(1, presence_target);
        let spec = test_spec(presence_changes);
        let mut r = Reader::new();
        let mut out = Vec::new();
        for chunk in stream.chunks(step.min(stream.len())) {
            assert!(!r.feed(chunk, &hub, &hub.stats[0], &spec, &mut out));
        }
        (hub, r, out)
    }

    /// Every split of the byte stream parses to the same result.
    #[test]
    fn reader_handles_any_split() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("\"u{i}\"")).collect();
        let big = format!("42[\"getOnlineUsers\",[{}]]", ids.join(","));
        let mut stream = Vec::new();
        stream.extend(frame(b"0{\"sid\":\"x\"}"));
        stream.extend(frame(b"40{\"sid\":\"y\"}"));
        stream.extend(frame(br#"42["newMessage",{"r":0,"s":0,"t":1,"z":"a,b"}]"#));
        stream.extend(frame(b"2"));
        stream.extend(frame(big.as_bytes()));
        stream.extend(frame(b"42[\"getOnlineUsers\",[]]"));
        stream.extend(frame(br#"42["newMessage",{"r":0,"s":1,"t":1}]"#));
        for step in [1usize, 2, 3, 7, 13, 100, 4096, usize::MAX] {
            let (hub, r, out) = feed_in_chunks(&stream, step, 20_000, false);
            assert!(r.acked, "step {step}");
            assert_eq!(out, vec![CONNECT_FRAME.to_vec(), PONG_FRAME.to_vec()]);
            assert_eq!(hub.stats[0].received.load(Relaxed), 2);
            assert_eq!(hub.stats[0].online_max.load(Relaxed), 20_000);
            assert_eq!(hub.settled.load(Relaxed), 1);
            assert_eq!(hub.presence_frames.load(Relaxed), 2);
            assert_eq!(hub.stats[0].reordered.load(Relaxed), 0);
        }
    }

    /// Events of a gateway with connection state recovery carry an offset as their last
    /// argument: it is not counted as an online user, whatever the split.
    #[test]
    fn a_recovery_offset_is_not_an_online_user() {
        let mut stream = Vec::new();
        stream.extend(frame(b"40{\"sid\":\"y\",\"pid\":\"p\"}"));
        stream.extend(frame(br#"42["getOnlineUsers",["a","b","c"],"7"]"#));
        stream.extend(frame(br#"42["newMessage",{"r":0,"s":0,"t":1},"8"]"#));
        stream.extend(frame(br#"42["getOnlineUsers",[],"9"]"#));
        for step in [1usize, 2, 3, usize::MAX] {
            let (hub, r, _) = feed_in_chunks(&stream, step, 3, false);
            assert!(r.acked, "step {step}");
            assert_eq!(hub.stats[0].online_max.load(Relaxed), 3, "step {step}");
            assert_eq!(r.online, 0);
            assert_eq!(hub.stats[0].received.load(Relaxed), 1);
        }
    }

    /// A whole list, then change sets (ids holding brackets, commas and escaped quotes):
    /// the count is the list's length plus online minus offline, whatever the split.
    #[test]
    fn change_sets_keep_a_count_across_any_split() {
        let mut stream = Vec::new();
        stream.extend(frame(b"40{\"sid\":\"y\"}"));
        stream.extend(frame(br#"42["getOnlineUsers",["a","b","c"]]"#));
        stream.extend(frame(
            br#"42["onlineUsersChanged",{"online":["d]","e,\"[x"],"offline":["a"]}]"#,
        ));
        stream.extend(frame(br#"42["newMessage",{"r":0,"s":0,"t":1}]"#));
        stream.extend(frame(
            br#"42["onlineUsersChanged",{"online":["f"],"offline":[]}]"#,
        ));
        for step in [1usize, 2, 5, 11, usize::MAX] {
            let (hub, r, _) = feed_in_chunks(&stream, step, 5, true);
            assert_eq!(r.online, 5, "step {step}");
            assert_eq!(hub.stats[0].online_max.load(Relaxed), 5);
            assert_eq!(hub.settled.load(Relaxed), 1);
            assert_eq!(hub.presence_frames.load(Relaxed), 3);
            assert_eq!(hub.stats[0].received.load(Relaxed), 1);
        }
    }
}
