//! The services that call the AuthZEN API, as the policy's `callers:`
//! section names them: how each proves who it is and what it may ask.
//!
//! An API key is kept only as its SHA-256 digest, and a presented key is
//! compared with every caller's digest in constant time, all of them every
//! time, so neither the key nor which caller it belongs to leaks through
//! timing. A client certificate is matched by a DNS name among its subject
//! alternative names (the TLS layer has already verified it against the
//! client CA); a bearer token by its verified subject.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a caller may ask beyond decisions about the user whose token it
/// presents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Decisions about any subject.
    pub any_subject: bool,
    /// The search endpoints.
    pub search: bool,
    /// The reason (rule, grant) of a decision in its `context`.
    pub explain: bool,
    /// Signing events on behalf of any subject.
    pub sign: bool,
    /// Writing grants kept in the grants database.
    pub write_grants: bool,
}

/// How a caller proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum CallerCredential {
    /// SHA-256 of the key it sends in `X-API-Key`.
    ApiKey([u8; 32]),
    /// A client certificate naming this DNS name (lower case).
    ClientCertificate { dns_name: String },
    /// A verified bearer token whose subject is this one.
    TokenSubject(String),
}

impl std::fmt::Debug for CallerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Not even the digest: it would let an offline guess be checked.
            CallerCredential::ApiKey(_) => f.write_str("ApiKey(..)"),
            CallerCredential::ClientCertificate { dns_name } => {
                write!(f, "ClientCertificate({dns_name:?})")
            }
            CallerCredential::TokenSubject(s) => write!(f, "TokenSubject({s:?})"),
        }
    }
}

/// One caller of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub credential: CallerCredential,
    pub may: Permissions,
}

/// Every caller the policy names.
#[derive(Debug, Default)]
pub struct Callers {
    list: Vec<Caller>,
}

/// The digest an API key is kept and compared as.
pub fn api_key_digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl Callers {
    pub fn new(list: Vec<Caller>) -> Self {
        Self { list }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Caller> {
        self.list.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The caller whose API key is `presented`. Every caller's digest is
    /// compared, in constant time, whatever matched before.
    pub fn by_api_key(&self, presented: &[u8]) -> Option<&Caller> {
        let digest = api_key_digest(presented);
        let mut found = None;
        for caller in &self.list {
            if let CallerCredential::ApiKey(expected) = &caller.credential {
                if bool::from(expected[..].ct_eq(&digest[..])) {
                    found = Some(caller);
                }
            }
        }
        found
    }

    /// The caller known by the subject of a verified bearer token.
    pub fn by_token_subject(&self, subject: &str) -> Option<&Caller> {
        self.list
            .iter()
            .find(|c| matches!(&c.credential, CallerCredential::TokenSubject(s) if s == subject))
    }

    /// The callers known by a client certificate, with the DNS name each
    /// certificate must carry.
    pub fn by_client_certificate(&self) -> impl Iterator<Item = (&str, &Caller)> {
        self.list.iter().filter_map(|c| match &c.credential {
            CallerCredential::ClientCertificate { dns_name } => Some((dns_name.as_str(), c)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_match_by_digest_only() {
        let callers = Callers::new(vec![
            Caller {
                name: "a".into(),
                credential: CallerCredential::ApiKey(api_key_digest(b"key-of-a-0123456789")),
                may: Permissions::default(),
            },
            Caller {
                name: "b".into(),
                credential: CallerCredential::ApiKey(api_key_digest(b"key-of-b-0123456789")),
                may: Permissions {
                    search: true,
                    ..Permissions::default()
                },
            },
        ]);
        assert_eq!(
            callers
                .by_api_key(b"key-of-b-0123456789")
                .map(|c| c.name.as_str()),
            Some("b")
        );
        assert!(callers.by_api_key(b"key-of-b-012345678").is_none());
        assert!(callers.by_api_key(b"").is_none());
        assert!(!format!("{callers:?}")
            .contains(&format!("{:?}", api_key_digest(b"key-of-a-0123456789"))));
    }
}
