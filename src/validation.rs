//! Rules for the identifiers clients and callers hand us: user ids and event names.

/// Longest accepted user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;
/// Longest accepted event name, in bytes.
pub const MAX_EVENT_BYTES: usize = 64;
/// The event `SendDirect` emits when the caller names none.
pub const DEFAULT_EVENT: &str = "newMessage";

/// Names the Socket.IO client reserves for itself: emitting one would confuse or break it.
pub const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Event carrying the array of online user ids.
pub const ONLINE_USERS_EVENT: &str = "getOnlineUsers";
/// Event carrying `{"online": [...], "offline": [...]}` to `presence: "changes"` sockets.
pub const ONLINE_USERS_CHANGED_EVENT: &str = "onlineUsersChanged";
/// Event sent just before the gateway disconnects a socket, carrying the reason as a string
/// (Socket.IO's own server disconnect carries none).
pub const DISCONNECT_REASON_EVENT: &str = "disconnectReason";

/// Every event the gateway emits on its own: a caller sending one could show a tab a forged
/// online list or a forged reason for a disconnect ("account suspended: call ..."). The
/// emitting code uses these constants, so a new one is added here.
pub const GATEWAY_EVENTS: &[&str] = &[
    ONLINE_USERS_EVENT,
    ONLINE_USERS_CHANGED_EVENT,
    DISCONNECT_REASON_EVENT,
];

/// Characters that render as nothing or reorder the text around them: every Unicode format
/// character (general category Cf: zero-width spaces and joiners, bidi embeddings, overrides
/// and isolates, the BOM, soft hyphen, tags, ...), line and paragraph separators, and the
/// fillers and blanks used to fake an empty name. A user id is shown to every other user in
/// `getOnlineUsers`, so it must look like what it is.
const INVISIBLE: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{2028}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{2800}', '\u{2800}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0001}', '\u{E0001}'),
    ('\u{E0020}', '\u{E007F}'),
];

fn is_invisible(c: char) -> bool {
    INVISIBLE.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// Checks a user id: 1..=128 bytes, not only whitespace, no control characters and none of
/// [`INVISIBLE`].
pub fn user_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is required".into());
    }
    if id.len() > MAX_USER_ID_BYTES {
        return Err(format!("is longer than {MAX_USER_ID_BYTES} bytes"));
    }
    if id.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    if let Some(c) = id.chars().find(|&c| is_invisible(c)) {
        return Err(format!(
            "contains U+{:04X}, an invisible or text-direction character",
            c as u32
        ));
    }
    if id.chars().all(char::is_whitespace) {
        return Err("is only whitespace".into());
    }
    Ok(())
}

/// Checks a watchlist: at most `max` ids, each a valid user id ([`user_id`]); duplicates
/// count once.
pub fn watchlist(ids: Vec<String>, max: usize) -> Result<Vec<std::sync::Arc<str>>, String> {
    if ids.len() > max {
        return Err(format!(
            "has {} user ids, more than the limit of {max} (--max-watchlist)",
            ids.len()
        ));
    }
    let mut list = Vec::with_capacity(ids.len());
    for (i, id) in ids.into_iter().enumerate() {
        user_id(&id).map_err(|reason| format!("user id #{i} {reason}"))?;
        list.push(std::sync::Arc::from(id));
    }
    list.sort_unstable();
    list.dedup();
    Ok(list)
}

/// Resolves the event name to emit: empty means [`DEFAULT_EVENT`].
pub fn event(name: &str) -> Result<&str, String> {
    if name.is_empty() {
        return Ok(DEFAULT_EVENT);
    }
    if name.len() > MAX_EVENT_BYTES {
        return Err(format!("is longer than {MAX_EVENT_BYTES} bytes"));
    }
    if RESERVED_EVENTS.contains(&name) {
        return Err(format!("\"{name}\" is reserved by Socket.IO"));
    }
    if GATEWAY_EVENTS.contains(&name) {
        return Err(format!(
            "\"{name}\" is reserved: the gateway sends it itself"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert!(user_id("alice").is_ok());
        assert!(user_id("").is_err());
        assert!(user_id("a\nb").is_err());
        assert!(user_id(&"x".repeat(129)).is_err());
        assert!(user_id(&"x".repeat(128)).is_ok());
        for ok in [
            "José Ñandú",
            "ユーザー😀",
            "a&b=c?d#e/f%20g+h",
            "مستخدم",
            "❤\u{FE0F}",
        ] {
            assert_eq!(user_id(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            " ",
            "\u{3000}\u{2003} ",
            "admin\u{202E}nimda",
            "al\u{200B}ice",
            "\u{2066}bob\u{2069}",
            "\u{FEFF}carol",
            "\u{3164}",
            "x\u{E0041}",
            "a\u{2028}b",
        ] {
            assert!(user_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn events() {
        assert_eq!(event(""), Ok(DEFAULT_EVENT));
        assert_eq!(event("ping"), Ok("ping"));
        assert!(event("disconnect").is_err());
        for &own in GATEWAY_EVENTS {
            let refused = event(own).unwrap_err();
            assert!(refused.contains(own), "{refused}");
        }
        assert!(event(&"e".repeat(65)).is_err());
    }
}
