//! The envelope of a signed event: a compact JWS over who acted, what they
//! did to what, for whom, until when, and the SHA-256 of the message.
//!
//! Pure: time comes in as a parameter and the event id from the caller, so
//! signing and opening read no clock, file or randomness.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::policy::events::EventKeys;

/// The JOSE `typ` of an envelope. Required when opening, so that no other
/// JWT signed with the same key (a token of an issuer sharing an HMAC
/// secret, say) can pass for an event.
pub const ENVELOPE_TYPE: &str = "portcullis-event+jwt";

/// The `iss` of every envelope.
pub(crate) const ENVELOPE_ISSUER: &str = "portcullis";

/// Largest envelope opened; larger input is refused unread.
pub(crate) const MAX_ENVELOPE_BYTES: usize = 8 * 1024;

/// Longest event id: ids are made by [`super::new_event_id`] (32 hex
/// digits); any signer's are bounded.
pub(crate) const MAX_ID_LEN: usize = 64;

/// How far in the future an envelope's `iat` may be (clock skew between
/// the replica that signed and the one that opens).
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 60;

/// What an envelope says: its JWT claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventClaims {
    pub iss: String,
    /// The acting subject.
    pub sub: String,
    /// The policy issuer that vouched for the subject when it was signed.
    pub idp: String,
    /// The groups the subject's token asserted when it was signed (the
    /// policy's own groups are looked up when the event is judged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    pub action: String,
    pub resource: String,
    /// Who may consume it.
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    /// Unique: a verifier accepts each id once.
    pub jti: String,
    /// SHA-256 of the message, 64 lower-case hex digits.
    pub message_sha256: String,
}

/// An event to sign.
#[derive(Debug, Clone)]
pub struct Publish<'a> {
    pub subject: &'a str,
    pub idp: &'a str,
    pub groups: &'a [String],
    pub action: &'a str,
    pub resource: &'a str,
    pub audience: &'a str,
    pub message_sha256: [u8; 32],
    /// Seconds; the policy's default when `None`.
    pub lifetime: Option<u64>,
}

/// A signed envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub envelope: String,
    pub id: String,
    pub expires_at: u64,
}

/// Why an event cannot be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the policy names no key to sign events with (events.sign_with)")]
    NoSigningKey,
    #[error("a lifetime of {asked} seconds is over the policy's maximum of {max}")]
    LifetimeTooLong { asked: u64, max: u64 },
    #[error("a lifetime must be at least one second")]
    NoLifetime,
    #[error("the audience must be 1 to 256 printable characters")]
    BadAudience,
    #[error("the envelope could not be signed: {0}")]
    Crypto(String),
}

/// Why an envelope is refused. Every variant means: do not act on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the policy names no event keys (events)")]
    NoEventKeys,
    #[error("the envelope is not a compact JWS of at most {MAX_ENVELOPE_BYTES} bytes")]
    Malformed,
    #[error("the envelope's type is not {ENVELOPE_TYPE}")]
    WrongType,
    #[error("the envelope names no key id, or one the policy does not know")]
    UnknownKey,
    #[error("the envelope's signature does not verify with its key")]
    BadSignature,
    #[error("the envelope's claims are not an event's")]
    BadClaims,
    #[error("the envelope is for another audience")]
    WrongAudience,
    #[error("the envelope has expired")]
    Expired,
    #[error("the envelope was issued in the future")]
    NotYetValid,
    #[error("the envelope lives longer than the policy allows")]
    LifetimeTooLong,
    #[error("the message is not the one the envelope was signed over")]
    MessageMismatch,
    #[error("the envelope was already consumed (replayed)")]
    Replayed,
    #[error("too many unexpired events are remembered to refuse a replay; try again later")]
    ReplayCacheFull,
    #[error("this consumer holds its whole share of the replay memory (unexpired events it consumed); try again later")]
    ReplayCallerFull,
    #[error("the replay log cannot be written: {0}")]
    ReplayLog(String),
    #[error("the database that records consumed events cannot be reached; the event was not consumed: try again later")]
    ReplayUnavailable,
    #[error("the grants cannot be read now; the event was not consumed: try again later")]
    GrantsUnavailable,
}

