//! The offline mailbox: messages kept for a user who had no socket, handed over when they
//! connect.
//!
//! A `SendDirect` with `ttl_seconds` that reaches nobody is pushed here. The hand-over is
//! two-phase, so delivery is at least once: a node [`Mailbox::claim`]s the oldest of a user's
//! queue (lent to it: no other claim gets them meanwhile, however many tabs connect at the
//! same moment on however many nodes), offers them to the user's sockets, then
//! [`Mailbox::settle`]s the claim: the messages a socket took (acked, when sent with acks) are
//! gone, the others go back to the head of the queue, in order. A claim never settled (its
//! node died, its reply was lost) lapses [`CLAIM_GRACE`] after the longest ack timeout among
//! its messages, and the next claim puts them back first. Bounded per user, per caller (the
//! backend that sent them) and in all, and what each bound drops is counted: a user's queue
//! over its bound loses its oldest; a caller over its share, its own oldest; a full mailbox,
//! the oldest of the caller holding the most (the one pushing, on a tie), so one caller's
//! flood never evicts the messages of a caller holding less. [`Memory`] keeps the queues in
//! this process; `cluster::mailbox::RedisMailbox` keeps them in Redis so any node can claim
//! them.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
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

/// How long a claim outlives the longest ack timeout among its messages before it lapses:
/// time to write the messages (a full socket buffer is waited on, see
/// [`WRITE_STALL`]) and to settle.
pub const CLAIM_GRACE: Duration = Duration::from_secs(5);

/// How long the writes of one claimed batch may wait for room in a socket's buffer; a socket
/// still full then is offered nothing more of the batch.
pub const WRITE_STALL: Duration = Duration::from_secs(2);

/// Most expired messages one sweep drops, so no call runs long; a sweep that dropped this many
/// is repeated at once.
pub const SWEEP_BATCH: u32 = 100;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One kept message: what the user's sockets are sent when they connect.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Mail {
    /// The event name it is emitted as.
    pub event: String,
    /// The message, as the JSON the sockets get.
    pub json: Box<RawValue>,
    /// Milliseconds since the Unix epoch after which it is dropped undelivered.
    pub expires_ms: u64,
    /// The `ack_timeout_ms` it was sent with: handed over, it is gone only once a socket
    /// acked it within that long. 0 (sent without acks): once a socket's buffer took it.
    /// Serialized last (the Redis claim script reads it at the end of the JSON).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ack_ms: u32,
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
    /// Messages kept in all: the oldest of the caller holding the most go first.
    pub total: usize,
    /// Stored bytes in all (see [`Mail::stored_size`]): the oldest of the caller holding
    /// the most bytes go first.
    pub bytes: usize,
    /// Messages one caller may keep unless its `mailbox=` says otherwise: its oldest go
    /// first. 0: no bound of its own, only `total`.
    pub per_caller: usize,
}

fn clamp(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl MailLimits {
    /// The `--mailbox-max-*` bounds.
    pub fn of(config: &Config) -> Self {
        Self {
            per_user: clamp(config.mailbox_max_per_user),
            total: clamp(config.mailbox_max_total),
            bytes: clamp(config.mailbox_max_bytes),
            per_caller: clamp(config.mailbox_max_per_caller),
        }
    }

    /// Messages `owner` may keep: its own share, else the default share (with none, only
    /// the total bounds it, and what it drops counts as the total's).
    pub fn share(&self, owner: Owner<'_>) -> usize {
        match owner.share.map(clamp) {
            Some(own) => own,
            None if self.per_caller == 0 => usize::MAX,
            None => self.per_caller,
        }
    }
}

/// Whose a kept message is: the sending caller's name and its own share of the mailbox
/// (`None`: `--mailbox-max-per-caller`). The mailbox knows callers only by these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner<'a> {
    /// The caller's name.
    pub name: &'a str,
    /// Its own `mailbox=`.
    pub share: Option<u64>,
}

