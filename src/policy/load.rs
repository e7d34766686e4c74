//! The one loader: a policy directory in, a [`PolicySet`] or every error out.
//!
//! `serve`, `validate`, `check` and reloads all call [`load_policies`], so
//! what validates is exactly what serves. The loader reads every `*.yaml`
//! and `*.yml` file directly in the directory (not below it; hidden files
//! and Kubernetes' `..data` links are skipped), merges their sections,
//! resolves every name, and reads the keys the issuers point at. It reports
//! all errors it finds, each as `file:line: message`, not just the first.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use sha2::{Digest, Sha256};

use super::grants::{GrantIndex, Holder, ResourceKey};
use super::routes::{PathTemplate, ResourceTemplate, Route, RouteTable};
use super::source::{Access, ApplicationSpec, Connections, IssuerSpec, KeySpec, PolicyFile};
use super::{
    ActionSet, AppSelector, Application, DenyIndex, DenyRule, OwnedResourceKey, PolicySet, Role,
    RoleId,
};
use crate::path;
use crate::remote_keys::{RefreshPolicy, RemoteKeys};
use crate::token::{self, Issuer, Issuers, KeySet, NamePattern};
use crate::yaml::{self, LineIndex, Step};

/// Role ids by name, and the declared group names: looked up once per grant
/// line (a million times for a large `.grants` file), with names that come
/// from the policy, so a fast seeded hasher fits.
type RoleIds = HashMap<String, RoleId, foldhash::fast::RandomState>;
type GroupNames = HashSet<String, foldhash::fast::RandomState>;

/// One problem in a policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in a policy directory; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// What the loader does with an issuer key it cannot read (an unset
/// `secret_env` variable, a missing `secret_file`, `public_key_file` or
/// `jwks_file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnreadableKeys {
    /// An error: the policy does not load. `serve`, `validate`, `check`
    /// and reloads, where a token must be verifiable.
    Refuse,
    /// A warning: the issuer gets a key set that refuses every token
    /// ([`KeySet::Unverifiable`]). For `portcullis test`, whose cases stand
    /// for verified callers and never verify a token, so policy tests run
    /// in CI without production secrets. Never a dummy secret.
    Unverifiable,
}

/// A loaded policy and what the loader warned about.
#[derive(Debug)]
pub struct Loaded {
    pub policy: PolicySet,
    /// Problems that did not stop the load (each `file:line: message`).
    pub warnings: Vec<LoadError>,
}

/// Loads and compiles the policy directory `dir`; every issuer key must be
/// readable.
pub fn load_policies(dir: &Path) -> Result<PolicySet, LoadErrors> {
    load_policies_with(dir, UnreadableKeys::Refuse).map(|loaded| loaded.policy)
}

/// Loads and compiles the policy directory `dir`, treating keys that cannot
/// be read as `unreadable` says. The one loader: [`load_policies`] is this
/// with [`UnreadableKeys::Refuse`].
pub fn load_policies_with(dir: &Path, unreadable: UnreadableKeys) -> Result<Loaded, LoadErrors> {
    let files = read_dir(dir)?;
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    let (grant_files, yaml_files): (Vec<&SourceFile>, Vec<&SourceFile>) = files
        .iter()
        .partition(|f| f.path.extension().is_some_and(|e| e == "grants"));
    for file in yaml_files {
        match yaml::parse::<PolicyFile>(&file.text) {
            Ok(doc) => parsed.push(Parsed {
                path: &file.path,
                lines: LineIndex::new(&file.text),
                doc,
            }),
            Err(e) => errors.push(LoadError {
                file: file.path.clone(),
                line: e.line,
                message: e.message,
            }),
        }
    }
    if !errors.is_empty() {
        // Compiling the files that parsed would report every name the
        // broken file defines as unknown: report the parse errors alone.
        return Err(LoadErrors(errors));
    }
    // Everything outside the directory the policy names (environment
    // variables, key files) is read here, before compiling, so that what
    // cannot be read is one decision (`unreadable`), not a dozen branches.
    let keys = read_keys(&parsed);
    let mut compiler = Compiler {
        errors,
        warnings: Vec::new(),
        files: &parsed,
        grant_files: &grant_files,
        keys,
        unreadable,
        key_material: Sha256::new(),
    };
    let mut policy = compiler.compile();
    // The version covers the keys too, so a rotated secret or key file
    // gives a new version and verified-token cache entries are not reused.
    policy.version = version_of(&files, &compiler.key_material.finalize()[..]);
    if compiler.errors.is_empty() {
        Ok(Loaded {
            policy,
            warnings: compiler.warnings,
        })
    } else {
        Err(LoadErrors(compiler.errors))
    }
}