impl Refusal {
    /// A stable code for logs and API answers.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NoEventKeys => "no_event_keys",
            Refusal::Malformed => "malformed",
            Refusal::WrongType => "wrong_type",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::BadClaims => "bad_claims",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::LifetimeTooLong => "lifetime_too_long",
            Refusal::MessageMismatch => "message_mismatch",
            Refusal::Replayed => "replayed",
            Refusal::ReplayCacheFull => "replay_cache_full",
            Refusal::ReplayCallerFull => "replay_caller_full",
            Refusal::ReplayLog(_) => "replay_log",
            Refusal::ReplayUnavailable => "replay_unavailable",
            Refusal::GrantsUnavailable => "grants_unavailable",
        }
    }
}

/// SHA-256 of `message`.
pub fn message_digest(message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(message).into()
}

/// `bytes` as lower-case hex digits: the one hex encoder (digests,
/// versions, ids, page tokens).
pub fn hex(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

/// Hex digits (either case) as bytes; `None` for anything else.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    base16ct::mixed::decode_vec(text).ok()
}

/// 64 hex digits (either case) as a digest.
pub fn parse_hex(text: &str) -> Option<[u8; 32]> {
    unhex(text)?.try_into().ok()
}

/// Whether `text` may be an audience: 1 to 256 printable ASCII characters.
pub fn is_audience(text: &str) -> bool {
    !text.is_empty() && text.len() <= 256 && text.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `id` may be an event id: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn is_event_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Signs `event` with the policy's signing key, as id `id`, at `now`.
pub fn sign(
    keys: &EventKeys,
    event: &Publish<'_>,
    id: &str,
    now: u64,
) -> Result<Signed, SignError> {
    let signing = keys.signing.as_ref().ok_or(SignError::NoSigningKey)?;
    let lifetime = event.lifetime.unwrap_or(keys.default_lifetime);
    if lifetime == 0 {
        return Err(SignError::NoLifetime);
    }
    if lifetime > keys.max_lifetime {
        return Err(SignError::LifetimeTooLong {
            asked: lifetime,
            max: keys.max_lifetime,
        });
    }
    if !is_audience(event.audience) {
        return Err(SignError::BadAudience);
    }
    let claims = EventClaims {
        iss: ENVELOPE_ISSUER.into(),
        sub: event.subject.into(),
        idp: event.idp.into(),
        groups: event.groups.to_vec(),
        action: event.action.into(),
        resource: event.resource.into(),
        aud: event.audience.into(),
        iat: now,
        exp: now.saturating_add(lifetime),
        jti: id.into(),
        message_sha256: hex(&event.message_sha256),
    };
    // The key's header is encoded once, when the policy compiles.
    let json = serde_json::to_vec(&claims).map_err(|e| SignError::Crypto(e.to_string()))?;
    let envelope = signing.sign_compact(&json);
    Ok(Signed {
        envelope,
        id: claims.jti,
        expires_at: claims.exp,
    })
}

/// Opens `envelope`: its key, signature, type, audience, lifetime and
/// message digest, at `now`. Replays are the caller's to refuse (see
/// the service's `events::replay`): an opened envelope is authentic, not yet unused.
pub fn open(
    keys: Option<&EventKeys>,
    envelope: &str,
    message_sha256: &[u8; 32],
    audience: &str,
    now: u64,
) -> Result<EventClaims, Refusal> {
    let keys = keys.ok_or(Refusal::NoEventKeys)?;
    if envelope.len() > MAX_ENVELOPE_BYTES || envelope.split('.').count() != 3 {
        return Err(Refusal::Malformed);
    }
    let header = jsonwebtoken::decode_header(envelope).map_err(|_| Refusal::Malformed)?;
    if header.typ.as_deref() != Some(ENVELOPE_TYPE) {
        return Err(Refusal::WrongType);
    }
    let key = header
        .kid
        .as_deref()
        .and_then(|kid| keys.verifying.get(kid))
        .ok_or(Refusal::UnknownKey)?;
    if header.alg != key.algorithm() {
        // The key decides the algorithm, never the envelope.
        return Err(Refusal::BadSignature);
    }
    // What jsonwebtoken::decode checked, with the key parsed at load: the
    // signature over `header.payload` first, then the claims.
    let (message, signature) = envelope.rsplit_once('.').ok_or(Refusal::Malformed)?;
    let (_, payload) = message.rsplit_once('.').ok_or(Refusal::Malformed)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| Refusal::Malformed)?;
    if !key.verifies(message.as_bytes(), &signature) {
        return Err(Refusal::BadSignature);
    }
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| Refusal::Malformed)?;
    let claims: EventClaims = serde_json::from_slice(&payload).map_err(|_| Refusal::BadClaims)?;
    if claims.iss != ENVELOPE_ISSUER || !is_event_id(&claims.jti) {
        return Err(Refusal::BadClaims);
    }
    if claims.aud != audience {
        return Err(Refusal::WrongAudience);
    }
    if claims.exp <= now {
        return Err(Refusal::Expired);
    }
    if claims.iat > now.saturating_add(MAX_CLOCK_SKEW_SECONDS) {
        return Err(Refusal::NotYetValid);
    }
    if claims.exp.saturating_sub(claims.iat) > keys.max_lifetime {
        return Err(Refusal::LifetimeTooLong);
    }
    if parse_hex(&claims.message_sha256) != Some(*message_sha256) {
        return Err(Refusal::MessageMismatch);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::events::{SigningKey, VerifyingKey};
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    const NOW: u64 = 1_800_000_000;
    const SECRET: &[u8] = b"an-hmac-secret-of-at-least-32-bytes!";

    fn ed25519_pems(seed: u8) -> (String, String) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let private = key
            .to_pkcs8_pem(Default::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let public = key
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap_or_else(|e| panic!("{e}"));
        (private.to_string(), public)
    }

    fn eddsa_keys() -> EventKeys {
        let (private, public) = ed25519_pems(7);
        EventKeys {
            signing: Some(
                SigningKey::ed25519_pem("ed", private.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
            ),
            verifying: [
                (
                    "ed".to_owned(),
                    VerifyingKey::ed25519_pem(public.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                ),
                (
                    "hs".to_owned(),
                    VerifyingKey::hmac(Algorithm::HS256, SECRET).unwrap_or_else(|e| panic!("{e}")),
                ),
            ]
            .into_iter()
            .collect(),
            default_lifetime: 60,
            max_lifetime: 3600,
        }
    }

    fn hmac_keys(algorithm: Algorithm) -> EventKeys {
        EventKeys {
            signing: Some(
                SigningKey::hmac("hs", algorithm, SECRET).unwrap_or_else(|e| panic!("{e}")),
            ),
            verifying: [(
                "hs".to_owned(),
                VerifyingKey::hmac(algorithm, SECRET).unwrap_or_else(|e| panic!("{e}")),
            )]
            .into_iter()
            .collect(),
            default_lifetime: 60,
            max_lifetime: 3600,
        }
    }

    const GROUPS: &[String] = &[];

    fn event() -> Publish<'static> {
        Publish {
            subject: "alice",
            idp: "idp",
            groups: GROUPS,
            action: "share",
            resource: "document:1",
            audience: "worker",
            message_sha256: message_digest(b"hello"),
            lifetime: None,
        }
    }

    fn open_at(keys: &EventKeys, envelope: &str, now: u64) -> Result<EventClaims, Refusal> {
        open(
            Some(keys),
            envelope,
            &message_digest(b"hello"),
            "worker",
            now,
        )
    }

    /// What jsonwebtoken itself wrote for the same claims and key.
    fn by_jsonwebtoken(
        signed: &Signed,
        algorithm: Algorithm,
        kid: &str,
        key: &EncodingKey,
    ) -> String {
        let claims = EventClaims {
            iss: ENVELOPE_ISSUER.into(),
            sub: "alice".into(),
            idp: "idp".into(),
            groups: Vec::new(),
            action: "share".into(),
            resource: "document:1".into(),
            aud: "worker".into(),
            iat: NOW,
            exp: signed.expires_at,
            jti: signed.id.clone(),
            message_sha256: hex(&message_digest(b"hello")),
        };
        let mut header = Header::new(algorithm);
        header.typ = Some(ENVELOPE_TYPE.into());
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, key).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_wire_format_is_jsonwebtokens() {
        // Ed25519 and HMAC signatures are deterministic: the same claims
        // and key give the same envelope, byte for byte.
        let (private, _) = ed25519_pems(7);
        let keys = eddsa_keys();
        let signed = sign(&keys, &event(), "id-1", NOW).unwrap_or_else(|e| panic!("{e}"));
        let key = EncodingKey::from_ed_pem(private.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            signed.envelope,
            by_jsonwebtoken(&signed, Algorithm::EdDSA, "ed", &key)
        );
        for algorithm in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let keys = hmac_keys(algorithm);
            let signed = sign(&keys, &event(), "id-2", NOW).unwrap_or_else(|e| panic!("{e}"));
            let key = EncodingKey::from_secret(SECRET);
            assert_eq!(
                signed.envelope,
                by_jsonwebtoken(&signed, algorithm, "hs", &key)
            );
            let claims = open_at(&keys, &signed.envelope, NOW).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(claims.jti, "id-2");
        }
    }

    #[test]
    fn a_signed_envelope_opens() {
        let keys = eddsa_keys();
        let signed = sign(&keys, &event(), "id-1", NOW).unwrap_or_else(|e| panic!("{e}"));
        let claims = open_at(&keys, &signed.envelope, NOW + 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((claims.sub.as_str(), claims.exp), ("alice", NOW + 60));
    }

    #[test]
    fn a_tampered_signature_is_refused() {
        let keys = eddsa_keys();
        let signed = sign(&keys, &event(), "id-1", NOW).unwrap_or_else(|e| panic!("{e}"));
        let (message, signature) = signed.envelope.rsplit_once('.').unwrap_or_default();
        let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap_or_default();
        bytes[0] ^= 1;
        let tampered = format!("{message}.{}", URL_SAFE_NO_PAD.encode(&bytes));
        assert_eq!(open_at(&keys, &tampered, NOW), Err(Refusal::BadSignature));
        // A signature of the wrong length, and one that is not base64url.
        let short = format!("{message}.{}", URL_SAFE_NO_PAD.encode(&bytes[..63]));
        assert_eq!(open_at(&keys, &short, NOW), Err(Refusal::BadSignature));
        let garbage = format!("{message}.!!!");
        assert_eq!(open_at(&keys, &garbage, NOW), Err(Refusal::Malformed));
        // Claims changed under the old signature.
        let (header, payload) = message.split_once('.').unwrap_or_default();
        let text = URL_SAFE_NO_PAD.decode(payload).unwrap_or_default();
        let text = String::from_utf8(text)
            .unwrap_or_default()
            .replace("alice", "mallory");
        let forged = format!("{header}.{}.{signature}", URL_SAFE_NO_PAD.encode(text));
        assert_eq!(open_at(&keys, &forged, NOW), Err(Refusal::BadSignature));
        // The HMAC tag too.
        let keys = hmac_keys(Algorithm::HS256);
        let signed = sign(&keys, &event(), "id-1", NOW).unwrap_or_else(|e| panic!("{e}"));
        let (message, _) = signed.envelope.rsplit_once('.').unwrap_or_default();
        let wrong = format!("{message}.{}", URL_SAFE_NO_PAD.encode([0u8; 32]));
        assert_eq!(open_at(&keys, &wrong, NOW), Err(Refusal::BadSignature));
    }

    #[test]
    fn an_unknown_kid_or_a_foreign_key_is_refused() {
        let keys = eddsa_keys();
        let other = EventKeys {
            signing: Some(
                SigningKey::ed25519_pem("nope", ed25519_pems(8).0.as_bytes())
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
            ..eddsa_keys()
        };
        let signed = sign(&other, &event(), "id-1", NOW).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            open_at(&keys, &signed.envelope, NOW),
            Err(Refusal::UnknownKey)
        );
        // A kid the policy knows, signed with another key of the same kind.
        let other = EventKeys {
            signing: Some(
                SigningKey::ed25519_pem("ed", ed25519_pems(8).0.as_bytes())
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
            ..eddsa_keys()
        };
        let signed = sign(&other, &event(), "id-1", NOW).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            open_at(&keys, &signed.envelope, NOW),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn the_key_decides_the_algorithm() {
        let keys = eddsa_keys();
        // HS256 under the EdDSA key's kid (signed with the "public" bytes
        // an attacker knows): refused before any HMAC is computed.
        let hs = EventKeys {
            signing: Some(
                SigningKey::hmac("ed", Algorithm::HS256, SECRET).unwrap_or_else(|e| panic!("{e}")),
            ),
            ..eddsa_keys()
        };
        let signed = sign(&hs, &event(), "id-1", NOW).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            open_at(&keys, &signed.envelope, NOW),
            Err(Refusal::BadSignature)
        );
        // HS384 under the HS256 key's kid, with the right secret.
        let hs384 = EventKeys {
            signing: Some(
                SigningKey::hmac("hs", Algorithm::HS384, SECRET).unwrap_or_else(|e| panic!("{e}")),
            ),
            ..eddsa_keys()
        };
        let signed = sign(&hs384, &event(), "id-1", NOW).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            open_at(&keys, &signed.envelope, NOW),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn time_and_shape_are_checked() {
        let keys = eddsa_keys();
        let signed = sign(&keys, &event(), "id-1", NOW).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            open_at(&keys, &signed.envelope, NOW + 60),
            Err(Refusal::Expired)
        );
        assert_eq!(
            open_at(&keys, &signed.envelope, NOW - MAX_CLOCK_SKEW_SECONDS - 1),
            Err(Refusal::NotYetValid)
        );
        assert_eq!(
            open(
                Some(&keys),
                &signed.envelope,
                &message_digest(b"other"),
                "worker",
                NOW
            ),
            Err(Refusal::MessageMismatch)
        );
        assert_eq!(
            open(
                Some(&keys),
                &signed.envelope,
                &message_digest(b"hello"),
                "other",
                NOW
            ),
            Err(Refusal::WrongAudience)
        );
        assert_eq!(
            open(None, &signed.envelope, &[0; 32], "worker", NOW),
            Err(Refusal::NoEventKeys)
        );
        assert_eq!(open_at(&keys, "a.b", NOW), Err(Refusal::Malformed));
        assert_eq!(open_at(&keys, "a.b.c", NOW), Err(Refusal::Malformed));
        let big = "a".repeat(MAX_ENVELOPE_BYTES) + ".b.c";
        assert_eq!(open_at(&keys, &big, NOW), Err(Refusal::Malformed));
    }

    #[test]
    fn claims_that_are_not_an_events_are_refused() {
        // Signed by the right key, but with a claim too many.
        let (private, _) = ed25519_pems(7);
        let key = EncodingKey::from_ed_pem(private.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ENVELOPE_TYPE.into());
        header.kid = Some("ed".into());
        let claims = serde_json::json!({ "iss": "portcullis", "extra": 1 });
        let envelope =
            jsonwebtoken::encode(&header, &claims, &key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            open_at(&eddsa_keys(), &envelope, NOW),
            Err(Refusal::BadClaims)
        );
        // No typ: any other JWT of the same key.
        header.typ = Some("JWT".into());
        let envelope =
            jsonwebtoken::encode(&header, &claims, &key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            open_at(&eddsa_keys(), &envelope, NOW),
            Err(Refusal::WrongType)
        );
    }
}
