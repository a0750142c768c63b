//! Telling callers apart: by API key (`authorization: Bearer <key>`), or by the client
//! certificate of an mTLS connection, or not at all (the anonymous caller).

use std::{collections::HashMap, sync::Arc};

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tonic::{
    codegen::http::{Extensions, HeaderMap},
    transport::server::TlsConnectInfo,
    Status,
};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use super::{check_name, parse_file, unnamed, Caller, Entry};
use crate::{
    config::{read_file, Config, ConfigError},
    idle::GrpcConn,
};

/// Shortest API key: as for JWT secrets, a key that can be guessed is no key.
pub const MIN_KEY_BYTES: usize = 16;

/// How the gRPC port knows who calls.
enum Mode {
    /// Nobody is told apart: every call is the anonymous caller.
    Open,
    /// By API key; digests in the order of `callers`.
    Keys {
        digests: Vec<[u8; 32]>,
        callers: Vec<Arc<Caller>>,
    },
    /// By the client certificate (mTLS): mapped by `--grpc-client-callers-file`, or else
    /// every certificate the CA signed is a caller named after it, allowed everything.
    Certs {
        mapped: Option<HashMap<String, Arc<Caller>>>,
    },
}

/// The callers the gRPC port knows.
pub struct Callers {
    mode: Mode,
    anonymous: Arc<Caller>,
}

impl Callers {
    /// From `--api-key`, `--api-keys-file`, `--grpc-client-ca` and
    /// `--grpc-client-callers-file`.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let mut entries: Vec<Entry> = config
            .api_keys
            .iter()
            .map(|key| Entry {
                identity: key.clone(),
                caller: Caller::everything(&unnamed(key)),
                named: false,
            })
            .collect();
        if let Some(path) = &config.api_keys_file {
            let what = format!("--api-keys-file {}", path.display());
            let file = read_text("--api-keys-file", path)?;
            let before = entries.len();
            entries.extend(parse_file(&what, &file)?);
            if entries.len() == before {
                return Err(ConfigError::Invalid(format!("{what}: no keys in it")));
            }
        }
        let certs = match &config.grpc_client_callers_file {
            Some(path) if !entries.is_empty() => {
                return Err(ConfigError::Invalid(format!(
                    "--grpc-client-callers-file {}: callers are named by their API keys already; give keys or certificate names, not both",
                    path.display()
                )))
            }
            Some(path) => {
                let what = format!("--grpc-client-callers-file {}", path.display());
                let file = read_text("--grpc-client-callers-file", path)?;
                Some(by_identity(parse_file(&what, &file)?, &what)?)
            }
            None => None,
        };
        let mode = if !entries.is_empty() {
            keys(entries)?
        } else if config.grpc_client_ca.is_some() {
            Mode::Certs { mapped: certs }
        } else {
            Mode::Open
        };
        Ok(Self {
            mode,
            anonymous: Caller::anonymous(),
        })
    }

    /// Whether calls are authenticated at all.
    pub fn is_enabled(&self) -> bool {
        !matches!(self.mode, Mode::Open)
    }

    /// What to warn about at start: callers allowed everything without saying so.
    pub fn warnings(&self) -> Vec<String> {
        match &self.mode {
            Mode::Open => vec![
                "no --api-key: any process that reaches the gRPC port can send messages".into(),
            ],
            Mode::Keys { callers, .. } => {
                let names = implicit(callers.iter());
                if names.is_empty() {
                    return vec![];
                }
                vec![format!(
                    "API keys without allow= may call every RPC (DisconnectUser, Broadcast, WatchPresence included): {}; give each key a line `KEY name=NAME allow=...` in --api-keys-file",
                    names.join(", ")
                )]
            }
            Mode::Certs { mapped: None } => vec![
                "every client certificate --grpc-client-ca signed may call every RPC; name callers and their permissions with --grpc-client-callers-file".into(),
            ],
            Mode::Certs {
                mapped: Some(mapped),
            } => {
                let names = implicit(mapped.values());
                if names.is_empty() {
                    return vec![];
                }
                vec![format!(
                    "client certificates without allow= may call every RPC: {}",
                    names.join(", ")
                )]
            }
        }
    }

    /// Who sent a call with these headers over this connection; the error is the status to
    /// answer with.
    pub fn identify(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<Arc<Caller>, Status> {
        match &self.mode {
            Mode::Open => Ok(self.anonymous.clone()),
            Mode::Keys { digests, callers } => {
                let key = bearer(headers)?;
                matching(digests, key.trim())
                    .map(|i| callers[i].clone())
                    .ok_or_else(|| Status::unauthenticated("API key not accepted"))
            }
            Mode::Certs { mapped } => {
                let der = extensions
                    .get::<TlsConnectInfo<GrpcConn>>()
                    .and_then(TlsConnectInfo::peer_certs)
                    .and_then(|certs| certs.first().cloned())
                    .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
                let names = cert_names(&der)?;
                match mapped {
                    None => Ok(Arc::new(Caller::everything(&cert_caller_name(&names)))),
                    Some(mapped) => names
                        .iter()
                        .find_map(|n| mapped.get(n).cloned())
                        .ok_or_else(|| {
                            Status::permission_denied(format!(
                                "client certificate {} is not a known caller (--grpc-client-callers-file)",
                                names.join(", ")
                            ))
                        }),
                }
            }
        }
    }
}

