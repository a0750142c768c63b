//! Opaque, tamper-evident `ListOnline` page tokens.
//!
//! A token carries the last user id of the previous page and an HMAC-SHA256 tag, so a client
//! cannot forge a position and a garbled token is refused instead of silently restarting.
//! A single node draws its key at random (tokens do not survive a restart, which paging
//! tolerates); the nodes of a cluster share one key through Redis, so a token from one node
//! continues on any other.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const TAG_LEN: usize = 16;
/// Bytes of a page-token key.
pub const KEY_LEN: usize = 32;

/// Why a page token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("page_token is not a token issued by this gateway")]
pub struct InvalidToken;

/// Signs and checks page tokens.
#[derive(Debug, Clone)]
pub struct PageCursor {
    key: [u8; KEY_LEN],
}

impl Default for PageCursor {
    fn default() -> Self {
        Self::with_key(random_key())
    }
}

/// A fresh random key.
pub fn random_key() -> [u8; KEY_LEN] {
    let mut key = [0; KEY_LEN];
    getrandom::getrandom(&mut key).expect("the OS random source works");
    key
}

impl PageCursor {
    /// A cursor with a fresh random key (single node).
    pub fn new() -> Self {
        Self::default()
    }

    /// A cursor with a key the nodes of a cluster share, so any node reads any token.
    pub fn with_key(key: [u8; KEY_LEN]) -> Self {
        Self { key }
    }

    fn tag(&self, last: &str) -> [u8; TAG_LEN] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(last.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
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
        if !bool::from(subtle::ConstantTimeEq::ct_eq(tag, &self.tag(last)[..])) {
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

    #[test]
    fn a_shared_key_makes_tokens_portable() {
        let key = random_key();
        let t = PageCursor::with_key(key).encode("bob");
        assert_eq!(PageCursor::with_key(key).decode(&t).unwrap(), "bob");
    }
}
