//! Which browsers may connect: JWT or trusted `userId` (gRPC callers are in
//! [`crate::caller`]).
//!
//! In `jwt` mode the user id comes only from a verified token's `sub`; whatever `userId` the
//! client sends is ignored, so nobody can read another user's messages.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{read_file, AuthMode, Config, ConfigError};

/// Why a browser handshake was refused; the text reaches the client as `connect_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the handshake (`auth.token` or the `token` query parameter).
    #[error("missing token: send auth {{ token }} or query token")]
    MissingToken,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    #[error("token not valid yet")]
    NotYetValid,
    /// Not signed by the configured key.
    #[error("bad token signature")]
    BadSignature,
    /// `aud` is not `--jwt-audience`.
    #[error("token audience not accepted")]
    WrongAudience,
    /// `iss` is not `--jwt-issuer`.
    #[error("token issuer not accepted")]
    WrongIssuer,
    /// No `sub` that is a valid user id.
    #[error("token has no usable sub claim")]
    MissingSubject,
    /// The token's `sub` differs from the user id the socket gave.
    #[error("token is for another user than this socket's")]
    OtherUser,
    /// A claim the configuration requires is absent.
    #[error("token is missing the {0} claim")]
    MissingClaim(String),
    /// Not a JWT this gateway can read.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header has `crit`: extensions the token says must be understood (RFC 7515
    /// 4.1.11), and this gateway understands none.
    #[error("token header has crit: this gateway understands no critical header extension")]
    CriticalExtension,
}

/// The claims we read ourselves. `aud` and `iss` are checked here rather than by
/// jsonwebtoken, which lets a configured claim be absent or of any non-string type.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: f64,
    aud: Option<serde_json::Value>,
    iss: Option<serde_json::Value>,
    watchlist: Option<serde_json::Value>,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The user id, from `sub`.
    pub user: String,
    /// Unix seconds after which the token (and any socket it opened) stops being valid,
    /// leeway included.
    pub valid_until: u64,
    /// The `watchlist` claim, as sent: the users a `watch`-mode socket watches (checked by
    /// the socket handshake, like the ids sent with `--auth none`).
    pub watchlist: Option<serde_json::Value>,
}

/// Verifies browser tokens against one key.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    audience: Option<String>,
    issuer: Option<String>,
}

impl JwtVerifier {
    /// Builds the verifier from `--jwt-*` flags: a secret (HS256) or a public key (RS256/ES256).
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let secret = match (&config.jwt_secret, &config.jwt_secret_file) {
            (Some(s), None) => Some(s.as_bytes().to_vec()),
            (None, Some(path)) => {
                let mut bytes = read_file("--jwt-secret-file", path)?;
                while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                    bytes.pop();
                }
                Some(bytes)
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "give --jwt-secret or --jwt-secret-file, not both".into(),
                ))
            }
            (None, None) => None,
        };
        let (key, algorithm) = match (secret, &config.jwt_public_key_file) {
            (Some(secret), None) => {
                if secret.len() < 16 {
                    return Err(ConfigError::Invalid(
                        "the JWT secret must be at least 16 bytes".into(),
                    ));
                }
                (DecodingKey::from_secret(&secret), Algorithm::HS256)
            }
            (None, Some(path)) => {
                let pem = read_file("--jwt-public-key-file", path)?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (key, Algorithm::ES256)
                } else {
                    return Err(ConfigError::Invalid(format!(
                        "--jwt-public-key-file {}: not a PEM RSA or EC public key",
                        path.display()
                    )));
                }
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "give a JWT secret or a public key, not both".into(),
                ))
            }
            (None, None) => {
                return Err(ConfigError::Invalid(
                    "--auth jwt needs --jwt-secret, --jwt-secret-file or --jwt-public-key-file"
                        .into(),
                ))
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.jwt_leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_aud = false;
        Ok(Self {
            key,
            validation,
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
        })
    }

    /// The user and expiry of a valid token.
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                ErrorKind::InvalidAlgorithm => AuthError::Malformed(
                    "signed with an algorithm this gateway does not accept".into(),
                ),
                _ => AuthError::Malformed(e.to_string()),
            },
        )?;
        refuse_critical(token)?;
        let claims = data.claims;
        if let Some(want) = &self.audience {
            match &claims.aud {
                None => return Err(AuthError::MissingClaim("aud".into())),
                Some(aud) if !names(aud, want, true) => return Err(AuthError::WrongAudience),
                Some(_) => {}
            }
        }
        if let Some(want) = &self.issuer {
            match &claims.iss {
                None => return Err(AuthError::MissingClaim("iss".into())),
                Some(iss) if !names(iss, want, false) => return Err(AuthError::WrongIssuer),
                Some(_) => {}
            }
        }
        let user = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::MissingSubject)?;
        Ok(Verified {
            user,
            valid_until: (claims.exp.max(0.0) as u64).saturating_add(self.validation.leeway),
            watchlist: claims.watchlist,
        })
    }
}

