//! The services that call the AuthZEN API, as the policy's `callers:`
//! section names them: how each proves who it is and what it may ask.
//!
//! An API key is kept only as its SHA-256 digest, and a presented key is
//! compared with every caller's digest in constant time, all of them every
//! time, so neither the key nor which caller it belongs to leaks through
//! timing. A client certificate (the TLS layer has already verified it
//! against the client CA) is matched by a DNS name among its subject
//! alternative names, exactly and case-insensitively, never through a
//! wildcard the certificate presents (`*.svc.internal` names no caller), or
//! by a SPIFFE id among its URI names, exactly; a bearer token by its
//! verified subject.

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
    /// Signing in to the console, which shows the served policy, the live
    /// decision log, explanations of any request and searches.
    pub console: bool,
}

/// How a caller proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum CallerCredential {
    /// SHA-256 of the key it sends in `X-API-Key`.
    ApiKey([u8; 32]),
    /// A client certificate naming this DNS name (lower case).
    ClientCertificate { dns_name: String },
    /// A client certificate naming this SPIFFE id (a URI SAN).
    SpiffeId(String),
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
            CallerCredential::SpiffeId(id) => write!(f, "SpiffeId({id:?})"),
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

    /// The caller a verified client certificate names, by the DNS names
    /// and URIs among its subject alternative names. A presented DNS name
    /// with a wildcard names nobody: a caller is one name, exactly.
    pub fn by_certificate<'n>(
        &self,
        dns_names: impl IntoIterator<Item = &'n str> + Clone,
        uris: impl IntoIterator<Item = &'n str> + Clone,
    ) -> Option<&Caller> {
        self.list.iter().find(|c| match &c.credential {
            CallerCredential::ClientCertificate { dns_name } => {
                dns_names.clone().into_iter().any(|presented| {
                    !presented.contains('*') && presented.eq_ignore_ascii_case(dns_name)
                })
            }
            CallerCredential::SpiffeId(id) => uris.clone().into_iter().any(|uri| uri == id),
            _ => false,
        })
    }
}

/// Checks a SPIFFE id as the SPIFFE standard writes it:
/// `spiffe://` a lower-case trust domain, then a path of non-empty
/// segments of letters, digits, `.`, `-` and `_` (no `.` or `..` segment),
/// no query, fragment, port or user.
pub(crate) fn check_spiffe_id(id: &str) -> Result<(), &'static str> {
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or("it must start with spiffe://")?;
    let (domain, path) = rest.split_once('/').ok_or("it has no path")?;
    if domain.is_empty()
        || !domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Err("the trust domain must be lower-case letters, digits, '-', '.' and '_'");
    }
    if id.len() > 2048 {
        return Err("it is longer than 2048 bytes");
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err("a path segment is empty, '.' or '..'");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(
                "a path segment holds a character other than letters, digits, '-', '.' and '_'",
            );
        }
    }
    Ok(())
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

    #[test]
    fn certificates_match_one_name_exactly() {
        let callers = Callers::new(vec![
            Caller {
                name: "gateway".into(),
                credential: CallerCredential::ClientCertificate {
                    dns_name: "gateway.svc.internal".into(),
                },
                may: Permissions::default(),
            },
            Caller {
                name: "mesh".into(),
                credential: CallerCredential::SpiffeId(
                    "spiffe://cluster.local/ns/shop/sa/checkout".into(),
                ),
                may: Permissions::default(),
            },
        ]);
        let named = |dns: &[&str], uris: &[&str]| {
            callers
                .by_certificate(dns.iter().copied(), uris.iter().copied())
                .map(|c| c.name.clone())
        };
        assert_eq!(
            named(&["GATEWAY.svc.internal"], &[]),
            Some("gateway".into())
        );
        assert_eq!(named(&["*.svc.internal"], &[]), None);
        assert_eq!(named(&["gateway.svc.internal.evil"], &[]), None);
        assert_eq!(
            named(&[], &["spiffe://cluster.local/ns/shop/sa/checkout"]),
            Some("mesh".into())
        );
        assert_eq!(
            named(&[], &["spiffe://cluster.local/ns/shop/sa/checkout2"]),
            None
        );
        assert_eq!(
            named(&[], &["SPIFFE://cluster.local/ns/shop/sa/checkout"]),
            None
        );
        assert!(check_spiffe_id("spiffe://cluster.local/ns/a/sa/b").is_ok());
        for bad in [
            "spiffe://Cluster.local/ns/a",
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns//a",
            "spiffe://cluster.local/ns/../a",
            "spiffe://cluster.local/ns/a?x",
            "https://cluster.local/ns/a",
        ] {
            assert!(check_spiffe_id(bad).is_err(), "{bad}");
        }
    }
}
