//! The one way the gateway takes a `std::sync::Mutex`: its critical sections are short and
//! never panic midway, so a poisoned lock (a panic elsewhere while it was held) still guards
//! consistent state, and taking it must not turn one panic into many.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poison (see the module comment).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
