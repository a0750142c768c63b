//! The offline mailbox: messages kept for a user who had no socket, handed over when they
//! connect.
//!
//! A `SendDirect` with `ttl_seconds` that reaches nobody is pushed here; the node where the
//! user next connects takes the whole queue at once, so however many tabs connect at the same
//! moment (on however many nodes), each message is taken once. Bounded per user and in all:
//! the oldest go first and are counted. [`Memory`] keeps the queues in this process;
//! `cluster::mailbox::RedisMailbox` keeps them in Redis so any node can take them.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;

use crate::{config::Config, presence::unix_ms};

/// Why the mailbox could not be written or read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MailboxError {
    /// Where the queues live (Redis) is down or did not answer in time.
    #[error("Redis is unreachable ({0})")]
    Unreachable(String),
}

/// Longest `ttl_seconds` a caller may ask for: seven days.
pub const MAX_TTL_SECONDS: u32 = 7 * 24 * 3600;

/// One kept message: what the user's sockets are sent when they connect.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Mail {
    /// The event name it is emitted as.
    pub event: String,
    /// The message, as the JSON the sockets get.
    pub json: Box<RawValue>,
    /// Milliseconds since the Unix epoch after which it is dropped undelivered.
    pub expires_ms: u64,
}

impl Mail {
    /// What the memory bound counts: the message's JSON, its event name and its user id.
    fn stored_size(&self, user: &str) -> usize {
        self.json.get().len() + self.event.len() + user.len()
    }
}

/// The mailbox's bounds.
#[derive(Debug, Clone, Copy)]
pub struct MailLimits {
    /// Messages kept per user: the oldest go first.
    pub per_user: usize,
    /// Messages kept in all: the oldest of all go first.
    pub total: usize,
    /// Stored bytes in all (see [`Mail::stored_size`]).
    pub bytes: usize,
}

impl MailLimits {
    /// The `--mailbox-max-*` bounds.
    pub fn of(config: &Config) -> Self {
        let clamp = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Self {
            per_user: clamp(config.mailbox_max_per_user),
            total: clamp(config.mailbox_max_total),
            bytes: clamp(config.mailbox_max_bytes),
        }
    }
}

/// Messages a push or a take dropped, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// The user's queue was full: their oldest went.
    pub user_limit: u32,
    /// The mailbox was full: the oldest of all went.
    pub total_limit: u32,
    /// Kept past their `ttl_seconds`.
    pub expired: u32,
}

/// What a take found.
#[derive(Debug, Default)]
pub struct Taken {
    /// The user's messages still within their TTL, oldest first.
    pub mail: Vec<Mail>,
    /// Messages the take found expired.
    pub dropped: Dropped,
}

/// Where queues live: this process, or Redis in cluster mode.
pub trait Mailbox: Send + Sync {
    /// Appends `mail` to `user`'s queue, dropping the oldest beyond the bounds.
    fn push<'a>(
        &'a self,
        user: &'a str,
        mail: &'a Mail,
    ) -> BoxFuture<'a, Result<Dropped, MailboxError>>;

    /// Removes and returns `user`'s whole queue at once: a concurrent take gets nothing of it.
    fn take<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Taken, MailboxError>>;

    /// Drops expired messages (at most a batch); returns how many. Pushes sweep too, but a
    /// mailbox nobody pushes to must not hold them forever.
    fn sweep(&self) -> BoxFuture<'_, Result<u32, MailboxError>>;
}

/// How often expired messages are swept when nothing is pushed.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A kept message and its place in the global order.
struct Kept {
    seq: u64,
    size: usize,
    mail: Mail,
}

#[derive(Default)]
struct Queues {
    by_user: HashMap<Arc<str>, VecDeque<Kept>>,
    /// Every kept message's owner by push order: the oldest of all is the first.
    by_age: BTreeMap<u64, Arc<str>>,
    /// The same messages by expiry, for sweeping the expired first.
    by_expiry: BTreeMap<(u64, u64), Arc<str>>,
    next_seq: u64,
    bytes: usize,
}

impl Queues {
    fn forget(&mut self, kept: &Kept) {
        self.bytes -= kept.size;
        self.by_age.remove(&kept.seq);
        self.by_expiry.remove(&(kept.mail.expires_ms, kept.seq));
    }

    /// Removes the message `seq` of `user` (the oldest of theirs whenever it is dropped for a
    /// bound, so this pops from the front).
    fn remove(&mut self, user: &Arc<str>, seq: u64) {
        let Some(queue) = self.by_user.get_mut(user) else {
            return;
        };
        if let Some(at) = queue.iter().position(|k| k.seq == seq) {
            let kept = queue.remove(at).expect("position is in range");
            if queue.is_empty() {
                self.by_user.remove(user);
            }
            self.forget(&kept);
        }
    }

    fn sweep(&mut self, now: u64) -> u32 {
        let mut expired = 0;
        while let Some(((expires, seq), user)) = self.by_expiry.first_key_value() {
            if *expires > now {
                break;
            }
            let (seq, user) = (*seq, user.clone());
            self.remove(&user, seq);
            expired += 1;
        }
        expired
    }
}

/// Queues in this process (a single node).
pub struct Memory {
    limits: MailLimits,
    queues: Mutex<Queues>,
}

