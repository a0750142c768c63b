//! Rules for the identifiers clients and callers hand us: user ids and event names.

/// Longest accepted user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;
/// Longest accepted event name, in bytes.
pub const MAX_EVENT_BYTES: usize = 64;
/// The event `SendDirect` emits when the caller names none.
pub const DEFAULT_EVENT: &str = "newMessage";

/// Names the Socket.IO client reserves for itself: emitting one would confuse or break it.
const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Checks a user id: 1..=128 bytes, no control characters.
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
    Ok(())
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
    }

    #[test]
    fn events() {
        assert_eq!(event(""), Ok(DEFAULT_EVENT));
        assert_eq!(event("ping"), Ok("ping"));
        assert!(event("disconnect").is_err());
        assert!(event(&"e".repeat(65)).is_err());
    }
}
