//! Bounds on Engine.IO sessions that have not yet connected to the namespace, that is, have
//! not authenticated. Each one costs memory (about 11 KiB for a polling session) and nothing
//! else limits how many one client may open, so a handshake beyond the bound, for its source
//! address or in all, is refused before a session is created.
//!
//! A slot is taken by the HTTP request that opens a session (no `sid` in the query; see
//! `http_port::limit_pending_sessions`) and travels in that request's extensions, which the
//! session keeps: it is handed back when the socket connects to the namespace, or when the
//! session is dropped.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

/// Why a new session was refused; the text is the body of the 429 response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PendingError {
    /// `--max-pending-sessions-per-ip` sessions of this address are not connected yet.
    #[error("too many unauthenticated sessions from this address (limit {0}): connect to the namespace or close some, then retry")]
    PerAddress(usize),
    /// `--max-pending-sessions` sessions in all are not connected yet.
    #[error("too many unauthenticated sessions (limit {0}); retry later")]
    Global(usize),
}

/// Counts of sessions not yet connected, per source address and in all.
pub struct PendingSessions {
    per_address: usize,
    global: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// IPv6 clients usually hold a whole /64, so they are counted per /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
        },
    }
}

impl PendingSessions {
    /// At most `per_address` sessions per address (IPv6 by /64) and `global` in all.
    pub fn new(per_address: usize, global: usize) -> Arc<Self> {
        Arc::new(Self {
            per_address,
            global,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Takes a slot for a new session from `ip`, or says which bound it is over.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<PendingSlot, PendingError> {
        let key = address_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.global {
            return Err(PendingError::Global(self.global));
        }
        let mine = counts.by_address.entry(key).or_insert(0);
        if *mine >= self.per_address {
            return Err(PendingError::PerAddress(self.per_address));
        }
        *mine += 1;
        counts.total += 1;
        Ok(PendingSlot(Arc::new(Slot {
            sessions: self.clone(),
            key,
            released: AtomicBool::new(false),
        })))
    }

    /// Sessions holding a slot now.
    pub fn total(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    fn release(&self, key: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        if let Some(n) = counts.by_address.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                counts.by_address.remove(&key);
            }
        }
    }
}

/// One session's slot; cloned with the request parts, handed back once.
#[derive(Clone)]
pub struct PendingSlot(Arc<Slot>);

struct Slot {
    sessions: Arc<PendingSessions>,
    key: IpAddr,
    released: AtomicBool,
}

impl PendingSlot {
    /// Hands the slot back: the session has connected to the namespace.
    pub fn release(&self) {
        if !self.0.released.swap(true, Ordering::AcqRel) {
            self.0.sessions.release(self.0.key);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.sessions.release(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_per_address_and_in_all_and_slots_come_back() {
        let sessions = PendingSessions::new(2, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = sessions.acquire(a).unwrap();
        let _a2 = sessions.acquire(a).unwrap();
        assert_eq!(sessions.acquire(a).err(), Some(PendingError::PerAddress(2)));
        let _b1 = sessions.acquire(b).unwrap();
        assert_eq!(sessions.acquire(b).err(), Some(PendingError::Global(3)));
        a1.release();
        a1.clone().release();
        drop(a1);
        assert_eq!(sessions.total(), 2);
        assert!(sessions.acquire(b).is_ok());
        assert_eq!(sessions.total(), 2, "the slot just taken was dropped");
    }

    #[test]
    fn ipv6_counts_per_64() {
        let sessions = PendingSessions::new(1, 10);
        let _one = sessions.acquire("2001:db8::1".parse().unwrap()).unwrap();
        assert!(sessions.acquire("2001:db8::2".parse().unwrap()).is_err());
        assert!(sessions.acquire("2001:db8:0:1::1".parse().unwrap()).is_ok());
    }
}
