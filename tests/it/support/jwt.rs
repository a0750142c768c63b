//! HS256 and RS256 tokens for `--auth jwt` gateways.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::Gateway;

/// The `--jwt-secret` of the tests' JWT gateways.
pub const SECRET: &str = "a-test-secret-of-32-bytes-length";
/// `--auth jwt` with [`SECRET`] and the CORS origin that mode requires.
pub const FLAGS: [&str; 6] = [
    "--auth",
    "jwt",
    "--jwt-secret",
    SECRET,
    "--cors-origins",
    "http://app.test",
];
/// The public key of the RS256 test pair, as `--jwt-public-key-file` takes it.
pub const RSA_PUBLIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/jwt-rs256-test-public.pem"
);
const RSA_PRIVATE: &[u8] = include_bytes!("../../fixtures/jwt-rs256-test-private.pem");

/// A gateway in `--auth jwt` mode ([`FLAGS`]) with `extra` flags.
pub async fn gateway(extra: &[&str]) -> Gateway {
    Gateway::start_args(&[&FLAGS[..], extra].concat()).await
}

/// Seconds since the Unix epoch, as `exp` counts them.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn hs256(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn rs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
    )
    .unwrap()
}

/// An HS256 token of `sub`, signed with [`SECRET`], valid 10 minutes.
pub fn token(sub: &str) -> String {
    hs256(json!({ "sub": sub, "exp": now() + 600 }), SECRET)
}
