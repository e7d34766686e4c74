//! The `events:` section: event keys (read beforehand, see [`super::keys`]),
//! the signing key, and envelope lifetimes.

use super::keys::EventKeyMaterial;
use super::*;
use crate::policy::events::{EventKeys, SigningKey, VerifyingKey};
use crate::policy::source::{EventKeySpec, EventsSpec};

/// Shortest HMAC event secret accepted: the hash's own strength needs at
/// least 256 bits.
const MIN_EVENT_SECRET_BYTES: usize = 32;

/// Longest lifetime an envelope may be given: a verifier remembers every
/// id it accepted until the envelope expires.
const MAX_LIFETIME_SECONDS: u64 = 7 * 86_400;

/// Longest key id.
const MAX_KID_LEN: usize = 128;

impl Compiler<'_> {
    /// The one `events:` section, compiled; `None` when no file has one.
    pub(super) fn events(&mut self) -> Option<EventKeys> {
        let mut found: Option<(usize, Origin)> = None;
        for (f, file) in self.files.iter().enumerate() {
            if file.doc.events.is_none() {
                continue;
            }
            let at = [Step::Key("events")];
            let here = (f, self.line(f, &at));
            match found {
                Some((_, first)) => {
                    let first = self.origin(first);
                    self.error(f, &at, format!("events is already set at {first}"));
                }
                None => found = Some((f, here)),
            }
        }
        let (f, _) = found?;
        let files = self.files;
        let spec = files[f].doc.events.as_ref()?;
        self.compile_events(f, spec)
    }

    fn compile_events(&mut self, f: usize, spec: &EventsSpec) -> Option<EventKeys> {
        let at = |key: &'static str| [Step::Key("events"), Step::Key(key)];
        let mut ok = true;
        if spec.max_lifetime_seconds == 0 || spec.max_lifetime_seconds > MAX_LIFETIME_SECONDS {
            self.error(
                f,
                &at("max_lifetime_seconds"),
                format!("max_lifetime_seconds must be between 1 and {MAX_LIFETIME_SECONDS}"),
            );
            ok = false;
        }
        if spec.default_lifetime_seconds == 0
            || spec.default_lifetime_seconds > spec.max_lifetime_seconds
        {
            self.error(
                f,
                &at("default_lifetime_seconds"),
                "default_lifetime_seconds must be at least 1 and at most max_lifetime_seconds",
            );
            ok = false;
        }
        if spec.keys.is_empty() {
            self.error(f, &at("keys"), "events needs at least one key");
            ok = false;
        }
        let mut verifying = HashMap::new();
        let mut signers: HashMap<String, SigningKey> = HashMap::new();
        for (i, key) in spec.keys.iter().enumerate() {
            let where_ = [Step::Key("events"), Step::Key("keys"), Step::Index(i)];
            if key.kid.is_empty()
                || key.kid.len() > MAX_KID_LEN
                || !key.kid.bytes().all(|b| b.is_ascii_graphic())
            {
                self.error(
                    f,
                    &where_,
                    format!("kid must be 1 to {MAX_KID_LEN} printable ASCII characters"),
                );
                ok = false;
                continue;
            }
            if verifying.contains_key(&key.kid) {
                self.error(f, &where_, format!("kid {:?} is defined twice", key.kid));
                ok = false;
                continue;
            }
            let material = match self.event_keys.remove(&(f, i)) {
                Some(Ok(material)) => material,
                Some(Err(unreadable)) if self.unreadable == UnreadableKeys::Unverifiable => {
                    // The case runner never signs or verifies an event.
                    self.warnings.push(Diagnostic {
                        file: self.files[f].path.to_path_buf(),
                        line: Some(self.line(f, &where_)),
                        message: format!("event key {:?}: {unreadable}; events are off", key.kid),
                    });
                    return None;
                }
                Some(Err(unreadable)) => {
                    self.error(f, &where_, format!("event key {:?}: {unreadable}", key.kid));
                    ok = false;
                    continue;
                }
                None => {
                    self.error(f, &where_, "the event key was not read");
                    ok = false;
                    continue;
                }
            };
            match compile_key(key, &material) {
                Ok((verify, sign)) => {
                    self.key_material.update(key.kid.as_bytes());
                    self.key_material.update([0]);
                    for part in [
                        &material.secret,
                        &material.public_pem,
                        &material.private_pem,
                    ] {
                        self.key_material
                            .update(part.as_deref().unwrap_or_default());
                        self.key_material.update([0]);
                    }
                    verifying.insert(key.kid.clone(), verify);
                    if let Some(sign) = sign {
                        signers.insert(key.kid.clone(), sign);
                    }
                }
                Err(message) => {
                    self.error(f, &where_, format!("event key {:?}: {message}", key.kid));
                    ok = false;
                }
            }
        }
        let signing = match &spec.sign_with {
            None => None,
            Some(kid) => match signers.remove(kid) {
                Some(key) => Some(key),
                None => {
                    let why = if verifying.contains_key(kid) {
                        "can only verify (an EdDSA key signs with its private_key_file)"
                    } else {
                        "is not among the keys"
                    };
                    self.error(f, &at("sign_with"), format!("sign_with {kid:?} {why}"));
                    ok = false;
                    None
                }
            },
        };
        ok.then_some(EventKeys {
            signing,
            verifying,
            default_lifetime: spec.default_lifetime_seconds,
            max_lifetime: spec.max_lifetime_seconds,
        })
    }
}

