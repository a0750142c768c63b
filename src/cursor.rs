//! Opaque, tamper-evident `ListOnline` page tokens.
//!
//! A token carries the last user id of the previous page and a keyed SipHash tag, so a client
//! cannot forge a position and a garbled token is refused instead of silently restarting.
//! The key is random per process: tokens do not survive a restart, which paging tolerates.

use std::hash::{BuildHasher, RandomState};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

const TAG_LEN: usize = 8;

/// Why a page token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("page_token is not a token issued by this gateway")]
pub struct InvalidToken;

/// Signs and checks page tokens.
#[derive(Debug, Clone, Default)]
pub struct PageCursor {
    key: RandomState,
}

impl PageCursor {
    pub fn new() -> Self {
        Self::default()
    }

    fn tag(&self, last: &str) -> [u8; TAG_LEN] {
        self.key.hash_one(last).to_le_bytes()
    }

    /// A token resuming after `last`.
    pub fn encode(&self, last: &str) -> String {
        let mut raw = Vec::with_capacity(TAG_LEN + last.len());
        raw.extend_from_slice(&self.tag(last));
        raw.extend_from_slice(last.as_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The user id a token resumes after.
    pub fn decode(&self, token: &str) -> Result<String, InvalidToken> {
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| InvalidToken)?;
        if raw.len() <= TAG_LEN {
            return Err(InvalidToken);
        }
        let (tag, last) = raw.split_at(TAG_LEN);
        let last = std::str::from_utf8(last).map_err(|_| InvalidToken)?;
        if tag != self.tag(last) {
            return Err(InvalidToken);
        }
        Ok(last.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_tamper() {
        let c = PageCursor::new();
        let t = c.encode("user-42 ü");
        assert_eq!(c.decode(&t).unwrap(), "user-42 ü");
        assert_eq!(c.decode("!!!"), Err(InvalidToken));
        assert_eq!(c.decode(""), Err(InvalidToken));
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        *raw.last_mut().unwrap() ^= 1;
        assert_eq!(c.decode(&URL_SAFE_NO_PAD.encode(raw)), Err(InvalidToken));
        assert_eq!(PageCursor::new().decode(&t), Err(InvalidToken));
    }
}