/// What an issuer's key source held when it was read.
enum KeyMaterial {
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
type KeyReads = HashMap<(usize, usize), Result<KeyMaterial, String>>;

fn read_keys(files: &[Parsed<'_>]) -> KeyReads {
    let mut reads = KeyReads::new();
    for (f, file) in files.iter().enumerate() {
        let base = file.path.parent().unwrap_or(Path::new("."));
        for (i, spec) in file.doc.issuers.iter().enumerate() {
            if let Some(key) = &spec.key {
                if let Some(read) = read_key(key, base) {
                    reads.insert((f, i), read);
                }
            }
        }
    }
    reads
}

/// Reads the one source `key` names; `None` unless it names exactly one.
/// An error is a source that cannot be read, in words.
fn read_key(key: &KeySpec, base: &Path) -> Option<Result<KeyMaterial, String>> {
    let read = |file: &Path| {
        let path = base.join(file);
        std::fs::read(&path)
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
        } => std::env::var(var)
            .ok()
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

struct SourceFile {
    path: PathBuf,
    text: String,
}

fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, LoadErrors> {
    let fail = |message: String| {
        LoadErrors(vec![LoadError {
            file: dir.to_path_buf(),
            line: None,
            message,
        }])
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| fail(format!("cannot read directory: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| fail(format!("cannot read directory: {e}")))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_policy =
            name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".grants");
        if name.starts_with('.') || !is_policy {
            continue;
        }
        // Follows links (Kubernetes mounts files as links into `..data`).
        let path = entry.path();
        if path.is_file() {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(fail(
            "no policy files (*.yaml, *.yml, *.grants) in directory".into(),
        ));
    }
    paths.sort();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match std::fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                // A writer that truncates before writing leaves this for a
                // moment: loading it would revoke everything it granted.
                Ok(text) if yaml::is_blank(&text) => errors.push(LoadError {
                    file: path,
                    line: None,
                    message: "file holds nothing but blanks and comments (caught mid-write?); \
                              delete it, or say what it holds, e.g. `grants: []`"
                        .into(),
                }),
                Ok(text) => files.push(SourceFile { path, text }),
                Err(_) => errors.push(LoadError {
                    file: path,
                    line: None,
                    message: "file is not valid UTF-8".into(),
                }),
            },
            Err(e) => errors.push(LoadError {
                file: path,
                line: None,
                message: format!("cannot read file: {e}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(LoadErrors(errors))
    }
}

fn version_of(files: &[SourceFile], key_material: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(key_material);
    for file in files {
        let name = file
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        hasher.update(name.unwrap_or_default().as_bytes());
        hasher.update([0]);
        hasher.update((file.text.len() as u64).to_le_bytes());
        hasher.update(file.text.as_bytes());
    }
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

struct Parsed<'a> {
    path: &'a Path,
    lines: LineIndex<'a>,
    doc: PolicyFile,
}

struct Compiler<'a> {
    errors: Vec<LoadError>,
    warnings: Vec<LoadError>,
    files: &'a [Parsed<'a>],
    /// `*.grants` files: one grant a line, for grants in bulk.
    grant_files: &'a [&'a SourceFile],
    /// Every issuer's key source, read before compiling.
    keys: KeyReads,
    unreadable: UnreadableKeys,
    /// A digest of every key read, for the policy version.
    key_material: Sha256,
}

/// Where a definition was first seen: for "defined twice" errors.
type Origin = (usize, usize);

impl<'a> Compiler<'a> {
    fn error(&mut self, file: usize, at: &[Step<'_>], message: impl Into<String>) {
        let parsed = &self.files[file];
        self.errors.push(LoadError {
            file: parsed.path.to_path_buf(),
            line: Some(parsed.lines.line_of(at)),
            message: message.into(),
        });
    }

    fn origin(&self, (file, line): Origin) -> String {
        format!("{}:{}", self.files[file].path.display(), line)
    }

    fn line(&self, file: usize, at: &[Step<'_>]) -> usize {
        self.files[file].lines.line_of(at)
    }

    fn compile(&mut self) -> PolicySet {
        let files = self.files;
        let issuers = self.issuers();
        let actions = self.actions();
        let action_index: HashMap<&str, usize> = actions
            .iter()
            .enumerate()
            .map(|(i, a)| (a.as_str(), i))
            .collect();
        let (roles, role_index) = self.roles(&action_index);
        let (member_of, groups) = self.groups();
        let (applications, selector) = self.applications(&issuers, &action_index);
        let grants = self.grants(&role_index, &groups);
        let denies = self.denies(&action_index, &groups);
        let connections = self.connections();
        if applications.is_empty() && self.errors.is_empty() {
            if let Some(first) = files.first() {
                self.errors.push(LoadError {
                    file: first.path.to_path_buf(),
                    line: None,
                    message: "the policy defines no application".into(),
                });
            }
        }
        PolicySet {
            version: String::new(),
            issuers,
            applications,
            selector,
            actions,
            roles,
            member_of,
            grants: Box::new(grants),
            denies,
            connections,
        }
    }

    /// The one `connections:` setting; deny when no file says.
    fn connections(&mut self) -> Connections {
        let mut found: Option<(Connections, Origin)> = None;
        for (f, file) in self.files.iter().enumerate() {
            let Some(value) = file.doc.connections else {
                continue;
            };
            let at = [Step::Key("connections")];
            let here = (f, self.line(f, &at));
            match found {
                Some((_, first)) => {
                    let first = self.origin(first);
                    self.error(f, &at, format!("connections is already set at {first}"));
                }
                None => found = Some((value, here)),
            }
        }
        found.map_or(Connections::Deny, |(value, _)| value)
    }

    fn issuers(&mut self) -> Issuers {
        let mut list = Vec::new();
        let mut specs = Vec::new();
        let mut names: HashMap<String, Origin> = HashMap::new();
        let mut values: HashMap<String, Origin> = HashMap::new();
        for (f, file) in self.files.iter().enumerate() {
            for (i, spec) in file.doc.issuers.iter().enumerate() {
                let at = [Step::Key("issuers"), Step::Index(i)];
                let line = self.line(f, &at);
                if let Some(first) = names.insert(spec.name.clone(), (f, line)) {
                    let first = self.origin(first);
                    self.error(
                        f,
                        &at,
                        format!("issuer {:?} is already defined at {first}", spec.name),
                    );
                    continue;
                }
                if let Some(first) = values.insert(spec.issuer.clone(), (f, line)) {
                    let first = self.origin(first);
                    self.error(
                        f,
                        &at,
                        format!("issuer value {:?} is already used at {first}", spec.issuer),
                    );
                    continue;
                }
                if let Some(issuer) = self.issuer(f, i, spec) {
                    list.push(issuer);
                }
                specs.push((f, i, spec));
            }
        }
        self.subject_prefixes(&specs);
        Issuers::new(list)
    }

    /// With several issuers, every issuer's subjects carry a prefix of its
    /// own, and no prefix starts another: a partner's `carol` is then never
    /// the corporate `carol` that grants, groups and denies name.
    fn subject_prefixes(&mut self, specs: &[(usize, usize, &IssuerSpec)]) {
        if specs.len() < 2 {
            return;
        }
        let at = |i| [Step::Key("issuers"), Step::Index(i), Step::Key("name")];
        for &(f, i, spec) in specs {
            let mine = spec.subject_prefix.as_deref().unwrap_or_default();
            if mine.is_empty() {
                self.error(f, &at(i), format!("issuer {:?} needs a subject_prefix (such as \"{}:\"): the policy trusts {} issuers, and a subject must name one issuer's subject only", spec.name, spec.name, specs.len()));
                continue;
            }
            let clash = specs.iter().find(|(_, _, other)| {
                let theirs = other.subject_prefix.as_deref().unwrap_or_default();
                other.name != spec.name && !theirs.is_empty() && mine.starts_with(theirs)
            });
            if let Some((_, _, other)) = clash {
                self.error(f, &at(i), format!("subject_prefix {mine:?} of issuer {:?} starts with the subject_prefix of issuer {:?}: their subjects could collide", spec.name, other.name));
            }
        }
    }

    fn issuer(&mut self, f: usize, i: usize, spec: &IssuerSpec) -> Option<Issuer> {
        let at = |key| [Step::Key("issuers"), Step::Index(i), Step::Key(key)];
        let mut ok = true;
        if spec.name.is_empty() {
            self.error(f, &at("name"), "issuer name is empty");
            ok = false;
        }
        if spec.issuer.is_empty() {
            self.error(f, &at("issuer"), "issuer value is empty");
            ok = false;
        }
        if spec.audiences.is_empty() || spec.audiences.iter().any(String::is_empty) {
            self.error(
                f,
                &at("audiences"),
                format!(
                    "issuer {:?} needs at least one non-empty audience",
                    spec.name
                ),
            );
            ok = false;
        }
        if spec.subject_claim.is_empty() {
            self.error(f, &at("subject_claim"), "subject_claim is empty");
            ok = false;
        }
        let groups_allowed: Vec<NamePattern> = spec
            .groups_allowed
            .iter()
            .map(|g| NamePattern::parse(g))
            .collect();
        match (&spec.groups_claim, spec.groups_allowed.is_empty()) {
            (Some(claim), true) => {
                self.error(f, &at("groups_claim"), format!("issuer {:?} reads groups from {claim:?} but lists no groups_allowed: name the policy groups its tokens may assert (or prefixes ending in *)", spec.name));
                ok = false;
            }
            (None, false) => {
                self.error(
                    f,
                    &at("groups_allowed"),
                    format!(
                        "issuer {:?} lists groups_allowed but no groups_claim to read them from",
                        spec.name
                    ),
                );
                ok = false;
            }
            _ => {}
        }
        if spec.groups_allowed.iter().any(|g| g.is_empty() || g == "*") {
            self.error(f, &at("groups_allowed"), "groups_allowed entries must be group names or prefixes ending in * (a bare * would let the token name any group)");
            ok = false;
        }
        let subject_prefix = spec.subject_prefix.clone().unwrap_or_default();
        if spec.subject_prefix.is_some()
            && !token::is_printable_name(&subject_prefix, token::MAX_SUBJECT_LEN)
        {
            self.error(
                f,
                &at("subject_prefix"),
                "subject_prefix must be non-empty printable text",
            );
            ok = false;
        }
        if let Some(jwt_authn) = &spec.jwt_authn {
            // Envoy verifies the token; no algorithm or key here.
            if !spec.algorithms.is_empty() || spec.key.is_some() {
                self.error(
                    f,
                    &at("jwt_authn"),
                    format!(
                        "issuer {:?} trusts jwt_authn: it takes no algorithms and no key",
                        spec.name
                    ),
                );
                return None;
            }
            if jwt_authn.payload_key.is_empty() {
                self.error(f, &at("jwt_authn"), "jwt_authn payload_key is empty");
                return None;
            }
            return ok.then(|| Issuer {
                name: Arc::from(spec.name.as_str()),
                issuer: spec.issuer.clone(),
                audiences: spec.audiences.clone(),
                algorithms: Vec::new(),
                keys: KeySet::Jwks(Vec::new()),
                leeway_seconds: spec.leeway_seconds,
                subject_claim: spec.subject_claim.clone(),
                subject_prefix,
                groups_claim: spec.groups_claim.clone(),
                groups_allowed,
                jwt_authn_payload: Some(jwt_authn.payload_key.clone()),
            });
        }
        let mut algorithms = Vec::new();
        for name in &spec.algorithms {
            match token::parse_algorithm(name) {
                Some(alg) => algorithms.push(alg),
                None => {
                    self.error(
                        f,
                        &at("algorithms"),
                        format!("unknown algorithm {name:?} (use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA)"),
                    );
                    ok = false;
                }
            }
        }
        if spec.algorithms.is_empty() {
            self.error(
                f,
                &at("algorithms"),
                format!("issuer {:?} pins no algorithm", spec.name),
            );
            ok = false;
        }
        let families: BTreeSet<String> = algorithms
            .iter()
            .map(|a| format!("{:?}", a.family()))
            .collect();
        if families.len() > 1 {
            self.error(
                f,
                &at("algorithms"),
                "algorithms of one issuer must share one key type (HMAC, RSA, EC or EdDSA)",
            );
            ok = false;
        }
        let keys = match self.keys(f, i, spec, &algorithms) {
            Ok(keys) => Some(keys),
            Err(message) => {
                self.error(f, &at("key"), format!("issuer {:?}: {message}", spec.name));
                None
            }
        };
        let keys = keys.filter(|_| ok)?;
        Some(Issuer {
            name: Arc::from(spec.name.as_str()),
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            algorithms,
            keys,
            leeway_seconds: spec.leeway_seconds,
            subject_claim: spec.subject_claim.clone(),
            subject_prefix,
            groups_claim: spec.groups_claim.clone(),
            groups_allowed,
            jwt_authn_payload: None,
        })
    }

    /// Compiles the key an issuer names (read by [`read_keys`]) and checks
    /// it fits its algorithms.
    fn keys(
        &mut self,
        f: usize,
        i: usize,
        spec: &IssuerSpec,
        algorithms: &[Algorithm],
    ) -> Result<KeySet, String> {
        let key = spec
            .key
            .as_ref()
            .ok_or("an issuer needs a key (or jwt_authn, to trust Envoy's verification)")?;
        let given = [
            key.secret_env.is_some(),
            key.secret_file.is_some(),
            key.public_key_file.is_some(),
            key.jwks_file.is_some(),
            key.jwks_url.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(
                "key must set exactly one of secret_env, secret_file, public_key_file, jwks_file, jwks_url"
                    .into(),
            );
        }
        let Some(family) = algorithms.first().map(|a| a.family()) else {
            return Err("no algorithm to check the key against".into());
        };
        let need = |wanted: AlgorithmFamily, what: &str| {
            if token::algorithms_fit(algorithms, wanted) {
                Ok(())
            } else {
                Err(format!("a {what} key cannot verify {algorithms:?}"))
            }
        };
        let is_secret = key.secret_env.is_some() || key.secret_file.is_some();
        let material = match self.keys.remove(&(f, i)) {
            Some(Ok(material)) => material,
            Some(Err(unreadable)) => {
                if self.unreadable == UnreadableKeys::Refuse {
                    return Err(unreadable);
                }
                // What the key would be is still checked against the
                // algorithms: only the missing bytes are forgiven.
                if is_secret {
                    need(AlgorithmFamily::Hmac, "shared-secret")?;
                } else if family == AlgorithmFamily::Hmac {
                    return Err("an HMAC algorithm needs a secret, not a public key".into());
                }
                let at = [Step::Key("issuers"), Step::Index(i), Step::Key("key")];
                let parsed = &self.files[f];
                self.warnings.push(LoadError {
                    file: parsed.path.to_path_buf(),
                    line: Some(parsed.lines.line_of(&at)),
                    message: format!(
                        "warning: issuer {:?}: {unreadable}; its tokens cannot be verified in this run (every one is refused)",
                        spec.name
                    ),
                });
                self.key_material.update(b"unverifiable\0");
                self.key_material.update(spec.name.as_bytes());
                return Ok(KeySet::Unverifiable(unreadable));
            }
            None => return Err("no key source".into()),
        };
        match material {
            KeyMaterial::Secret(secret) => {
                need(AlgorithmFamily::Hmac, "shared-secret")?;
                self.key_material.update(&secret);
                let min = algorithms
                    .iter()
                    .map(|a| token::min_secret_len(*a))
                    .max()
                    .unwrap_or(32);
                if secret.len() < min {
                    return Err(format!(
                        "the secret is {} bytes; {algorithms:?} needs at least {min}",
                        secret.len()
                    ));
                }
                Ok(KeySet::Single(DecodingKey::from_secret(&secret)))
            }
            KeyMaterial::Pem(path, pem) => {
                self.key_material.update(&pem);
                let key = match family {
                    AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
                    AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
                    AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem),
                    AlgorithmFamily::Hmac => {
                        return Err("an HMAC algorithm needs a secret, not a public key".into())
                    }
                };
                let key = key.map_err(|e| {
                    format!("{} is not a PEM {family:?} public key: {e}", path.display())
                })?;
                Ok(KeySet::Single(key))
            }
            KeyMaterial::Jwks(path, text) => {
                self.key_material.update(text.as_bytes());
                let set: JwkSet = serde_json::from_str(&text)
                    .map_err(|e| format!("{} is not a JWK set: {e}", path.display()))?;
                let keys = token::jwk_keys(&set, family);
                if keys.is_empty() {
                    return Err(format!(
                        "{} holds no {family:?} signing key",
                        path.display()
                    ));
                }
                Ok(KeySet::Jwks(keys))
            }
            KeyMaterial::Url => {
                let (Some(url), refresh) = (&key.jwks_url, &key.refresh) else {
                    return Err("no key source".into());
                };
                check_jwks_url(url)?;
                if algorithms
                    .iter()
                    .any(|a| a.family() == AlgorithmFamily::Hmac)
                {
                    return Err(
                        "a JWKS URL serves public keys: pin RS, PS, ES or EdDSA algorithms".into(),
                    );
                }
                if refresh.min_seconds == 0 || refresh.min_seconds > refresh.max_seconds {
                    return Err("refresh needs 0 < min_seconds <= max_seconds".into());
                }
                // The URL and its bounds are part of the version; the keys it
                // serves change without a new version, and a change clears the caches.
                self.key_material.update(url.as_bytes());
                let policy = RefreshPolicy {
                    min: Duration::from_secs(refresh.min_seconds),
                    max: Duration::from_secs(refresh.max_seconds),
                    unknown_kid: Duration::from_secs(refresh.unknown_kid_seconds),
                };
                Ok(KeySet::Remote(Arc::new(RemoteKeys::new(
                    url.clone(),
                    policy,
                    family,
                ))))
            }
        }
    }

    /// Every action a route or a role names, in a stable order. A role
    /// defines the actions it lists: evaluation-style checks (a case's
    /// `resource`/`action`) ask about actions no route maps to. Deny rules
    /// define none, so a misspelled action there is still an error.
    fn actions(&self) -> Vec<String> {
        let routes = self
            .files
            .iter()
            .flat_map(|f| &f.doc.applications)
            .flat_map(|a| &a.routes)
            .filter_map(|r| r.action.as_deref());
        let roles = self
            .files
            .iter()
            .flat_map(|f| f.doc.roles.values())
            .flat_map(|r| r.actions.iter().map(String::as_str));
        let set: BTreeSet<&str> = routes.chain(roles).filter(|a| !a.is_empty()).collect();
        set.into_iter().map(str::to_owned).collect()
    }

    fn roles(&mut self, actions: &HashMap<&str, usize>) -> (Vec<Role>, RoleIds) {
        // Gather definitions first: a role may include one defined in another file.
        let mut specs: BTreeMap<&str, (usize, &super::source::RoleSpec)> = BTreeMap::new();
        for (f, file) in self.files.iter().enumerate() {
            for (name, spec) in &file.doc.roles {
                if let Some((first, _)) = specs.get(name.as_str()) {
                    let first = self.origin((
                        *first,
                        self.line(*first, &[Step::Key("roles"), Step::Key(name)]),
                    ));
                    self.error(
                        f,
                        &[Step::Key("roles"), Step::Key(name)],
                        format!("role {name:?} is already defined at {first}"),
                    );
                    continue;
                }
                specs.insert(name, (f, spec));
            }
        }
        let index: RoleIds = specs
            .keys()
            .enumerate()
            .map(|(i, name)| (name.to_string(), i as RoleId))
            .collect();
        let mut roles = Vec::new();
        for (name, (f, spec)) in &specs {
            let mut set = ActionSet::default();
            let mut ok = true;
            for action in &spec.actions {
                match actions.get(action.as_str()) {
                    Some(a) => set.insert(*a),
                    None => {
                        self.error(
                            *f,
                            &[Step::Key("roles"), Step::Key(name), Step::Key("actions")],
                            format!("role {name:?} lists an empty action"),
                        );
                        ok = false;
                    }
                }
            }
            // Fold in included roles, depth first, refusing cycles.
            let mut stack: Vec<(&str, Vec<&str>)> = spec
                .includes
                .iter()
                .map(|i| (i.as_str(), vec![*name]))
                .collect();
            let mut seen = HashSet::new();
            while let Some((included, chain)) = stack.pop() {
                if chain.contains(&included) {
                    let cycle = chain.join(" -> ");
                    self.error(
                        *f,
                        &[Step::Key("roles"), Step::Key(name), Step::Key("includes")],
                        format!("role {name:?} includes itself ({cycle} -> {included})"),
                    );
                    ok = false;
                    break;
                }
                let Some((_, inner)) = specs.get(included) else {
                    self.error(
                        *f,
                        &[Step::Key("roles"), Step::Key(name), Step::Key("includes")],
                        format!("role {name:?} includes unknown role {included:?}"),
                    );
                    ok = false;
                    continue;
                };
                if !seen.insert(included) {
                    continue;
                }
                for action in &inner.actions {
                    if let Some(a) = actions.get(action.as_str()) {
                        set.insert(*a);
                    }
                }
                let mut next = chain.clone();
                next.push(included);
                stack.extend(inner.includes.iter().map(|i| (i.as_str(), next.clone())));
            }
            if ok && set == ActionSet::default() {
                self.error(
                    *f,
                    &[Step::Key("roles"), Step::Key(name)],
                    format!("role {name:?} grants no action"),
                );
            }
            roles.push(Role {
                name: name.to_string(),
                actions: set,
            });
        }
        (roles, index)
    }

    fn groups(&mut self) -> (HashMap<String, Vec<String>>, GroupNames) {
        let mut member_of: HashMap<String, Vec<String>> = HashMap::new();
        let mut seen: HashMap<&str, Origin> = HashMap::new();
        for (f, file) in self.files.iter().enumerate() {
            for (name, spec) in &file.doc.groups {
                let at = [Step::Key("groups"), Step::Key(name.as_str())];
                if let Some(first) = seen.insert(name, (f, self.line(f, &at))) {
                    let first = self.origin(first);
                    self.error(
                        f,
                        &at,
                        format!("group {name:?} is already defined at {first}"),
                    );
                    continue;
                }
                for member in &spec.members {
                    if member.is_empty() {
                        self.error(f, &at, format!("group {name:?} has an empty member"));
                    }
                    let groups = member_of.entry(member.clone()).or_default();
                    if !groups.contains(name) {
                        groups.push(name.clone());
                    }
                }
            }
        }
        let names = seen.into_keys().map(str::to_owned).collect();
        (member_of, names)
    }

    fn applications(
        &mut self,
        issuers: &Issuers,
        actions: &HashMap<&str, usize>,
    ) -> (Vec<Application>, AppSelector) {
        let mut applications = Vec::new();
        let mut selector = AppSelector::default();
        let mut names: HashMap<&str, Origin> = HashMap::new();
        let mut contexts: HashMap<&BTreeMap<String, String>, Origin> = HashMap::new();
        let mut hosts: HashMap<String, Origin> = HashMap::new();
        let mut destinations: HashMap<String, Origin> = HashMap::new();
        let mut prefixes: HashMap<Vec<String>, Origin> = HashMap::new();
        for (f, file) in self.files.iter().enumerate() {
            for (i, spec) in file.doc.applications.iter().enumerate() {
                let at = |key| [Step::Key("applications"), Step::Index(i), Step::Key(key)];
                let here = (
                    f,
                    self.line(f, &[Step::Key("applications"), Step::Index(i)]),
                );
                if let Some(first) = names.insert(&spec.name, here) {
                    let first = self.origin(first);
                    self.error(
                        f,
                        &at("name"),
                        format!("application {:?} is already defined at {first}", spec.name),
                    );
                    continue;
                }
                let app = applications.len();
                let select = &spec.select;
                let trusted = !select.context_extensions.is_empty()
                    || !select.destination_principals.is_empty()
                    || !select.destination_namespaces.is_empty();
                if !trusted && select.hosts.is_empty() && select.path_prefixes.is_empty() {
                    self.error(f, &at("select"), format!("application {:?} has no selector (context_extensions, destination_principals, destination_namespaces, hosts or path_prefixes)", spec.name));
                }
                if spec.mode == super::source::Mode::DryRun && !trusted {
                    self.error(f, &at("mode"), format!("application {:?} is in dry_run but only hosts or path_prefixes select it: the client chooses those, and could choose this application to have its requests let through; select it by context_extensions or destination_* (docs/policy-reference.md)", spec.name));
                }
                for principal in &select.destination_principals {
                    if crate::policy::spiffe_namespace(principal).is_none() {
                        self.error(f, &at("select"), format!("destination principal {principal:?} is not a SPIFFE id of the form spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT"));
                    } else if let Some(first) = destinations.insert(principal.clone(), here) {
                        let first = self.origin(first);
                        self.error(f, &at("select"), format!("destination principal {principal:?} already selects the application at {first}"));
                    } else {
                        selector.by_principal.insert(principal.clone(), app);
                    }
                }
                for namespace in &select.destination_namespaces {
                    let probe = format!("spiffe://x/ns/{namespace}/sa/x");
                    if namespace.contains('/') || crate::policy::spiffe_namespace(&probe).is_none()
                    {
                        self.error(
                            f,
                            &at("select"),
                            format!("destination namespace {namespace:?} is not a namespace name"),
                        );
                    } else if let Some(first) = destinations.insert(format!("ns/{namespace}"), here)
                    {
                        let first = self.origin(first);
                        self.error(f, &at("select"), format!("destination namespace {namespace:?} already selects the application at {first}"));
                    } else {
                        selector.by_namespace.insert(namespace.clone(), app);
                    }
                }
                if !select.context_extensions.is_empty() {
                    if let Some(first) = contexts.insert(&select.context_extensions, here) {
                        let first = self.origin(first);
                        self.error(
                            f,
                            &at("select"),
                            format!(
                                "the same context_extensions select the application at {first}"
                            ),
                        );
                    }
                    selector
                        .by_context
                        .push((select.context_extensions.clone(), app));
                }
                for host in &select.hosts {
                    let lower = host.to_ascii_lowercase();
                    let valid = match lower.strip_prefix("*.") {
                        Some(rest) => {
                            !rest.is_empty()
                                && crate::policy::normalize_host(rest).as_deref() == Ok(rest)
                        }
                        None => crate::policy::normalize_host(&lower).as_deref() == Ok(&lower),
                    };
                    if !valid {
                        self.error(f, &at("select"), format!("host {host:?} is not a host name or *.suffix (no port, no trailing dot)"));
                        continue;
                    }
                    if let Some(first) = hosts.insert(lower.clone(), here) {
                        let first = self.origin(first);
                        self.error(
                            f,
                            &at("select"),
                            format!("host {host:?} already selects the application at {first}"),
                        );
                        continue;
                    }
                    match lower.strip_prefix('*') {
                        Some(suffix) => selector.wildcard_hosts.push((suffix.to_owned(), app)),
                        None => {
                            selector.exact_hosts.insert(lower, app);
                        }
                    }
                }
                for prefix in &select.path_prefixes {
                    let segments: Option<Vec<String>> = path::normalize(prefix)
                        .ok()
                        .filter(|p| p.as_str() == prefix)
                        .map(|p| p.segments().map(str::to_owned).collect());
                    let Some(segments) = segments else {
                        self.error(
                            f,
                            &at("select"),
                            format!("path prefix {prefix:?} is not a normalized path"),
                        );
                        continue;
                    };
                    if let Some(first) = prefixes.insert(segments.clone(), here) {
                        let first = self.origin(first);
                        self.error(
                            f,
                            &at("select"),
                            format!(
                                "path prefix {prefix:?} already selects the application at {first}"
                            ),
                        );
                        continue;
                    }
                    let segments = if spec.case_insensitive {
                        segments.iter().map(|s| s.to_ascii_lowercase()).collect()
                    } else {
                        segments
                    };
                    selector
                        .prefixes
                        .push((segments, app, spec.case_insensitive));
                }
                let allowed = self.application_issuers(f, i, spec, issuers);
                let routes = self.routes(f, i, spec, actions);
                applications.push(Application {
                    name: spec.name.clone(),
                    issuers: allowed,
                    routes,
                    dry_run: spec.mode == super::source::Mode::DryRun,
                    case_insensitive: spec.case_insensitive,
                });
            }
        }
        selector
            .by_context
            .sort_by_key(|(wanted, _)| std::cmp::Reverse(wanted.len()));
        selector
            .wildcard_hosts
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        selector
            .prefixes
            .sort_by_key(|(segments, _, _)| std::cmp::Reverse(segments.len()));
        (applications, selector)
    }

    /// True when some file defines an issuer named `name`, whether or not
    /// it compiled.
    fn declares_issuer(&self, name: &str) -> bool {
        self.files
            .iter()
            .flat_map(|f| &f.doc.issuers)
            .any(|spec| spec.name == name)
    }

    fn application_issuers(
        &mut self,
        f: usize,
        i: usize,
        spec: &ApplicationSpec,
        issuers: &Issuers,
    ) -> Vec<usize> {
        let Some(names) = &spec.issuers else {
            if issuers.len() > 1 {
                self.error(
                    f,
                    &[Step::Key("applications"), Step::Index(i), Step::Key("name")],
                    format!(
                        "application {:?} must list its issuers: the policy trusts {} issuers",
                        spec.name,
                        issuers.len()
                    ),
                );
            }
            return (0..issuers.len()).collect();
        };
        let mut allowed = Vec::new();
        for name in names {
            match issuers.position(name) {
                Some(index) => allowed.push(index),
                // Declared, but its definition failed: that error is
                // reported where it is; a second one here would only
                // send the author looking for a missing definition.
                None if self.declares_issuer(name) => {}
                None => self.error(
                    f,
                    &[
                        Step::Key("applications"),
                        Step::Index(i),
                        Step::Key("issuers"),
                    ],
                    format!("application {:?} names unknown issuer {name:?}", spec.name),
                ),
            }
        }
        allowed
    }

    fn routes(
        &mut self,
        f: usize,
        i: usize,
        spec: &ApplicationSpec,
        actions: &HashMap<&str, usize>,
    ) -> RouteTable {
        let mut routes: Vec<Route> = Vec::new();
        let mut names: HashSet<&str> = HashSet::new();
        let mut shapes: HashMap<String, Vec<(String, Vec<String>)>> = HashMap::new();
        for (r, route) in spec.routes.iter().enumerate() {
            let at = |key: &'static str| {
                [
                    Step::Key("applications"),
                    Step::Index(i),
                    Step::Key("routes"),
                    Step::Index(r),
                    Step::Key(key),
                ]
            };
            let mut ok = true;
            if route.name.is_empty() || !names.insert(&route.name) {
                self.error(
                    f,
                    &at("name"),
                    format!(
                        "route name {:?} is empty or used twice in application {:?}",
                        route.name, spec.name
                    ),
                );
                ok = false;
            }
            if route.methods.is_empty() {
                self.error(
                    f,
                    &at("methods"),
                    format!("route {:?} lists no method", route.name),
                );
                ok = false;
            }
            for method in &route.methods {
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    self.error(
                        f,
                        &at("methods"),
                        format!("method {method:?} must be an upper-case HTTP method such as GET"),
                    );
                    ok = false;
                }
            }
            let template = match PathTemplate::parse(&route.path) {
                Ok(t) if spec.case_insensitive => Some(t.with_lowercase_literals()),
                Ok(t) => Some(t),
                Err(e) => {
                    self.error(f, &at("path"), format!("route {:?}: {e}", route.name));
                    None
                }
            };
            let action = match &route.action {
                Some(name) => actions.get(name.as_str()).map(|a| (name.clone(), *a)),
                None => None,
            };
            let needs_target = route.access == Access::Granted;
            if needs_target && (route.resource.is_none() || route.action.is_none()) {
                self.error(f, &at("access"), format!("route {:?} needs a resource and an action (or access: public / authenticated)", route.name));
                ok = false;
            }
            if route.action.as_deref() == Some("") {
                self.error(f, &at("action"), "action is empty");
                ok = false;
            }
            let Some(template) = template else { continue };
            let resource = match &route.resource {
                Some(text) => match ResourceTemplate::parse(text, &template) {
                    Ok(r) if !text.is_empty() => Some(r),
                    Ok(_) => {
                        self.error(f, &at("resource"), "resource is empty");
                        ok = false;
                        None
                    }
                    Err(e) => {
                        self.error(f, &at("resource"), format!("route {:?}: {e}", route.name));
                        ok = false;
                        None
                    }
                },
                None => None,
            };
            let shape = template.shape();
            let overlapping = shapes.get(&shape).and_then(|others| {
                others
                    .iter()
                    .find(|(_, m)| m.iter().any(|x| route.methods.contains(x)))
            });
            if let Some((other, _)) = overlapping {
                self.error(
                    f,
                    &at("path"),
                    format!(
                        "route {:?} matches the same requests as route {other:?} ({shape})",
                        route.name
                    ),
                );
                ok = false;
            }
            shapes
                .entry(shape)
                .or_default()
                .push((route.name.clone(), route.methods.clone()));
            if ok {
                routes.push(Route {
                    name: route.name.clone(),
                    methods: route.methods.clone(),
                    template,
                    access: route.access,
                    resource,
                    action,
                });
            }
        }
        RouteTable::new(routes)
    }

    fn holder<'s>(
        &mut self,
        f: usize,
        at: &[Step<'_>],
        subject: &'s Option<String>,
        group: &'s Option<String>,
        groups: &GroupNames,
        everyone_allowed: bool,
    ) -> Result<Option<Holder<'s>>, ()> {
        match (subject, group) {
            (Some(_), Some(_)) => {
                self.error(f, at, "name either a subject or a group, not both");
                Err(())
            }
            (Some(s), None) if s.is_empty() => {
                self.error(f, at, "subject is empty");
                Err(())
            }
            (Some(s), None) => Ok(Some(Holder::Subject(s))),
            (None, Some(g)) if !groups.contains(g) => {
                self.error(
                    f,
                    at,
                    format!("unknown group {g:?} (declare it under groups:)"),
                );
                Err(())
            }
            (None, Some(g)) => Ok(Some(Holder::Group(g))),
            (None, None) if everyone_allowed => Ok(None),
            (None, None) => {
                self.error(f, at, "a grant names a subject or a group");
                Err(())
            }
        }
    }

    fn grants(&mut self, roles: &RoleIds, groups: &GroupNames) -> GrantIndex {
        let mut index = GrantIndex::new();
        for (f, file) in self.files.iter().enumerate() {
            for (g, grant) in file.doc.grants.iter().enumerate() {
                let at = [Step::Key("grants"), Step::Index(g)];
                let Ok(holder) = self.holder(f, &at, &grant.subject, &grant.group, groups, false)
                else {
                    continue;
                };
                let Some(role) = roles.get(&grant.role) else {
                    let field = [Step::Key("grants"), Step::Index(g), Step::Key("role")];
                    self.error(f, &field, format!("unknown role {:?} in grant", grant.role));
                    continue;
                };
                let key = match ResourceKey::parse(&grant.resource) {
                    Ok(key) => key,
                    Err(e) => {
                        let field = [Step::Key("grants"), Step::Index(g), Step::Key("resource")];
                        self.error(f, &field, format!("resource {:?}: {e}", grant.resource));
                        continue;
                    }
                };
                if let Some(holder) = holder {
                    index.insert(holder, key, *role);
                }
            }
        }
        for file in self.grant_files {
            self.grant_lines(file, roles, groups, &mut index);
        }
        index
    }

    /// Reads a `*.grants` file: one grant a line, `subject:NAME ROLE RESOURCE`
    /// or `group:NAME ROLE RESOURCE`, blank lines and `#` comment lines
    /// allowed. Made for grants in bulk: no YAML tree is built.
    fn grant_lines(
        &mut self,
        file: &SourceFile,
        roles: &RoleIds,
        groups: &GroupNames,
        index: &mut GrantIndex,
    ) {
        const MAX_REPORTED: usize = 100;
        let mut failed = 0usize;
        for (n, line) in file.text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_ascii_whitespace();
            let parsed = match (fields.next(), fields.next(), fields.next(), fields.next()) {
                (Some(holder), Some(role), Some(resource), None) => {
                    grant_line(holder, role, resource, roles, groups)
                }
                _ => Err(
                    "expected three fields: subject:NAME or group:NAME, a role, a resource".into(),
                ),
            };
            match parsed {
                Ok((holder, key, role)) => index.insert(holder, key, role),
                Err(message) => {
                    failed += 1;
                    if failed <= MAX_REPORTED {
                        self.errors.push(LoadError {
                            file: file.path.clone(),
                            line: Some(n + 1),
                            message,
                        });
                    }
                }
            }
        }
        if failed > MAX_REPORTED {
            self.errors.push(LoadError {
                file: file.path.clone(),
                line: None,
                message: format!("{} more lines with errors not shown", failed - MAX_REPORTED),
            });
        }
    }