/// Refuses a token whose header has `crit` at all, even `null` or an empty array (which the
/// RFC forbids): read from the header's JSON itself, where jsonwebtoken's `Header` would take
/// `null` for absent.
fn refuse_critical(token: &str) -> Result<(), AuthError> {
    let segment = token.split('.').next().unwrap_or_default();
    let json = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|e| AuthError::Malformed(format!("header: {e}")))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|e| AuthError::Malformed(format!("header: {e}")))?;
    if header.contains_key("crit") {
        return Err(AuthError::CriticalExtension);
    }
    Ok(())
}

/// Whether a claim is the string `want`, or (when `array_ok`, as for `aud`) an array of
/// strings holding it. Numbers, objects and mixed arrays never match.
fn names(claim: &serde_json::Value, want: &str, array_ok: bool) -> bool {
    match claim {
        serde_json::Value::String(s) => s == want,
        serde_json::Value::Array(items) if array_ok => {
            items.iter().all(serde_json::Value::is_string)
                && items.iter().any(|i| i.as_str() == Some(want))
        }
        _ => false,
    }
}

/// How browser handshakes are authenticated.
pub enum BrowserAuth {
    /// The client's `userId` is trusted.
    Trusted,
    /// A verified JWT names the user.
    Jwt(Box<JwtVerifier>),
}

impl BrowserAuth {
    /// `--auth` with its JWT key, audience, issuer and leeway.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Ok(match config.auth {
            AuthMode::None => Self::Trusted,
            AuthMode::Jwt => Self::Jwt(Box::new(JwtVerifier::from_config(config)?)),
        })
    }
}
#[cfg(test)]
mod tests {
    use clap::Parser;
    use sha2::Sha256;

    use super::*;

    #[test]
    fn a_token_with_crit_is_refused_whatever_it_lists() {
        let config = Config::parse_from([
            "gw",
            "--auth",
            "jwt",
            "--jwt-secret",
            "a-secret-of-enough-length",
        ]);
        let verifier = JwtVerifier::from_config(&config).unwrap();
        let claims = serde_json::json!({"sub": "alice", "exp": 4_000_000_000u64});
        let sign = |header: serde_json::Value| {
            let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
            let input = format!("{}.{}", b64(&header), b64(&claims));
            let mut mac =
                <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(b"a-secret-of-enough-length")
                    .unwrap();
            hmac::Mac::update(&mut mac, input.as_bytes());
            let tag = hmac::Mac::finalize(mac).into_bytes();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag))
        };
        let plain = sign(serde_json::json!({"alg": "HS256", "typ": "JWT"}));
        assert_eq!(verifier.verify(&plain).unwrap().user, "alice");
        for crit in [
            serde_json::json!(["exp-ext"]),
            serde_json::json!([]),
            serde_json::Value::Null,
        ] {
            let token = sign(serde_json::json!({"alg": "HS256", "crit": crit, "exp-ext": "x"}));
            assert_eq!(
                verifier.verify(&token),
                Err(AuthError::CriticalExtension),
                "crit {crit}"
            );
        }
    }
}