/// The names of callers allowed everything without an `allow=`, sorted, once each.
fn implicit<'a>(callers: impl Iterator<Item = &'a Arc<Caller>>) -> Vec<&'a str> {
    let mut names: Vec<&str> = callers.filter(|c| !c.explicit).map(|c| &*c.name).collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The key of `authorization: Bearer <key>`.
fn bearer(headers: &HeaderMap) -> Result<&str, Status> {
    let header = headers
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <api key>"))?;
    header
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or_else(|| Status::unauthenticated("authorization must be Bearer <api key>"))
}

/// The index of the digest of `key`; the time taken does not depend on which one matched.
fn matching(digests: &[[u8; 32]], key: &str) -> Option<usize> {
    let digest: [u8; 32] = Sha256::digest(key).into();
    let mut found = subtle::Choice::from(0);
    let mut index = 0u64;
    for (i, d) in digests.iter().enumerate() {
        let hit = d.ct_eq(&digest);
        index.conditional_assign(&(i as u64), hit);
        found |= hit;
    }
    bool::from(found).then_some(index as usize)
}

/// Key entries as the keys mode: at least [`MIN_KEY_BYTES`] each, no key twice, and lines
/// naming the same caller (two keys while one is rotated out) agreeing on what it may do.
fn keys(entries: Vec<Entry>) -> Result<Mode, ConfigError> {
    let mut by_name: HashMap<Arc<str>, Arc<Caller>> = HashMap::new();
    let mut digests = Vec::with_capacity(entries.len());
    let mut callers = Vec::with_capacity(entries.len());
    for Entry {
        identity, caller, ..
    } in entries
    {
        if identity.len() < MIN_KEY_BYTES {
            return Err(ConfigError::Invalid(format!(
                "API key {} is {} bytes; use at least {MIN_KEY_BYTES}",
                caller.name,
                identity.len()
            )));
        }
        let digest: [u8; 32] = Sha256::digest(&identity).into();
        if digests.contains(&digest) {
            return Err(ConfigError::Invalid(format!(
                "API key {} is given twice",
                unnamed(&identity)
            )));
        }
        digests.push(digest);
        callers.push(shared(&mut by_name, caller)?);
    }
    Ok(Mode::Keys { digests, callers })
}

/// Certificate entries by identity; a line without `name=` names the caller after the
/// identity when that is a valid name.
fn by_identity(
    entries: Vec<Entry>,
    what: &str,
) -> Result<HashMap<String, Arc<Caller>>, ConfigError> {
    if entries.is_empty() {
        return Err(ConfigError::Invalid(format!("{what}: no callers in it")));
    }
    let mut by_name = HashMap::new();
    let mut mapped = HashMap::new();
    for Entry {
        identity,
        mut caller,
        named,
    } in entries
    {
        if !named && check_name(&identity).is_ok() {
            caller.name = identity.as_str().into();
        }
        let caller = shared(&mut by_name, caller)?;
        if mapped.insert(identity.clone(), caller).is_some() {
            return Err(ConfigError::Invalid(format!(
                "{what}: {identity} is given twice"
            )));
        }
    }
    Ok(mapped)
}