/// Messages a push or a claim dropped, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// The user's queue was full: their oldest went.
    pub user_limit: u32,
    /// The caller that sent them was over its share: its oldest went.
    pub caller_limit: u32,
    /// The mailbox was full: the oldest of the caller holding the most went.
    pub total_limit: u32,
    /// Kept past their `ttl_seconds`.
    pub expired: u32,
}

/// What a push did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pushed {
    /// Messages it dropped.
    pub dropped: Dropped,
    /// A claim for the user ran within [`CONNECT_WATCH`] (a socket of theirs connected, maybe
    /// on a node whose presence has not reached this one yet): the user must be looked for.
    pub watched: bool,
}

/// How long after a claim a push still reports the user [`Pushed::watched`]: longer than
/// a connect takes to reach every node's presence replica.
pub const CONNECT_WATCH: Duration = Duration::from_secs(5);

/// Messages lent to one hand-over, oldest first, each with its number.
#[derive(Debug, Default)]
pub struct Lent {
    /// What [`Mailbox::settle`] names; 0 when nothing was lent.
    pub claim: u64,
    /// The messages still within their TTL, with the numbers `settle` names.
    pub mail: Vec<(u64, Mail)>,
    /// Messages the claim found expired.
    pub dropped: Dropped,
}

/// What a claim got.
#[derive(Debug)]
pub enum Claim {
    /// The oldest of the queue (possibly none).
    Lent(Lent),
    /// Another hand-over holds the user's messages; its claim lapses within this long.
    Busy(Duration),
}

/// Where queues live: this process, or Redis in cluster mode.
pub trait Mailbox: Send + Sync {
    /// Appends `mail` from `owner` to `user`'s queue, dropping beyond the bounds (see the
    /// module's documentation for which message each bound drops).
    fn push<'a>(
        &'a self,
        user: &'a str,
        owner: Owner<'a>,
        mail: &'a Mail,
    ) -> BoxFuture<'a, Result<Pushed, MailboxError>>;

    /// Lends the oldest `max` of `user`'s queue to the caller until it settles (or the claim
    /// lapses); first puts back the messages of a lapsed claim.
    fn claim<'a>(&'a self, user: &'a str, max: usize)
        -> BoxFuture<'a, Result<Claim, MailboxError>>;

    /// Ends claim `claim` of `user`: the messages numbered in `done` are gone, the others go
    /// back to the head of the queue in order. A claim that lapsed meanwhile is left alone.
    fn settle<'a>(
        &'a self,
        user: &'a str,
        claim: u64,
        done: &'a [u64],
    ) -> BoxFuture<'a, Result<(), MailboxError>>;

    /// Drops at most [`SWEEP_BATCH`] expired messages; returns how many. Pushes sweep too,
    /// but a mailbox nobody pushes to must not hold them forever.
    fn sweep(&self) -> BoxFuture<'_, Result<u32, MailboxError>>;
}

/// How often expired messages are swept when nothing is pushed.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// When a claim of messages with acks up to `longest_ack_ms` lapses.
fn lapses_at(now: u64, longest_ack_ms: u32) -> u64 {
    now + u64::from(longest_ack_ms) + CLAIM_GRACE.as_millis() as u64
}

/// A kept message, its place in the global order and who sent it.
struct Kept {
    seq: u64,
    size: usize,
    caller: Arc<str>,
    mail: Mail,
}

/// What one caller keeps: its messages' numbers (oldest first) and their bytes.
#[derive(Default)]
struct Held {
    seqs: BTreeSet<u64>,
    bytes: usize,
}

/// Messages lent to a hand-over.
struct Loan {
    claim: u64,
    until_ms: u64,
    kept: Vec<Kept>,
}

/// One user's messages: waiting, and lent.
#[derive(Default)]
struct UserMail {
    queue: VecDeque<Kept>,
    loan: Option<Loan>,
}

