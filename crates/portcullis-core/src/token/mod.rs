//! Bearer tokens: which issuer vouches for them, and whether to believe it.
//!
//! Verification is pure: keys are loaded beforehand by the policy loader and
//! the current time is a parameter, so expiry is tested with a chosen clock.
//! `jsonwebtoken` checks signatures, `iss` and `aud`; this module pins the
//! algorithm per issuer, picks the key, and checks the time claims itself.

mod remote;

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

pub use remote::{RefreshPolicy, RemoteKeys};

/// Largest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 8192;
/// Most groups taken from a token's groups claim.
pub const MAX_GROUPS: usize = 256;
/// Longest subject accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;
/// Most bytes of verified claims a principal keeps for conditions (their
/// JSON text): a payload larger than this keeps none, and conditions that
/// read claims are then false.
pub(crate) const MAX_CLAIMS_BYTES: usize = 8192;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The name (in the policy) of the issuer that vouched for it.
    pub issuer: Arc<str>,
    pub subject: Arc<str>,
    /// Groups from the token's groups claim; policy groups are added later.
    pub groups: Vec<String>,
    /// The token's `exp`, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// The verified claims, for conditions (`subject.claims`): kept only
    /// when the policy's conditions read them, and only up to
    /// [`MAX_CLAIMS_BYTES`]; empty otherwise.
    pub claims: Map<String, Value>,
}

impl Principal {
    /// A subject no token vouched for, asked about by a caller that may
    /// name any subject (`vouched_by` says which: the API, search, the
    /// CLI): no groups but the policy's, no claims, no expiry.
    pub fn named(vouched_by: &str, subject: impl Into<Arc<str>>) -> Self {
        Principal {
            issuer: Arc::from(vouched_by),
            subject: subject.into(),
            groups: Vec::new(),
            expires_at: u64::MAX,
            claims: Map::new(),
        }
    }
}

/// Why a token was not believed. Every variant is a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is larger than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token issuer is not trusted by this application")]
    UnknownIssuer,
    #[error("token algorithm {0} is not allowed for its issuer")]
    AlgorithmNotAllowed(String),
    #[error("no key of the issuer matches the token's key id")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token issuer does not match")]
    WrongIssuer,
    #[error("token lacks the required claim {0:?}")]
    MissingClaim(String),
    #[error("token is expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("token subject claim is missing or invalid")]
    BadSubject,
    #[error("token groups claim is invalid")]
    BadGroups,
}

impl TokenError {
    /// A short description safe to send to the client: it names no issuer,
    /// key or claim value.
    pub fn public_description(&self) -> &'static str {
        match self {
            TokenError::Expired => "the token is expired",
            TokenError::NotYetValid => "the token is not yet valid",
            _ => "the token is invalid",
        }
    }

    /// A stable label for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::TooLarge => "token_too_large",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::UnknownIssuer => "token_unknown_issuer",
            TokenError::AlgorithmNotAllowed(_) => "token_algorithm_not_allowed",
            TokenError::UnknownKey => "token_unknown_key",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::WrongAudience => "token_wrong_audience",
            TokenError::WrongIssuer => "token_wrong_issuer",
            TokenError::MissingClaim(_) => "token_missing_claim",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::BadSubject => "token_bad_subject",
            TokenError::BadGroups => "token_bad_groups",
        }
    }
}

/// Verification keys of one issuer.
pub enum KeySet {
    /// One key: an HMAC secret or a PEM public key.
    Single(DecodingKey),
    /// Keys from a JWKS file, chosen by `kid`.
    Jwks(Vec<JwkKey>),
    /// Keys from a JWKS URL, fetched and refreshed outside the engine.
    Remote(Arc<RemoteKeys>),
    /// No key at all: the key source could not be read, and the loader was
    /// asked to go on without it (`portcullis test`, whose cases never
    /// verify a token). Every token is refused, so a policy loaded this
    /// way fails closed. The text says why, for explanations.
    Unverifiable(String),
}

/// One key of a JWKS.
pub struct JwkKey {
    pub kid: Option<String>,
    /// The algorithm the JWK pins, if it names one.
    pub algorithm: Option<Algorithm>,
    pub key: DecodingKey,
}