    fn denies(&mut self, actions: &HashMap<&str, usize>, groups: &GroupNames) -> DenyIndex {
        let mut index = DenyIndex::default();
        let mut names: HashMap<&str, Origin> = HashMap::new();
        for (f, file) in self.files.iter().enumerate() {
            for (d, deny) in file.doc.denies.iter().enumerate() {
                let at = [Step::Key("denies"), Step::Index(d)];
                if let Some(first) = names.insert(&deny.name, (f, self.line(f, &at))) {
                    let first = self.origin(first);
                    self.error(
                        f,
                        &at,
                        format!("deny rule {:?} is already defined at {first}", deny.name),
                    );
                    continue;
                }
                let Ok(holder) = self.holder(f, &at, &deny.subject, &deny.group, groups, true)
                else {
                    continue;
                };
                let resource = match ResourceKey::parse(deny.resource.as_deref().unwrap_or("*")) {
                    Ok(ResourceKey::Exact(r)) => OwnedResourceKey::Exact(r.to_owned()),
                    Ok(ResourceKey::Prefix(p)) => OwnedResourceKey::Prefix(p.to_owned()),
                    Err(e) => {
                        self.error(
                            f,
                            &[Step::Key("denies"), Step::Index(d), Step::Key("resource")],
                            format!("deny rule {:?}: {e}", deny.name),
                        );
                        continue;
                    }
                };
                let mut denied = None;
                if !deny.actions.is_empty() {
                    let mut set = ActionSet::default();
                    for action in &deny.actions {
                        match actions.get(action.as_str()) {
                            Some(a) => set.insert(*a),
                            None => self.error(
                                f,
                                &[Step::Key("denies"), Step::Index(d), Step::Key("actions")],
                                format!(
                                    "unknown action {action:?} in deny rule {:?} (no route or role names it)",
                                    deny.name
                                ),
                            ),
                        }
                    }
                    denied = Some(set);
                }
                let rule = DenyRule {
                    name: deny.name.clone(),
                    resource,
                    actions: denied,
                    reason: deny.reason.clone(),
                };
                match holder {
                    Some(Holder::Subject(s)) => {
                        index.subjects.entry(s.to_owned()).or_default().push(rule)
                    }
                    Some(Holder::Group(g)) => {
                        index.groups.entry(g.to_owned()).or_default().push(rule)
                    }
                    None => index.everyone.push(rule),
                }
            }
        }
        // By name, so the rule an explanation names does not depend on file order.
        let by_name = |rules: &mut Vec<DenyRule>| rules.sort_by(|a, b| a.name.cmp(&b.name));
        index.subjects.values_mut().for_each(by_name);
        index.groups.values_mut().for_each(by_name);
        by_name(&mut index.everyone);
        index
    }
}