impl UserMail {
    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.loan.as_ref().is_none_or(|l| l.kept.is_empty())
    }

    /// Puts the loan's messages back at the head of the queue, in order.
    fn give_back(&mut self, loan: Loan, keep: impl Fn(&Kept) -> bool) -> Vec<Kept> {
        let (back, gone): (Vec<Kept>, Vec<Kept>) = loan.kept.into_iter().partition(keep);
        for kept in back.into_iter().rev() {
            self.queue.push_front(kept);
        }
        gone
    }
}

#[derive(Default)]
struct Queues {
    by_user: HashMap<Arc<str>, UserMail>,
    /// Every kept message's owner by push order.
    by_age: BTreeMap<u64, Arc<str>>,
    /// The same messages by expiry, for sweeping the expired first.
    by_expiry: BTreeMap<(u64, u64), Arc<str>>,
    /// The same messages by the caller that sent them.
    by_caller: HashMap<Arc<str>, Held>,
    next_seq: u64,
    bytes: usize,
}

impl Queues {
    fn forget(&mut self, kept: &Kept) {
        self.bytes -= kept.size;
        self.by_age.remove(&kept.seq);
        self.by_expiry.remove(&(kept.mail.expires_ms, kept.seq));
        if let Some(held) = self.by_caller.get_mut(&kept.caller) {
            held.seqs.remove(&kept.seq);
            held.bytes -= kept.size;
            if held.seqs.is_empty() {
                self.by_caller.remove(&kept.caller);
            }
        }
    }

    /// Drops `caller`'s oldest message, if it keeps any.
    fn drop_oldest_of(&mut self, caller: &str) {
        if let Some(&seq) = self.by_caller.get(caller).and_then(|h| h.seqs.first()) {
            let user = self.by_age[&seq].clone();
            self.remove(&user, seq);
        }
    }

    /// The caller holding the most messages (or bytes): `pushing` when it ties.
    fn heaviest(&self, pushing: &str, by_bytes: bool) -> Arc<str> {
        let weight = |held: &Held| {
            if by_bytes {
                held.bytes
            } else {
                held.seqs.len()
            }
        };
        let (name, _) = self
            .by_caller
            .iter()
            .max_by_key(|(name, held)| (weight(held), &***name == pushing))
            .expect("the mailbox is not empty");
        name.clone()
    }

    /// Interns a caller's name.
    fn caller(&self, caller: &str) -> Arc<str> {
        self.by_caller
            .get_key_value(caller)
            .map_or_else(|| Arc::from(caller), |(c, _)| c.clone())
    }

    /// Removes the message `seq` of `user`, waiting or lent.
    fn remove(&mut self, user: &Arc<str>, seq: u64) {
        let Some(mail) = self.by_user.get_mut(user) else {
            return;
        };
        let kept = if let Some(at) = mail.queue.iter().position(|k| k.seq == seq) {
            mail.queue.remove(at)
        } else {
            mail.loan.as_mut().and_then(|loan| {
                let at = loan.kept.iter().position(|k| k.seq == seq)?;
                Some(loan.kept.remove(at))
            })
        };
        if mail.is_empty() {
            self.by_user.remove(user);
        }
        if let Some(kept) = kept {
            self.forget(&kept);
        }
    }

    fn sweep(&mut self, now: u64, batch: u32) -> u32 {
        let mut expired = 0;
        while let Some(((expires, seq), user)) = self.by_expiry.first_key_value() {
            if *expires > now || expired == batch {
                break;
            }
            let (seq, user) = (*seq, user.clone());
            self.remove(&user, seq);
            expired += 1;
        }
        expired
    }