/// A trusted issuer, compiled from the policy.
pub struct Issuer {
    pub name: Arc<str>,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySet,
    pub leeway_seconds: u64,
    pub subject_claim: String,
    /// Put before every subject of this issuer, so that two issuers'
    /// subjects can never name the same holder in the policy (`corp:`).
    pub subject_prefix: String,
    pub groups_claim: Option<String>,
    /// The policy groups this issuer's tokens may assert; any other group
    /// a token names is ignored.
    pub groups_allowed: Vec<NamePattern>,
    /// Set when Envoy's jwt_authn filter verifies this issuer's tokens: the
    /// metadata key of the payload. Raw tokens of this issuer are refused.
    pub jwt_authn_payload: Option<String>,
    /// Keep the verified claims in the principal: set by the loader when a
    /// condition reads `subject.claims`, so other policies copy nothing.
    pub keep_claims: bool,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// The issuers of a policy, found by their `iss` value.
#[derive(Debug, Default)]
pub struct Issuers {
    list: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
}

impl Issuers {
    /// Builds the set; `iss` values are unique (the loader checks).
    pub fn new(list: Vec<Issuer>) -> Self {
        let by_iss = list
            .iter()
            .enumerate()
            .map(|(i, issuer)| (issuer.issuer.clone(), i))
            .collect();
        Self { list, by_iss }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Index of the issuer named `name` in the policy.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|i| &*i.name == name)
    }

    pub fn get(&self, index: usize) -> Option<&Issuer> {
        self.list.get(index)
    }

    /// The time until which a principal vouched for by the issuer named
    /// `name` may act: its `exp` plus the issuer's leeway (no leeway for
    /// a principal no issuer of this policy vouched for).
    pub fn valid_until(&self, principal: &Principal) -> u64 {
        let leeway = self
            .list
            .iter()
            .find(|i| i.name == principal.issuer)
            .map_or(0, |i| i.leeway_seconds);
        principal.expires_at.saturating_add(leeway)
    }

    /// Keeps (or not) the verified claims of every issuer's principals.
    pub(crate) fn keep_claims(&mut self, keep: bool) {
        for issuer in &mut self.list {
            issuer.keep_claims = keep;
        }
    }

    /// The key sets fetched from URLs, to share them across reloads.
    pub fn remote_key_sets_mut(&mut self) -> impl Iterator<Item = &mut Arc<RemoteKeys>> {
        self.list
            .iter_mut()
            .filter_map(|issuer| match &mut issuer.keys {
                KeySet::Remote(remote) => Some(remote),
                _ => None,
            })
    }

    /// The key sets fetched from URLs.
    pub fn remote_key_sets(&self) -> impl Iterator<Item = &Arc<RemoteKeys>> {
        self.list.iter().filter_map(|issuer| match &issuer.keys {
            KeySet::Remote(remote) => Some(remote),
            _ => None,
        })
    }

    /// True when every key set fetched from a URL has been fetched once.
    pub fn remote_key_sets_loaded(&self) -> bool {
        self.list.iter().all(|issuer| match &issuer.keys {
            KeySet::Remote(remote) => remote.is_loaded(),
            _ => true,
        })
    }

    /// Verifies `token` against the issuers at `allowed` (indices into this set).
    pub fn verify(
        &self,
        allowed: &[usize],
        token: &str,
        now: u64,
    ) -> Result<Principal, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        check_compact_form(token)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenError::Malformed("unreadable or unsupported header"))?;
        // RFC 7515 4.1.11: a token whose `crit` names extensions the
        // recipient does not understand is invalid. Portcullis understands none.
        if header.crit.is_some() {
            return Err(TokenError::Malformed(
                "critical header extensions are not supported",
            ));
        }

        // The unverified `iss` only chooses the issuer whose keys are tried;
        // the signature check below then vouches for it.
        #[derive(Deserialize)]
        struct Unverified {
            iss: Option<String>,
        }
        let claims: Unverified = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| TokenError::Malformed("unreadable claims"))?;
        let iss = claims.iss.ok_or(TokenError::MissingClaim("iss".into()))?;
        let index = *self.by_iss.get(&iss).ok_or(TokenError::UnknownIssuer)?;
        if !allowed.contains(&index) {
            return Err(TokenError::UnknownIssuer);
        }
        let issuer = self.list.get(index).ok_or(TokenError::UnknownIssuer)?;
        if issuer.jwt_authn_payload.is_some() {
            // Envoy verifies this issuer's tokens; a raw one proves nothing here.
            return Err(TokenError::UnknownIssuer);
        }
        issuer.verify(&header, token, now)
    }
}

impl Issuer {
    fn verify(
        &self,
        header: &jsonwebtoken::Header,
        token: &str,
        now: u64,
    ) -> Result<Principal, TokenError> {
        let alg = header.alg;
        if !self.algorithms.contains(&alg) {
            return Err(TokenError::AlgorithmNotAllowed(format!("{alg:?}")));
        }
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // Time is checked below against the caller's clock, not the system's.
        validation.validate_exp = false;
        validation.validate_nbf = false;

        let claims = self
            .decode(alg, header.kid.as_deref(), token, &validation)?
            .claims;
        self.principal_from_claims(&claims, now)
    }