/// One line of a `*.grants` file, resolved.
fn grant_line<'l>(
    holder: &'l str,
    role: &str,
    resource: &'l str,
    roles: &RoleIds,
    groups: &GroupNames,
) -> Result<(Holder<'l>, ResourceKey<'l>, RoleId), String> {
    let holder = match (
        holder.strip_prefix("subject:"),
        holder.strip_prefix("group:"),
    ) {
        (Some(subject), _) if !subject.is_empty() => Holder::Subject(subject),
        (_, Some(group)) if groups.contains(group) => Holder::Group(group),
        (_, Some(group)) => {
            return Err(format!(
                "unknown group {group:?} (declare it under groups:)"
            ))
        }
        _ => {
            return Err(format!(
                "holder {holder:?} must be subject:NAME or group:NAME"
            ))
        }
    };
    let role = *roles
        .get(role)
        .ok_or_else(|| format!("unknown role {role:?} in grant"))?;
    let key = ResourceKey::parse(resource).map_err(|e| format!("resource {resource:?}: {e}"))?;
    Ok((holder, key, role))
}

/// A JWKS URL must be https; plain http is allowed to a loopback address
/// only (a test IdP on 127.0.0.1), never across a network.
fn check_jwks_url(url: &str) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("jwks_url {url:?} is not a URL: {e}"))?;
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