/// The one shared caller of this name: a second line naming it must say the same.
fn shared(
    by_name: &mut HashMap<Arc<str>, Arc<Caller>>,
    caller: Caller,
) -> Result<Arc<Caller>, ConfigError> {
    match by_name.get(&caller.name) {
        Some(first) if **first == caller => Ok(first.clone()),
        Some(_) => Err(ConfigError::Invalid(format!(
            "caller {} is given twice with different allow= or shares",
            caller.name
        ))),
        None => {
            let caller = Arc::new(caller);
            by_name.insert(caller.name.clone(), caller.clone());
            Ok(caller)
        }
    }
}

/// A certificate's subject common names, then its DNS, URI and email alternative names.
fn cert_names(der: &[u8]) -> Result<Vec<String>, Status> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|_| Status::unauthenticated("client certificate cannot be read"))?;
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        names.extend(san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                Some((*s).to_owned())
            }
            _ => None,
        }));
    }
    Ok(names)
}

/// The name of an unmapped certificate's caller: its first name that is a valid caller
/// name, or a digest of its names.
fn cert_caller_name(names: &[String]) -> String {
    names
        .iter()
        .find(|n| check_name(n).is_ok())
        .cloned()
        .unwrap_or_else(|| unnamed(&names.join(",")))
}

/// A UTF-8 file named by `what`.
fn read_text(what: &'static str, path: &std::path::Path) -> Result<String, ConfigError> {
    String::from_utf8(read_file(what, path)?)
        .map_err(|_| ConfigError::Invalid(format!("{what} {}: not UTF-8", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly_whichever_is_given() {
        let digests: Vec<[u8; 32]> = ["first-key-0123456789", "second-key-0123456789"]
            .iter()
            .map(|k| Sha256::digest(k).into())
            .collect();
        assert_eq!(matching(&digests, "first-key-0123456789"), Some(0));
        assert_eq!(matching(&digests, "second-key-0123456789"), Some(1));
        assert_eq!(matching(&digests, "second-key-012345678"), None);
        assert_eq!(matching(&[], "first-key-0123456789"), None);
    }

    #[test]
    fn short_keys_and_conflicting_lines_are_refused() {
        let entry = |line: &str| parse_file("f", line).unwrap().remove(0);
        let err = |entries: Vec<Entry>| keys(entries).err().unwrap().to_string();
        assert!(err(vec![entry("short name=a")]).contains("API key a is 5 bytes"));
        assert!(err(vec![
            entry("k-0123456789abcdef name=a allow=*"),
            entry("k-0123456789abcdef name=b allow=*"),
        ])
        .contains("given twice"));
        assert!(err(vec![
            entry("k-0123456789abcdef name=a allow=*"),
            entry("k-fedcba9876543210 name=a allow=SendDirect"),
        ])
        .contains("caller a is given twice with different"));
        let Mode::Keys { callers, .. } = keys(vec![
            entry("k-0123456789abcdef name=a allow=SendDirect"),
            entry("k-fedcba9876543210 name=a allow=SendDirect"),
        ])
        .unwrap() else {
            panic!("keys mode");
        };
        assert!(
            Arc::ptr_eq(&callers[0], &callers[1]),
            "one caller, two keys"
        );
    }

    #[test]
    fn certificate_names_come_from_the_subject_and_alternative_names() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["analytics.internal".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "analytics batch");
        let cert = params.self_signed(&key).unwrap();
        let names = cert_names(cert.der()).unwrap();
        assert_eq!(names, ["analytics batch", "analytics.internal"]);
        assert_eq!(cert_caller_name(&names), "analytics.internal");
    }
}