/// One key's verifying half, and its signing half when it has one.
fn compile_key(
    spec: &EventKeySpec,
    material: &EventKeyMaterial,
) -> Result<(VerifyingKey, Option<SigningKey>), String> {
    let sources = (
        material.secret.as_deref(),
        material.public_pem.as_deref(),
        material.private_pem.as_deref(),
    );
    let both_secrets = spec.secret_env.is_some() && spec.secret_file.is_some();
    match spec.algorithm.as_str() {
        "HS256" | "HS384" | "HS512" => {
            let algorithm = match spec.algorithm.as_str() {
                "HS256" => Algorithm::HS256,
                "HS384" => Algorithm::HS384,
                _ => Algorithm::HS512,
            };
            let (Some(secret), None, None) = sources else {
                return Err(format!(
                    "{} keys take exactly one of secret_env, secret_file, and no PEM file",
                    spec.algorithm
                ));
            };
            if both_secrets {
                return Err("set one of secret_env, secret_file".into());
            }
            if secret.len() < MIN_EVENT_SECRET_BYTES {
                return Err(format!(
                    "the secret is {} bytes; at least {MIN_EVENT_SECRET_BYTES} are needed",
                    secret.len()
                ));
            }
            Ok((
                VerifyingKey::hmac(algorithm, secret)?,
                Some(SigningKey::hmac(&spec.kid, algorithm, secret)?),
            ))
        }
        "EdDSA" => {
            let (None, Some(public), private) = sources else {
                return Err(
                    "EdDSA keys take public_key_file (and private_key_file to sign), no secret"
                        .into(),
                );
            };
            // Parsed here, once per policy version: signing and opening
            // use the parsed keys.
            let verify = VerifyingKey::ed25519_pem(public)
                .map_err(|e| format!("public_key_file is not an Ed25519 public key PEM: {e}"))?;
            let sign = match private {
                None => None,
                Some(private) => {
                    let key = SigningKey::ed25519_pem(&spec.kid, private).map_err(|e| {
                        format!("private_key_file is not an Ed25519 private key PEM: {e}")
                    })?;
                    if !pair_matches(&key, &verify) {
                        return Err("private_key_file does not match public_key_file".into());
                    }
                    Some(key)
                }
            };
            Ok((verify, sign))
        }
        other => Err(format!(
            "algorithm {other:?} is not an event algorithm (EdDSA, HS256, HS384, HS512)"
        )),
    }
}

/// Whether `private` is the private half of `public`: what it signs,
/// `public` verifies.
fn pair_matches(private: &SigningKey, public: &VerifyingKey) -> bool {
    use base64::Engine as _;
    let envelope = private.sign_compact(b"\"portcullis event key pair check\"");
    let Some((message, signature)) = envelope.rsplit_once('.') else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .is_ok_and(|signature| public.verifies(message.as_bytes(), &signature))
}