    /// The principal of a payload Envoy's jwt_authn filter verified and
    /// passed in dynamic metadata: its `iss` and `aud` are checked here,
    /// then everything a verified token's claims are checked for.
    pub(crate) fn principal_from_payload(
        &self,
        claims: &Map<String, Value>,
        now: u64,
    ) -> Result<Principal, TokenError> {
        match claims.get("iss") {
            Some(Value::String(iss)) if *iss == self.issuer => {}
            Some(_) => return Err(TokenError::WrongIssuer),
            None => return Err(TokenError::MissingClaim("iss".into())),
        }
        let accepted = |aud: &Value| {
            aud.as_str()
                .is_some_and(|a| self.audiences.iter().any(|x| x == a))
        };
        match claims.get("aud") {
            Some(Value::Array(auds)) if auds.iter().any(accepted) => {}
            Some(aud @ Value::String(_)) if accepted(aud) => {}
            Some(_) => return Err(TokenError::WrongAudience),
            None => return Err(TokenError::MissingClaim("aud".into())),
        }
        self.principal_from_claims(claims, now)
    }

    /// Time claims, subject and groups of verified claims.
    fn principal_from_claims(
        &self,
        claims: &Map<String, Value>,
        now: u64,
    ) -> Result<Principal, TokenError> {
        let expires_at =
            numeric_date(claims.get("exp")).ok_or(TokenError::MissingClaim("exp".into()))?;
        if now > expires_at.saturating_add(self.leeway_seconds) {
            return Err(TokenError::Expired);
        }
        for claim in ["nbf", "iat"] {
            if let Some(value) = claims.get(claim) {
                let at = numeric_date(Some(value))
                    .ok_or(TokenError::Malformed("time claim is not a number"))?;
                if at > now.saturating_add(self.leeway_seconds) {
                    return Err(TokenError::NotYetValid);
                }
            }
        }

        let subject = match claims.get(&self.subject_claim) {
            Some(Value::String(s)) if is_printable_name(s, MAX_SUBJECT_LEN) => {
                format!("{}{s}", self.subject_prefix)
            }
            _ => return Err(TokenError::BadSubject),
        };
        let named = match self.groups_claim.as_ref().and_then(|c| claims.get(c)) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(g)) => vec![g.as_str()],
            Some(Value::Array(items)) if items.len() <= MAX_GROUPS => items
                .iter()
                .map(|v| v.as_str().ok_or(TokenError::BadGroups))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(TokenError::BadGroups),
        };
        if !named.iter().all(|g| is_printable_name(g, MAX_SUBJECT_LEN)) {
            return Err(TokenError::BadGroups);
        }
        // A token may only speak for the groups its issuer is trusted with.
        let groups = named
            .into_iter()
            .filter(|g| self.groups_allowed.iter().any(|p| p.matches(g)))
            .map(str::to_owned)
            .collect();
        let claims = if self.keep_claims {
            bounded_claims(claims)
        } else {
            Map::new()
        };
        Ok(Principal {
            issuer: self.name.clone(),
            subject: subject.into(),
            groups,
            expires_at,
            claims,
        })
    }

    /// Checks the signature and claims of `token` with the key it names.
    fn decode(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        token: &str,
        validation: &Validation,
    ) -> Result<jsonwebtoken::TokenData<Map<String, Value>>, TokenError> {
        let decode = |key: &DecodingKey| {
            jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
                .map_err(map_jwt_error)
        };
        match &self.keys {
            KeySet::Single(key) if key.family() == alg.family() => decode(key),
            KeySet::Single(_) => Err(TokenError::AlgorithmNotAllowed(format!("{alg:?}"))),
            KeySet::Jwks(keys) => decode(select_jwk(keys, alg, kid)?),
            KeySet::Unverifiable(_) => Err(TokenError::UnknownKey),
            KeySet::Remote(remote) => {
                let keys = remote.current();
                match select_jwk(&keys, alg, kid) {
                    Ok(key) => decode(key),
                    // Perhaps the IdP rotated: the shell sees `UnknownKey`
                    // and asks its fetcher for a (rate-limited) refetch.
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// A copy of `claims` for conditions, or none when their JSON text is
/// longer than [`MAX_CLAIMS_BYTES`] (a verified token is bounded by
/// [`MAX_TOKEN_LEN`], a payload from jwt_authn is not).
fn bounded_claims(claims: &Map<String, Value>) -> Map<String, Value> {
    let size = serde_json::to_vec(claims).map_or(usize::MAX, |text| text.len());
    if size <= MAX_CLAIMS_BYTES {
        claims.clone()
    } else {
        Map::new()
    }
}

/// The key of a JWKS that a token signed with `alg`, naming `kid`, needs.
fn select_jwk<'k>(
    keys: &'k [JwkKey],
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<&'k DecodingKey, TokenError> {
    let usable =
        |k: &&JwkKey| k.key.family() == alg.family() && k.algorithm.is_none_or(|a| a == alg);
    let found = match kid {
        Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
        // Without a kid, only an unambiguous key set will do.
        None if keys.len() == 1 => keys.first(),
        None => None,
    };
    found
        .filter(usable)
        .map(|k| &k.key)
        .ok_or(TokenError::UnknownKey)
}

/// The signing keys of `set` usable with algorithms of `family`: keys for
/// encryption and keys of other types or that cannot be read are skipped.
pub fn jwk_keys(set: &jsonwebtoken::jwk::JwkSet, family: AlgorithmFamily) -> Vec<JwkKey> {
    use jsonwebtoken::jwk::PublicKeyUse;
    set.keys
        .iter()
        .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
        .filter_map(|jwk| {
            // `alg` is optional in a JWK (RFC 7517 4.4): a key without it
            // serves every algorithm the issuer pins for its key type.
            let key = DecodingKey::from_jwk(jwk).ok()?;
            (key.family() == family).then(|| JwkKey {
                kid: jwk.common.key_id.clone(),
                algorithm: jwk
                    .common
                    .key_algorithm
                    .and_then(|a| Algorithm::try_from(a).ok()),
                key,
            })
        })
        .collect()
}

/// Checks the JWS compact form: three base64url parts, a non-empty signature.
fn check_compact_form(token: &str) -> Result<(), TokenError> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(TokenError::Malformed("not three dot-separated parts"));
    }
    let base64url = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if parts.iter().any(|p| p.is_empty() || !base64url(p)) {
        return Err(TokenError::Malformed("a part is empty or not base64url"));
    }
    Ok(())
}

fn numeric_date(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    }
}