    fn user(&mut self, user: &str) -> Arc<str> {
        self.by_user
            .get_key_value(user)
            .map_or_else(|| Arc::from(user), |(u, _)| u.clone())
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

    fn push_now(&self, user: &str, owner: Owner<'_>, mail: &Mail) -> Dropped {
        let share = self.limits.share(owner);
        let mut q = self.lock();
        let mut dropped = Dropped {
            expired: q.sweep(unix_ms(), SWEEP_BATCH),
            ..Dropped::default()
        };
        let (user, caller) = (q.user(user), q.caller(owner.name));
        let seq = q.next_seq;
        q.next_seq += 1;
        q.by_age.insert(seq, user.clone());
        q.by_expiry.insert((mail.expires_ms, seq), user.clone());
        let size = mail.stored_size(&user);
        q.bytes += size;
        let held = q.by_caller.entry(caller.clone()).or_default();
        held.seqs.insert(seq);
        held.bytes += size;
        let queue = &mut q.by_user.entry(user.clone()).or_default().queue;
        queue.push_back(Kept {
            seq,
            size,
            caller: caller.clone(),
            mail: mail.clone(),
        });
        let over = queue.len().saturating_sub(self.limits.per_user);
        let oldest: Vec<Kept> = queue.drain(..over).collect();
        for kept in &oldest {
            q.forget(kept);
            dropped.user_limit += 1;
        }
        while q
            .by_caller
            .get(&caller)
            .is_some_and(|h| h.seqs.len() > share)
        {
            q.drop_oldest_of(&caller);
            dropped.caller_limit += 1;
        }
        loop {
            let by_bytes = q.by_age.len() <= self.limits.total;
            if by_bytes && q.bytes <= self.limits.bytes {
                break;
            }
            let heaviest = q.heaviest(&caller, by_bytes);
            q.drop_oldest_of(&heaviest);
            dropped.total_limit += 1;
        }
        dropped
    }

    fn claim_now(&self, user: &str, max: usize) -> Claim {
        let mut q = self.lock();
        let now = unix_ms();
        let Some(mail) = q.by_user.get_mut(user) else {
            return Claim::Lent(Lent::default());
        };
        if let Some(loan) = mail.loan.take() {
            if loan.until_ms > now {
                let left = Duration::from_millis(loan.until_ms - now);
                mail.loan = Some(loan);
                return Claim::Busy(left);
            }
            mail.give_back(loan, |_| true);
        }
        let taken: Vec<Kept> = mail.queue.drain(..max.min(mail.queue.len())).collect();
        let (live, expired): (Vec<Kept>, Vec<Kept>) =
            taken.into_iter().partition(|k| k.mail.expires_ms > now);
        let mut lent = Lent {
            dropped: Dropped {
                expired: expired.len() as u32,
                ..Dropped::default()
            },
            ..Lent::default()
        };
        if !live.is_empty() {
            lent.claim = q.next_seq;
            q.next_seq += 1;
            lent.mail = live.iter().map(|k| (k.seq, k.mail.clone())).collect();
            let longest = live.iter().map(|k| k.mail.ack_ms).max().unwrap_or(0);
            let mail = q.by_user.get_mut(user).expect("looked up above");
            mail.loan = Some(Loan {
                claim: lent.claim,
                until_ms: lapses_at(now, longest),
                kept: live,
            });
        }
        for kept in &expired {
            q.forget(kept);
        }
        if q.by_user.get(user).is_some_and(UserMail::is_empty) {
            q.by_user.remove(user);
        }
        Claim::Lent(lent)
    }

    fn settle_now(&self, user: &str, claim: u64, done: &[u64]) {
        let mut q = self.lock();
        let Some(mail) = q.by_user.get_mut(user) else {
            return;
        };
        let Some(loan) = mail.loan.take_if(|l| l.claim == claim) else {
            return;
        };
        let gone = mail.give_back(loan, |k| !done.contains(&k.seq));
        if mail.is_empty() {
            q.by_user.remove(user);
        }
        for kept in &gone {
            q.forget(kept);
        }
    }
}

impl Mailbox for Memory {
    fn push<'a>(
        &'a self,
        user: &'a str,
        owner: Owner<'a>,
        mail: &'a Mail,
    ) -> BoxFuture<'a, Result<Pushed, MailboxError>> {
        // One process: a connect registers its socket before it claims, so a sender's own
        // presence lookup after the push sees it; nothing to watch.
        let dropped = self.push_now(user, owner, mail);
        Box::pin(std::future::ready(Ok(Pushed {
            dropped,
            watched: false,
        })))
    }

    fn claim<'a>(
        &'a self,
        user: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Claim, MailboxError>> {
        Box::pin(std::future::ready(Ok(self.claim_now(user, max))))
    }

    fn settle<'a>(
        &'a self,
        user: &'a str,
        claim: u64,
        done: &'a [u64],
    ) -> BoxFuture<'a, Result<(), MailboxError>> {
        self.settle_now(user, claim, done);
        Box::pin(std::future::ready(Ok(())))
    }

    fn sweep(&self) -> BoxFuture<'_, Result<u32, MailboxError>> {
        Box::pin(std::future::ready(Ok(self
            .lock()
            .sweep(unix_ms(), SWEEP_BATCH))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one caller of these tests.
    const ANYONE: Owner<'static> = Owner {
        name: "anonymous",
        share: None,
    };

    fn mail(n: u32, ttl_ms: u64) -> Mail {
        Mail {
            event: "newMessage".into(),
            json: serde_json::value::to_raw_value(&n).unwrap(),
            expires_ms: unix_ms() + ttl_ms,
            ack_ms: 0,
        }
    }

    fn lent(claim: Claim) -> Lent {
        match claim {
            Claim::Lent(lent) => lent,
            Claim::Busy(left) => panic!("busy for {left:?}"),
        }
    }

    /// Claims the whole queue and settles it all delivered.
    fn take(m: &Memory, user: &str) -> Lent {
        let lent = lent(m.claim_now(user, usize::MAX));
        let done: Vec<u64> = lent.mail.iter().map(|(seq, _)| *seq).collect();
        m.settle_now(user, lent.claim, &done);
        lent
    }

    fn memory(per_user: usize, total: usize) -> Memory {
        Memory::new(MailLimits {
            per_user,
            total,
            bytes: usize::MAX,
            per_caller: 0,
        })
    }

    fn numbers(lent: &Lent) -> Vec<String> {
        lent.mail
            .iter()
            .map(|(_, m)| m.json.get().to_string())
            .collect()
    }

    #[test]
    fn a_take_gets_the_queue_in_order_once() {
        let m = memory(10, 100);
        for n in 1..=3 {
            m.push_now("a", ANYONE, &mail(n, 60_000));
        }
        m.push_now("b", ANYONE, &mail(9, 60_000));
        assert_eq!(numbers(&take(&m, "a")), ["1", "2", "3"]);
        assert!(take(&m, "a").mail.is_empty());
        assert_eq!(numbers(&take(&m, "b")), ["9"]);
    }

    #[test]
    fn the_oldest_go_first_at_either_bound() {
        let m = memory(2, 3);
        m.push_now("a", ANYONE, &mail(1, 60_000));
        m.push_now("a", ANYONE, &mail(2, 60_000));
        let d = m.push_now("a", ANYONE, &mail(3, 60_000));
        assert_eq!(d.user_limit, 1);
        m.push_now("b", ANYONE, &mail(4, 60_000));
        let d = m.push_now("c", ANYONE, &mail(5, 60_000));
        assert_eq!(d.total_limit, 1, "a's 2 was the oldest of all");
        assert_eq!(numbers(&take(&m, "a")), ["3"]);
        assert_eq!(numbers(&take(&m, "b")), ["4"]);
        assert_eq!(numbers(&take(&m, "c")), ["5"]);
        let q = m.lock();
        assert!(q.by_age.is_empty() && q.by_expiry.is_empty() && q.by_caller.is_empty());
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_of_all() {
        // Each message below is 1 (json) + 10 (event) + 1 (user) = 12 bytes.
        let m = Memory::new(MailLimits {
            per_user: 10,
            total: 10,
            bytes: 30,
            per_caller: 0,
        });
        m.push_now("a", ANYONE, &mail(1, 60_000));
        m.push_now("b", ANYONE, &mail(2, 60_000));
        assert_eq!(m.push_now("c", ANYONE, &mail(3, 60_000)).total_limit, 1);
        assert!(take(&m, "a").mail.is_empty());
        assert_eq!(numbers(&take(&m, "c")), ["3"]);
        assert_eq!(m.lock().bytes, 12);
    }

    #[test]
    fn expired_messages_are_dropped_and_counted() {
        let m = memory(10, 10);
        m.push_now("a", ANYONE, &mail(1, 60_000));
        m.push_now("a", ANYONE, &mail(2, 0));
        let taken = take(&m, "a");
        assert_eq!(numbers(&taken), ["1"]);
        assert_eq!(taken.dropped.expired, 1);
        m.push_now("z", ANYONE, &mail(3, 0));
        assert_eq!(m.push_now("y", ANYONE, &mail(4, 60_000)).expired, 1);
        assert!(take(&m, "z").mail.is_empty());
        m.push_now("x", ANYONE, &mail(5, 0));
        assert_eq!(m.lock().sweep(unix_ms(), SWEEP_BATCH), 1);
        assert!(!m.lock().by_user.contains_key("x"));
    }

    #[test]
    fn lent_messages_go_to_one_claim_and_what_was_not_done_comes_back_first() {
        let m = memory(10, 100);
        for n in 1..=4 {
            m.push_now("a", ANYONE, &mail(n, 60_000));
        }
        let first = lent(m.claim_now("a", 3));
        assert_eq!(numbers(&first), ["1", "2", "3"]);
        assert!(matches!(m.claim_now("a", 3), Claim::Busy(_)), "lent once");
        m.push_now("a", ANYONE, &mail(5, 60_000));
        // 2 was acked; 1 and 3 go back before 4 and 5.
        m.settle_now("a", first.claim, &[first.mail[1].0]);
        m.settle_now("a", first.claim, &[]);
        assert_eq!(numbers(&take(&m, "a")), ["1", "3", "4", "5"]);
        assert!(m.lock().by_user.is_empty() && m.lock().by_age.is_empty());
    }

    #[test]
    fn a_lapsed_claim_is_put_back_by_the_next_one() {
        let m = memory(10, 100);
        m.push_now("a", ANYONE, &mail(1, 60_000));
        m.push_now("a", ANYONE, &mail(2, 60_000));
        let first = lent(m.claim_now("a", 1));
        m.lock()
            .by_user
            .get_mut("a")
            .unwrap()
            .loan
            .as_mut()
            .unwrap()
            .until_ms = 0;
        assert_eq!(numbers(&take(&m, "a")), ["1", "2"]);
        m.settle_now("a", first.claim, &[first.mail[0].0]);
        assert_eq!(
            m.lock().bytes,
            0,
            "a late settle of a lapsed claim changes nothing"
        );
    }

    #[test]
    fn bounds_and_expiry_reach_lent_messages() {
        let m = memory(10, 2);
        m.push_now("a", ANYONE, &mail(1, 60_000));
        let first = lent(m.claim_now("a", 1));
        m.push_now("b", ANYONE, &mail(2, 60_000));
        assert_eq!(
            m.push_now("b", ANYONE, &mail(3, 60_000)).total_limit,
            1,
            "the lent 1 went"
        );
        m.settle_now("a", first.claim, &[]);
        assert!(take(&m, "a").mail.is_empty());
        m.push_now("c", ANYONE, &mail(4, 0));
        let _ = lent(m.claim_now("b", 1));
        assert_eq!(m.lock().sweep(unix_ms(), SWEEP_BATCH), 1);
        assert_eq!(m.lock().sweep(unix_ms(), SWEEP_BATCH), 0);
    }
}
