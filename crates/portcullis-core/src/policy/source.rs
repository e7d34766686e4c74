//! The policy language as written: one serde type per YAML construct.
//!
//! These types say what a file may contain and nothing more; meaning
//! (resolving names, compiling templates, indexing grants) is given to them
//! by [`super::load`]. Every struct denies unknown fields, so a misspelled
//! key is an error rather than a silently ignored rule. The reference for
//! every field is `docs/policy-reference.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// One policy file. Every section is optional; a directory's files are merged.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    #[serde(default)]
    pub issuers: Vec<IssuerSpec>,
    #[serde(default)]
    pub applications: Vec<ApplicationSpec>,
    #[serde(default, deserialize_with = "unique_keys")]
    pub roles: BTreeMap<String, RoleSpec>,
    #[serde(default, deserialize_with = "unique_keys")]
    pub groups: BTreeMap<String, GroupSpec>,
    #[serde(default)]
    pub grants: Vec<GrantSpec>,
    #[serde(default)]
    pub denies: Vec<DenySpec>,
    /// The TCP connections allowed (checks without HTTP attributes);
    /// every other connection is denied.
    #[serde(default)]
    pub connections: ConnectionsSpec,
    /// Services that call the AuthZEN API, and what each may ask.
    #[serde(default)]
    pub callers: Vec<CallerSpec>,
    /// The keys that sign and verify events for asynchronous work (one
    /// file may say).
    #[serde(default)]
    pub events: Option<EventsSpec>,
}

/// Signed events (`portcullis event`, `/portcullis/v1/events/*`): the keys
/// envelopes are signed and verified with, and how long they live.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsSpec {
    /// The `kid` new envelopes are signed with; without it this replica
    /// only verifies.
    #[serde(default)]
    pub sign_with: Option<String>,
    /// Lifetime of an envelope whose signer asks for none.
    #[serde(default = "EventsSpec::default_lifetime")]
    pub default_lifetime_seconds: u64,
    /// Longest lifetime an envelope may be given (and how long a verifier
    /// must remember its id).
    #[serde(default = "EventsSpec::max_lifetime")]
    pub max_lifetime_seconds: u64,
    /// Every key an envelope may name: the signing key and, after a
    /// rotation, the earlier ones until their envelopes have expired.
    pub keys: Vec<EventKeySpec>,
}

impl EventsSpec {
    fn default_lifetime() -> u64 {
        3600
    }

    fn max_lifetime() -> u64 {
        86_400
    }
}

/// One event key: HMAC (`HS256`, `HS384`, `HS512`: a secret from the
/// environment or a file) or `EdDSA` (Ed25519 PEM files: the public key to
/// verify, the private key too to sign). Paths are relative to the policy
/// file that names them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventKeySpec {
    pub kid: String,
    pub algorithm: String,
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
}

/// A service that calls the AuthZEN API (`--api-listen`): how it proves who
/// it is (exactly one of `api_key`, `client_certificate`, `token_subject`)
/// and what it may ask beyond decisions about the user whose token it
/// presents.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CallerSpec {
    pub name: String,
    /// A shared secret the caller sends in `X-API-Key`; read from the
    /// environment or a file, never written here.
    #[serde(default)]
    pub api_key: Option<SecretSpec>,
    /// A client certificate (mTLS on the API listener) naming this DNS name.
    #[serde(default)]
    pub client_certificate: Option<ClientCertificateSpec>,
    /// The subject of a bearer token from one of the policy's issuers.
    #[serde(default)]
    pub token_subject: Option<String>,
    #[serde(default)]
    pub may: Vec<CallerPermission>,
}

/// Where a secret comes from: exactly one field is set. Paths are relative
/// to the policy file that names them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretSpec {
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

/// Which client certificates a caller is known by: exactly one of a DNS
/// name or a SPIFFE id among the certificate's subject alternative names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientCertificateSpec {
    /// A DNS name (dNSName SAN), matched exactly, case-insensitively.
    #[serde(default)]
    pub dns_name: Option<String>,
    /// A SPIFFE id (URI SAN) as Istio workloads present,
    /// `spiffe://cluster.local/ns/N/sa/S`, matched exactly.
    #[serde(default)]
    pub spiffe_id: Option<String>,
}

/// What a caller may ask beyond decisions about its own user's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CallerPermission {
    /// Evaluate decisions about any subject.
    AnySubject,
    /// Use the search endpoints.
    Search,
    /// Receive the reason (rule, grant) of a decision in its `context`.
    Explain,
    /// Sign events on behalf of any subject (without that user's token).
    Sign,
    /// Add and remove grants kept in the grants database
    /// (`POST /portcullis/v1/grants`).
    WriteGrants,
    /// Sign in to the console (`serve --console-listen`): see the served
    /// policy, the live decision log, explanations and searches.
    Console,
}