fn map_jwt_error(error: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAlgorithm => TokenError::AlgorithmNotAllowed("mismatch".into()),
        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        _ => TokenError::Malformed("rejected by the JWT decoder"),
    }
}

/// The algorithms Portcullis accepts in a policy, by their JOSE names.
pub(crate) fn parse_algorithm(name: &str) -> Option<Algorithm> {
    let alg = match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    };
    Some(alg)
}

/// Minimum HMAC secret length for `alg`: the hash output size (RFC 7518 3.2).
pub(crate) fn min_secret_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

/// True when every algorithm can be checked with a key of `family`.
pub(crate) fn algorithms_fit(algorithms: &[Algorithm], family: AlgorithmFamily) -> bool {
    algorithms.iter().all(|a| a.family() == family)
}

/// A name, or a prefix written with a trailing `*` (`partner-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    Exact(String),
    Prefix(String),
}

impl NamePattern {
    pub fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => NamePattern::Prefix(prefix.to_owned()),
            None => NamePattern::Exact(text.to_owned()),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(n) => n == name,
            NamePattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

/// True for a non-empty name of at most `max` bytes without control,
/// direction-override or invisible formatting characters: names reach logs,
/// the subject header and the policy's holder lookups, where such characters
/// would make two names look alike or reorder what a reader sees.
pub(crate) fn is_printable_name(name: &str, max: usize) -> bool {
    !name.is_empty() && name.len() <= max && !name.chars().any(is_invisible)
}

/// Control characters, and the format characters (Unicode category Cf) and
/// separators that render as nothing or change the direction of text.
fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}'                      // soft hyphen
            | '\u{034F}'                    // combining grapheme joiner
            | '\u{061C}'                    // Arabic letter mark
            | '\u{115F}' | '\u{1160}'       // Hangul fillers
            | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'       // Mongolian selectors and vowel separator
            | '\u{200B}'..='\u{200F}'       // zero-width characters, LRM, RLM
            | '\u{2028}'..='\u{202E}'       // line/paragraph separators, bidi embeddings and overrides
            | '\u{2060}'..='\u{206F}'       // word joiner, invisible operators, bidi isolates
            | '\u{3164}'                    // Hangul filler
            | '\u{FE00}'..='\u{FE0F}'       // variation selectors
            | '\u{FEFF}'                    // zero-width no-break space (BOM)
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'       // interlinear annotations
            | '\u{1D173}'..='\u{1D17A}'     // musical formatting
            | '\u{E0000}'..='\u{E0FFF}'     // tags and variation selectors supplement
        )
}