impl Memory {
    /// Empty queues bounded by `limits`.
    pub fn new(limits: MailLimits) -> Self {
        Self {
            limits,
            queues: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push_now(&self, user: &str, mail: &Mail) -> Dropped {
        let mut q = self.lock();
        let mut dropped = Dropped {
            expired: q.sweep(unix_ms()),
            ..Dropped::default()
        };
        let user: Arc<str> = q
            .by_user
            .get_key_value(user)
            .map_or_else(|| Arc::from(user), |(u, _)| u.clone());
        let seq = q.next_seq;
        q.next_seq += 1;
        q.by_age.insert(seq, user.clone());
        q.by_expiry.insert((mail.expires_ms, seq), user.clone());
        let size = mail.stored_size(&user);
        q.bytes += size;
        let queue = q.by_user.entry(user.clone()).or_default();
        queue.push_back(Kept {
            seq,
            size,
            mail: mail.clone(),
        });
        let over = queue.len().saturating_sub(self.limits.per_user);
        let oldest: Vec<Kept> = queue.drain(..over).collect();
        for kept in &oldest {
            q.forget(kept);
            dropped.user_limit += 1;
        }
        while q.by_age.len() > self.limits.total || q.bytes > self.limits.bytes {
            let (&seq, owner) = q
                .by_age
                .first_key_value()
                .expect("the mailbox is not empty");
            let owner = owner.clone();
            q.remove(&owner, seq);
            dropped.total_limit += 1;
        }
        dropped
    }

    fn take_now(&self, user: &str) -> Taken {
        let mut q = self.lock();
        let Some(queue) = q.by_user.remove(user) else {
            return Taken::default();
        };
        let now = unix_ms();
        let mut taken = Taken::default();
        for kept in queue {
            q.forget(&kept);
            if kept.mail.expires_ms > now {
                taken.mail.push(kept.mail);
            } else {
                taken.dropped.expired += 1;
            }
        }
        taken
    }
}

impl Mailbox for Memory {
    fn push<'a>(
        &'a self,
        user: &'a str,
        mail: &'a Mail,
    ) -> BoxFuture<'a, Result<Dropped, MailboxError>> {
        Box::pin(std::future::ready(Ok(self.push_now(user, mail))))
    }

    fn take<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Taken, MailboxError>> {
        Box::pin(std::future::ready(Ok(self.take_now(user))))
    }

    fn sweep(&self) -> BoxFuture<'_, Result<u32, MailboxError>> {
        Box::pin(std::future::ready(Ok(self.lock().sweep(unix_ms()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(n: u32, ttl_ms: u64) -> Mail {
        Mail {
            event: "newMessage".into(),
            json: serde_json::value::to_raw_value(&n).unwrap(),
            expires_ms: unix_ms() + ttl_ms,
        }
    }

    fn memory(per_user: usize, total: usize) -> Memory {
        Memory::new(MailLimits {
            per_user,
            total,
            bytes: usize::MAX,
        })
    }

    fn numbers(taken: &Taken) -> Vec<String> {
        taken
            .mail
            .iter()
            .map(|m| m.json.get().to_string())
            .collect()
    }

    #[test]
    fn a_take_gets_the_queue_in_order_once() {
        let m = memory(10, 100);
        for n in 1..=3 {
            m.push_now("a", &mail(n, 60_000));
        }
        m.push_now("b", &mail(9, 60_000));
        assert_eq!(numbers(&m.take_now("a")), ["1", "2", "3"]);
        assert!(m.take_now("a").mail.is_empty());
        assert_eq!(numbers(&m.take_now("b")), ["9"]);
    }

    #[test]
    fn the_oldest_go_first_at_either_bound() {
        let m = memory(2, 3);
        m.push_now("a", &mail(1, 60_000));
        m.push_now("a", &mail(2, 60_000));
        let d = m.push_now("a", &mail(3, 60_000));
        assert_eq!(d.user_limit, 1);
        m.push_now("b", &mail(4, 60_000));
        let d = m.push_now("c", &mail(5, 60_000));
        assert_eq!(d.total_limit, 1, "a's 2 was the oldest of all");
        assert_eq!(numbers(&m.take_now("a")), ["3"]);
        assert_eq!(numbers(&m.take_now("b")), ["4"]);
        assert_eq!(numbers(&m.take_now("c")), ["5"]);
        assert!(m.lock().by_age.is_empty() && m.lock().by_expiry.is_empty());
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_of_all() {
        // Each message below is 1 (json) + 10 (event) + 1 (user) = 12 bytes.
        let m = Memory::new(MailLimits {
            per_user: 10,
            total: 10,
            bytes: 30,
        });
        m.push_now("a", &mail(1, 60_000));
        m.push_now("b", &mail(2, 60_000));
        assert_eq!(m.push_now("c", &mail(3, 60_000)).total_limit, 1);
        assert!(m.take_now("a").mail.is_empty());
        assert_eq!(numbers(&m.take_now("c")), ["3"]);
        assert_eq!(m.lock().bytes, 12);
    }

    #[test]
    fn expired_messages_are_dropped_and_counted() {
        let m = memory(10, 10);
        m.push_now("a", &mail(1, 60_000));
        m.push_now("a", &mail(2, 0));
        let taken = m.take_now("a");
        assert_eq!(numbers(&taken), ["1"]);
        assert_eq!(taken.dropped.expired, 1);
        m.push_now("z", &mail(3, 0));
        assert_eq!(m.push_now("y", &mail(4, 60_000)).expired, 1);
        assert!(m.take_now("z").mail.is_empty());
        m.push_now("x", &mail(5, 0));
        assert_eq!(m.lock().sweep(unix_ms()), 1);
        assert!(!m.lock().by_user.contains_key("x"));
    }
}