/// The `connections:` section: rules that allow TCP connections, as
/// Envoy's network ext_authz filter reports them (a CheckRequest without
/// HTTP attributes; Istio adds that filter to the TCP filter chains of every
/// workload a CUSTOM policy covers). A connection no rule allows is denied.
///
/// The section used to be one word (`allow` or `deny`) for every
/// connection. `allow` let through any connection Envoy did not recognise
/// as HTTP, including HTTP a client disguises (a leading CRLF), so a word
/// is refused with an error that says what to write instead.
#[derive(Debug, Default)]
pub(crate) struct ConnectionsSpec(pub Vec<ConnectionRuleSpec>);

impl<'de> Deserialize<'de> for ConnectionsSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RulesOrWord;
        impl<'de> Visitor<'de> for RulesOrWord {
            type Value = ConnectionsSpec;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of connection rules")
            }

            fn visit_str<E: serde::de::Error>(self, word: &str) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "connections is a list of rules, not {word:?}: a single word cannot tell a database port from HTTP a client disguised as TCP; list what to allow (`- name: ..., ports: [5432]`, docs/policy-reference.md#connections), or `[]` to deny every connection"
                )))
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(ConnectionsSpec::default())
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(ConnectionsSpec)
            }
        }
        deserializer.deserialize_any(RulesOrWord)
    }
}

/// One rule of `connections:`: a connection is allowed when every field
/// the rule sets matches it (any of the listed values).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConnectionRuleSpec {
    /// Unique; names the rule in the decision log.
    pub name: String,
    /// Destination ports (the original destination port under Istio);
    /// required, so no rule allows every port.
    pub ports: Vec<u16>,
    /// SPIFFE ids of the destination workload (mTLS only).
    #[serde(default)]
    pub destination_principals: Vec<String>,
    /// Namespaces of the destination workload's SPIFFE id (mTLS only).
    #[serde(default)]
    pub destination_namespaces: Vec<String>,
    /// SPIFFE ids of the client workload (mTLS only).
    #[serde(default)]
    pub source_principals: Vec<String>,
    /// Namespaces of the client workload's SPIFFE id (mTLS only).
    #[serde(default)]
    pub source_namespaces: Vec<String>,
}

/// A token issuer Portcullis trusts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssuerSpec {
    pub name: String,
    /// The exact `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one of them.
    pub audiences: Vec<String>,
    /// The only algorithms accepted, e.g. `[RS256]` (not with `jwt_authn`).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// The verification key (not with `jwt_authn`).
    #[serde(default)]
    pub key: Option<KeySpec>,
    /// Trust Envoy's jwt_authn filter: it verified the token and passed
    /// its payload in dynamic metadata; Portcullis verifies no token itself.
    #[serde(default)]
    pub jwt_authn: Option<JwtAuthnSpec>,
    #[serde(default = "IssuerSpec::default_leeway")]
    pub leeway_seconds: u64,
    #[serde(default = "IssuerSpec::default_subject_claim")]
    pub subject_claim: String,
    /// Put before each subject of this issuer (`partner:`); required when
    /// the policy trusts more than one issuer, so that their subjects can
    /// never name the same holder.
    #[serde(default)]
    pub subject_prefix: Option<String>,
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// The policy groups this issuer's tokens may assert (names, or
    /// prefixes ending in `*`); required with `groups_claim`.
    #[serde(default)]
    pub groups_allowed: Vec<String>,
}

impl IssuerSpec {
    fn default_leeway() -> u64 {
        30
    }

    fn default_subject_claim() -> String {
        "sub".to_owned()
    }
}

/// Where Envoy's jwt_authn filter put the verified payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtAuthnSpec {
    /// The provider's `payload_in_metadata` name.
    #[serde(default = "JwtAuthnSpec::default_payload_key")]
    pub payload_key: String,
}

impl JwtAuthnSpec {
    fn default_payload_key() -> String {
        "jwt_payload".to_owned()
    }
}

/// Where an issuer's verification key comes from: exactly one field is set.
/// Paths are relative to the policy file that names them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeySpec {
    /// HMAC secret in an environment variable.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// HMAC secret in a file (its content, trailing newline removed).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// A PEM public key (RSA, EC or Ed25519).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// A JSON Web Key Set file; tokens choose a key by `kid`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JSON Web Key Set URL: https, or http to a loopback address only.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How the `jwks_url` is refreshed.
    #[serde(default)]
    pub refresh: RefreshSpec,
}

