//! Reading what the policy points at outside its own files: issuer keys,
//! callers' API keys and event keys from files and environment variables,
//! through the [`Host`] the shell passes, and the rule for `jwks_url`s.
//! Done once, before compiling, so compiling depends on nothing else.

use super::*;

/// What an issuer's key source held when it was read.
pub(super) enum KeyMaterial {
    Secret(Vec<u8>),
    /// A PEM public key file: its path (for messages) and bytes.
    Pem(PathBuf, Vec<u8>),
    /// A JWKS file: its path and text.
    Jwks(PathBuf, String),
    /// A `jwks_url`: nothing to read at load; fetched while serving.
    Url,
}

/// The key sources of every issuer, read: by (file, issuer index). Key
/// specs that do not name exactly one source are left out (compiling
/// reports them).
pub(super) type KeyReads = HashMap<(usize, usize), Result<KeyMaterial, String>>;

/// The API keys of every caller, read: by (file, caller index); only
/// their digest is kept. Specs that do not name exactly one source are left
/// out (compiling reports them).
pub(super) type CallerKeyReads = HashMap<(usize, usize), Result<[u8; 32], String>>;

/// What an event key's sources held when they were read.
#[derive(Default)]
pub(super) struct EventKeyMaterial {
    pub secret: Option<Vec<u8>>,
    pub public_pem: Option<Vec<u8>>,
    pub private_pem: Option<Vec<u8>>,
}

/// The sources of every event key, read: by (file, key index).
pub(super) type EventKeyReads = HashMap<(usize, usize), Result<EventKeyMaterial, String>>;

/// Shortest API key accepted: a key short enough to guess is no proof.
pub(super) const MIN_API_KEY_BYTES: usize = 16;

pub(super) fn read_caller_keys(files: &[Parsed<'_>], host: &dyn Host) -> CallerKeyReads {
    let mut reads = CallerKeyReads::new();
    for (f, file) in files.iter().enumerate() {
        let base = file.path.parent().unwrap_or(Path::new("."));
        for (i, spec) in file.doc.callers.iter().enumerate() {
            let Some(secret) = &spec.api_key else {
                continue;
            };
            let read = match (&secret.secret_env, &secret.secret_file) {
                (Some(var), None) => host
                    .env_var(var)
                    .filter(|s| !s.is_empty())
                    .map(String::into_bytes)
                    .ok_or_else(|| format!("environment variable {var} is not set")),
                (None, Some(file)) => {
                    let path = base.join(file);
                    host.read_file(&path)
                        .map(|mut bytes| {
                            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                                bytes.pop();
                            }
                            bytes
                        })
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))
                }
                _ => continue,
            };
            let digest = read.and_then(|key| {
                if key.len() < MIN_API_KEY_BYTES {
                    Err(format!(
                        "the API key is {} bytes; at least {MIN_API_KEY_BYTES} are needed",
                        key.len()
                    ))
                } else {
                    Ok(crate::policy::callers::api_key_digest(&key))
                }
            });
            reads.insert((f, i), digest);
        }
    }
    reads
}

pub(super) fn read_event_keys(files: &[Parsed<'_>], host: &dyn Host) -> EventKeyReads {
    let mut reads = EventKeyReads::new();
    for (f, file) in files.iter().enumerate() {
        let base = file.path.parent().unwrap_or(Path::new("."));
        let Some(events) = &file.doc.events else {
            continue;
        };
        for (i, spec) in events.keys.iter().enumerate() {
            let read_file = |file: &Path| {
                let path = base.join(file);
                host.read_file(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
            };
            let read = || -> Result<EventKeyMaterial, String> {
                let secret = match (&spec.secret_env, &spec.secret_file) {
                    (Some(var), _) => Some(
                        host.env_var(var)
                            .filter(|s| !s.is_empty())
                            .map(String::into_bytes)
                            .ok_or_else(|| format!("environment variable {var} is not set"))?,
                    ),
                    (None, Some(file)) => {
                        let mut bytes = read_file(file)?;
                        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                            bytes.pop();
                        }
                        Some(bytes)
                    }
                    (None, None) => None,
                };
                Ok(EventKeyMaterial {
                    secret,
                    public_pem: spec.public_key_file.as_deref().map(read_file).transpose()?,
                    private_pem: spec
                        .private_key_file
                        .as_deref()
                        .map(read_file)
                        .transpose()?,
                })
            };
            reads.insert((f, i), read());
        }
    }
    reads
}

pub(super) fn read_keys(files: &[Parsed<'_>], host: &dyn Host) -> KeyReads {
    let mut reads = KeyReads::new();
    for (f, file) in files.iter().enumerate() {
        let base = file.path.parent().unwrap_or(Path::new("."));
        for (i, spec) in file.doc.issuers.iter().enumerate() {
            if let Some(key) = &spec.key {
                if let Some(read) = read_key(key, base, host) {
                    reads.insert((f, i), read);
                }
            }
        }
    }
    reads
}

/// Reads the one source `key` names; `None` unless it names exactly one.
/// An error is a source that cannot be read, in words.
fn read_key(key: &KeySpec, base: &Path, host: &dyn Host) -> Option<Result<KeyMaterial, String>> {
    let read = |file: &Path| {
        let path = base.join(file);
        host.read_file(&path)
            .map(|bytes| (path.clone(), bytes))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let material = match key {
        KeySpec {
            secret_env: Some(var),
            secret_file: None,
            public_key_file: None,
            jwks_file: None,
            jwks_url: None,
            ..
        } => host
            .env_var(var)
            .filter(|s| !s.is_empty())
            .map(|s| KeyMaterial::Secret(s.into_bytes()))
            .ok_or_else(|| format!("environment variable {var} is not set")),
        KeySpec {
            secret_env: None,
            secret_file: Some(file),
            public_key_file: None,
            jwks_file: None,
            jwks_url: None,
            ..
        } => read(file).map(|(_, mut bytes)| {
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            KeyMaterial::Secret(bytes)
        }),
        KeySpec {
            secret_env: None,
            secret_file: None,
            public_key_file: Some(file),
            jwks_file: None,
            jwks_url: None,
            ..
        } => read(file).map(|(path, bytes)| KeyMaterial::Pem(path, bytes)),
        KeySpec {
            secret_env: None,
            secret_file: None,
            public_key_file: None,
            jwks_file: Some(file),
            jwks_url: None,
            ..
        } => read(file).and_then(|(path, bytes)| {
            String::from_utf8(bytes)
                .map(|text| KeyMaterial::Jwks(path.clone(), text))
                .map_err(|_| format!("{} is not valid UTF-8", path.display()))
        }),
        KeySpec {
            secret_env: None,
            secret_file: None,
            public_key_file: None,
            jwks_file: None,
            jwks_url: Some(_),
            ..
        } => Ok(KeyMaterial::Url),
        _ => return None,
    };
    Some(material)
}

/// A JWKS URL must be https; plain http is allowed to a loopback address
/// only (a test IdP on 127.0.0.1), never across a network.
pub(super) fn check_jwks_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("jwks_url {url:?} is not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" if parsed.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "jwks_url {url:?} must use https (http only to a loopback address)"
        )),
        _ => Err(format!("jwks_url {url:?} must be an https URL")),
    }
}
