//! Who is calling the gRPC API, and what it may do.
//!
//! A company runs several backends against one gateway (orders, chat, analytics); each gets
//! its own API key (or client certificate) with a name, the RPCs it may call and its own
//! shares of the bounded resources (mailbox, presence watchers, idempotency keys), so one
//! caller can neither act outside its job nor crowd another out.
//!
//! A callers file has one caller per line, `#` starting a comment:
//!
//! ```text
//! KEY name=orders allow=SendDirect,SendToUsers,SendStream mailbox=5000
//! KEY name=ops allow=*
//! ```
//!
//! For API keys the first word is the key; for client certificates it is the subject's
//! common name or a DNS / URI / email subject alternative name. A line with no `allow=` may
//! call everything (as before callers had permissions) and is warned about at start.

use std::{fmt, sync::Arc};

use sha2::{Digest, Sha256};

mod file;
mod identify;
mod layer;

pub use file::{parse_file, Entry};
pub use identify::Callers;
pub use layer::Authenticate;

/// The Messaging RPCs, as named in `allow=`.
pub const METHODS: [&str; 9] = [
    "SendDirect",
    "ListOnline",
    "SendToUsers",
    "SendStream",
    "GetPresence",
    "DisconnectUser",
    "Broadcast",
    "WatchPresence",
    "SetWatchlist",
];

/// The gRPC service the permissions apply to; health is open to all, reflection to any
/// authenticated caller.
pub const SERVICE: &str = "messaging.v1.Messaging";

/// Longest caller name: it is a metric label and part of Redis keys.
const MAX_NAME_BYTES: usize = 64;

/// A set of [`METHODS`], one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allow(u16);

impl Allow {
    /// Every method.
    pub const ALL: Self = Self((1 << METHODS.len()) - 1);

    /// Whether `method` (a bare RPC name) is allowed; unknown methods never are.
    pub fn permits(self, method: &str) -> bool {
        METHODS
            .iter()
            .position(|m| *m == method)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// `*`, or RPC names separated by commas.
    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        if value == "*" {
            return Ok(Self::ALL);
        }
        let mut bits = 0;
        for name in value.split(',') {
            let i = METHODS.iter().position(|m| *m == name).ok_or_else(|| {
                format!(
                    "allow={value}: unknown method {name:?}; use * or some of {}",
                    METHODS.join(",")
                )
            })?;
            bits |= 1 << i;
        }
        Ok(Self(bits))
    }

    /// The allowed methods, comma-separated, or `*`.
    pub fn names(self) -> String {
        if self == Self::ALL {
            return "*".into();
        }
        METHODS
            .iter()
            .filter(|m| self.permits(m))
            .copied()
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A caller's own bounds; `None` means the flag's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shares {
    /// Messages this caller may keep in the offline mailbox (`mailbox=`).
    pub mailbox: Option<u64>,
    /// WatchPresence streams this caller may hold open (`watchers=`).
    pub watchers: Option<u64>,
}

/// One authenticated gRPC caller.
#[derive(Debug, PartialEq, Eq)]
pub struct Caller {
    /// Its name, in logs, metric labels, PERMISSION_DENIED messages and the scope of its
    /// idempotency keys and shares.
    pub name: Arc<str>,
    /// The RPCs it may call.
    pub allow: Allow,
    /// Whether `allow` was given (an implicit `*` is warned about).
    pub explicit: bool,
    /// Its own bounds.
    pub shares: Shares,
}

/// Name of the caller when the gRPC port does not authenticate (no keys, no client CA).
pub const ANONYMOUS: &str = "anonymous";

impl Default for Caller {
    fn default() -> Self {
        Self::everything(ANONYMOUS)
    }
}

impl Caller {
    /// The one caller of an unauthenticated gRPC port: may call everything.
    pub fn anonymous() -> Arc<Self> {
        Arc::default()
    }

    /// A caller named `name` allowed every method, with the default shares.
    pub fn everything(name: &str) -> Self {
        Self {
            name: name.into(),
            allow: Allow::ALL,
            explicit: false,
            shares: Shares::default(),
        }
    }

    /// The caller a request was authenticated as; the anonymous caller when the port does
    /// not authenticate.
    pub fn of<T>(request: &tonic::Request<T>) -> Arc<Self> {
        request
            .extensions()
            .get::<Arc<Self>>()
            .cloned()
            .unwrap_or_else(Self::anonymous)
    }

    /// Whether it may call `method`; the error names the caller and the method.
    pub fn check(&self, method: &str) -> Result<(), tonic::Status> {
        if self.allow.permits(method) {
            return Ok(());
        }
        Err(tonic::Status::permission_denied(format!(
            "caller {:?} may not call {SERVICE}/{method}",
            self.name
        )))
    }
}

/// In the mailbox, a caller is its name and its own share.
impl<'a> From<&'a Caller> for crate::mailbox::Owner<'a> {
    fn from(caller: &'a Caller) -> Self {
        Self {
            name: &caller.name,
            share: caller.shares.mailbox,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (allow={})", self.name, self.allow.names())
    }
}

/// A caller's name: 1..=64 of `A-Z a-z 0-9 . _ -` (a metric label and part of Redis keys).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=MAX_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name={name}: use 1 to {MAX_NAME_BYTES} letters, digits, '.', '_' or '-'"
        ))
    }
}

/// The name of a key given without `name=`: a digest prefix, which tells keys apart in logs
/// without revealing them.
pub fn unnamed(key: &str) -> String {
    let digest = Sha256::digest(key);
    format!(
        "key-{:02x}{:02x}{:02x}{:02x}",
        digest[0], digest[1], digest[2], digest[3]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_names_the_caller_and_the_method() {
        let caller = Caller {
            allow: Allow::parse("GetPresence").unwrap(),
            ..Caller::everything("analytics")
        };
        assert!(caller.check("GetPresence").is_ok());
        let status = caller.check("DisconnectUser").unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "caller \"analytics\" may not call messaging.v1.Messaging/DisconnectUser"
        );
    }
}