/// Refresh bounds of a `jwks_url`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshSpec {
    /// Never refresh more often than this, whatever `Cache-Control` says.
    #[serde(default = "RefreshSpec::default_min")]
    pub min_seconds: u64,
    /// Refresh at least this often; also the interval without `max-age`.
    #[serde(default = "RefreshSpec::default_max")]
    pub max_seconds: u64,
    /// At most one extra fetch per this interval for unknown key ids.
    #[serde(default = "RefreshSpec::default_unknown_kid")]
    pub unknown_kid_seconds: u64,
}

impl RefreshSpec {
    fn default_min() -> u64 {
        60
    }

    fn default_max() -> u64 {
        3600
    }

    fn default_unknown_kid() -> u64 {
        30
    }
}

impl Default for RefreshSpec {
    fn default() -> Self {
        Self {
            min_seconds: Self::default_min(),
            max_seconds: Self::default_max(),
            unknown_kid_seconds: Self::default_unknown_kid(),
        }
    }
}

/// A protected application and its routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApplicationSpec {
    pub name: String,
    pub select: SelectSpec,
    /// Issuer names whose tokens this application accepts; all when absent.
    #[serde(default)]
    pub issuers: Option<Vec<String>>,
    #[serde(default)]
    pub mode: Mode,
    /// The upstream treats paths case-insensitively: match routes on the
    /// lower-cased path, so `/ADMIN` cannot sidestep a route for `/admin`.
    #[serde(default)]
    pub case_insensitive: bool,
    pub routes: Vec<RouteSpec>,
}

/// Whether an application's denies are enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Denies are enforced (the default).
    #[default]
    Enforce,
    /// Decide and record as usual, but let every request through: the safe
    /// way to roll out a new policy.
    DryRun,
}

/// How a request is attributed to an application. Any one selector suffices;
/// see `docs/policy-reference.md` for the precedence between them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SelectSpec {
    #[serde(default, deserialize_with = "unique_keys")]
    pub context_extensions: BTreeMap<String, String>,
    /// SPIFFE ids of the destination workload (`spiffe://td/ns/N/sa/S`), as
    /// the mesh's mTLS proves them: the client cannot choose these.
    #[serde(default)]
    pub destination_principals: Vec<String>,
    /// Namespaces of the destination workload, from its SPIFFE id.
    #[serde(default)]
    pub destination_namespaces: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub path_prefixes: Vec<String>,
}

/// Methods and a path template, mapped to a resource and an action.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteSpec {
    pub name: String,
    pub methods: Vec<String>,
    pub path: String,
    #[serde(default)]
    pub access: Access,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
    /// A CEL condition that must hold, after authentication and deny
    /// rules, for the route to allow (not on `public` routes).
    #[serde(default)]
    pub condition: Option<String>,
    /// Request headers this route makes visible to conditions as
    /// `context.headers`; no other header ever is.
    #[serde(default)]
    pub headers: Vec<String>,
}

/// What a route requires of the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// No token needed.
    Public,
    /// Any verified subject that no deny rule stops.
    Authenticated,
    /// A grant of a role holding the route's action on its resource (the default).
    #[default]
    Granted,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleSpec {
    #[serde(default)]
    pub includes: Vec<String>,
    #[serde(default)]
    pub actions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupSpec {
    #[serde(default)]
    pub members: Vec<String>,
}

/// A role held by a subject, a group or every authenticated subject on a
/// resource or pattern, optionally under a condition.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantSpec {
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// `true`: the grant holds for every subject with a valid token.
    #[serde(default)]
    pub authenticated: bool,
    pub role: String,
    pub resource: String,
    /// A CEL condition that must hold for the grant to count.
    #[serde(default)]
    pub condition: Option<String>,
}

/// A rule that denies, whatever is granted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DenySpec {
    pub name: String,
    /// The subject denied; with neither `subject` nor `group`, everyone.
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// Resource or pattern; every resource when absent.
    #[serde(default)]
    pub resource: Option<String>,
    /// Actions denied; every action when empty.
    #[serde(default)]
    pub actions: Vec<String>,
    /// Why, for the decision log.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A mapping whose keys must be unique: YAML parsers keep the last of two
/// equal keys, which would silently drop a role or group written twice.
fn unique_keys<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct UniqueKeys<V>(std::marker::PhantomData<V>);

    impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueKeys<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a mapping")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, V>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                }
                out.insert(key, value);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_map(UniqueKeys(std::marker::PhantomData))
}
