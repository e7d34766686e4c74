//! The one policy compiler: policy texts in, a [`PolicySet`] or every
//! error out.
//!
//! The shell's `loader::load_policies` reads a directory (every `*.yaml`,
//! `*.yml` and `*.grants` file directly in it) and calls [`compile`];
//! `serve`, `validate`, `check`, `test` and reloads all go through it, so
//! what validates is exactly what serves. [`compile`] merges the files'
//! sections, resolves every name, and reads the keys the issuers point at
//! through the [`Host`] it is given. It reports all errors it finds, each
//! as `file:line: message`, not just the first.
//!
//! Reading what the files point at comes first and is all in [`keys`];
//! compiling is then one file per part of the policy: [`issuers`],
//! [`roles`] (and groups), [`applications`] (and routes), [`grants`] (and
//! denies), [`callers`], [`events`], [`connections`], and [`origins`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use sha2::{Digest, Sha256};

use super::condition::{Condition, ConditionEnv, Reads};
use super::grants::{GrantIndex, GrantIndexBuilder, Holder, ResourceKey};
use super::routes::{PathTemplate, ResourceTemplate, Route, RouteTable};
use super::source::{Access, ApplicationSpec, IssuerSpec, KeySpec, PolicyFile};
use super::{
    ActionSet, AppSelector, Application, DenyIndex, DenyRule, OwnedResourceKey, PolicySet, Role,
    RoleId,
};
use crate::diagnostic::Diagnostic;
use crate::path;
use crate::token::{self, Issuer, Issuers, KeySet, NamePattern, RefreshPolicy, RemoteKeys};
use crate::yaml::{self, LineIndex, Step};
pub use origins::{GrantOrigin, Origins, Place};

mod applications;
mod callers;
mod connections;
mod events;
mod grants;
mod issuers;
mod keys;
mod origins;
mod roles;

use keys::{
    check_jwks_url, read_caller_keys, read_event_keys, read_keys, CallerKeyReads, EventKeyReads,
    KeyMaterial, KeyReads,
};

/// Role ids by name, and the declared group names: looked up once per grant
/// line (a million times for a large `.grants` file), with names that come
/// from the policy, so a fast seeded hasher fits.
type RoleIds = HashMap<String, RoleId, foldhash::fast::RandomState>;
type GroupNames = HashSet<String, foldhash::fast::RandomState>;

/// Every problem found in a policy directory; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadErrors(pub Vec<Diagnostic>);

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
    pub warnings: Vec<Diagnostic>,
    /// Where each route, deny rule, grant and role was written.
    pub origins: Origins,
}

/// The policy's own files, each read whole by the shell.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// What the compiler reads outside the policy's own files (issuer keys,
/// callers' API keys, event keys), given by the shell: the core names no
/// file system and no environment.
pub trait Host {
    /// The bytes of the file at `path`.
    fn read_file(&self, path: &Path) -> std::io::Result<Vec<u8>>;
    /// The value of the environment variable `name`, if it is set.
    fn env_var(&self, name: &str) -> Option<String>;
}

/// Compiles a policy from its files (`*.yaml` and `*.grants`, in name
/// order), reading what they point at through `host` first and treating
/// keys that cannot be read as `unreadable` says. The one compiler: the
/// shell's `load_policies` reads a directory and calls this.
pub fn compile(
    files: &[SourceFile],
    host: &dyn Host,
    unreadable: UnreadableKeys,
) -> Result<Loaded, LoadErrors> {
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    let (grant_files, yaml_files): (Vec<&SourceFile>, Vec<&SourceFile>) = files
        .iter()
        .partition(|f| f.path.extension().is_some_and(|e| e == "grants"));
    for file in yaml_files {
        match yaml::parse::<PolicyFile>(&file.path, &file.text) {
            Ok(doc) => parsed.push(Parsed {
                path: &file.path,
                lines: LineIndex::new(&file.text),
                doc,
            }),
            Err(e) => errors.push(e),
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
    let keys = read_keys(&parsed, host);
    let caller_keys = read_caller_keys(&parsed, host);
    let event_keys = read_event_keys(&parsed, host);
    let mut compiler = Compiler {
        errors,
        warnings: Vec::new(),
        files: &parsed,
        grant_files: &grant_files,
        keys,
        caller_keys,
        event_keys,
        unreadable,
        key_material: Sha256::new(),
    };
    let mut policy = compiler.compile();
    let origins = compiler.origins();
    // The version covers the keys too, so a rotated secret or key file
    // gives a new version and verified-token cache entries are not reused.
    policy.version = version_of(files, &compiler.key_material.finalize()[..]);
    if compiler.errors.is_empty() {
        Ok(Loaded {
            policy,
            warnings: compiler.warnings,
            origins,
        })
    } else {
        Err(LoadErrors(compiler.errors))
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
    crate::envelope::hex(&digest[..8])
}

struct Parsed<'a> {
    path: &'a Path,
    lines: LineIndex<'a>,
    doc: PolicyFile,
}

struct Compiler<'a> {
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    files: &'a [Parsed<'a>],
    /// `*.grants` files: one grant a line, for grants in bulk.
    grant_files: &'a [&'a SourceFile],
    /// Every issuer's key source, read before compiling.
    keys: KeyReads,
    /// Every caller's API key, read (and hashed) before compiling.
    caller_keys: CallerKeyReads,
    /// Every event key's sources, read before compiling.
    event_keys: EventKeyReads,
    unreadable: UnreadableKeys,
    /// A digest of every key read, for the policy version.
    key_material: Sha256,
}

/// Where a definition was first seen: for "defined twice" errors.
type Origin = (usize, usize);

impl<'a> Compiler<'a> {
    fn error(&mut self, file: usize, at: &[Step<'_>], message: impl Into<String>) {
        let parsed = &self.files[file];
        self.errors.push(Diagnostic {
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
        let (mut roles, role_index) = self.roles(&action_index);
        let (member_of, groups) = self.groups();
        let conditions = ConditionEnv::new();
        let (applications, selector) = self.applications(&issuers, &action_index, &conditions);
        // Headers some route shows conditions: a grant's condition may read
        // only those.
        let mut condition_headers: Vec<String> = applications
            .iter()
            .flat_map(|a| a.routes.iter())
            .flat_map(|r| r.headers.iter().cloned())
            .collect();
        condition_headers.sort();
        condition_headers.dedup();
        let grants = self.grants(
            &mut roles,
            &role_index,
            &groups,
            &conditions,
            &condition_headers,
        );
        let denies = self.denies(&action_index, &groups);
        let connections = self.connections();
        let all_conditions = || {
            roles.iter().filter_map(|r| r.condition.as_deref()).chain(
                applications
                    .iter()
                    .flat_map(|a| a.routes.iter())
                    .filter_map(|r| r.condition.as_deref()),
            )
        };
        let condition_reads = all_conditions()
            .map(Condition::reads)
            .fold(Reads::default(), Reads::union);
        let condition_claims = all_conditions()
            .filter(|c| c.reads().claims)
            .try_fold(Vec::new(), |mut names: Vec<String>, c| {
                names.extend(c.claim_names()?.iter().cloned());
                Some(names)
            })
            .map(|mut names| {
                names.sort();
                names.dedup();
                names
            });
        let mut issuers = issuers;
        issuers.keep_claims(condition_reads.claims);
        let callers = self.callers();
        let events = self.events();
        if applications.is_empty() && self.errors.is_empty() {
            if let Some(first) = files.first() {
                self.errors.push(Diagnostic {
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
            actions: actions.iter().map(|a| Arc::from(a.as_str())).collect(),
            roles,
            member_of,
            grants: Box::new(grants),
            denies,
            connections,
            conditions,
            condition_reads,
            condition_claims,
            condition_headers,
            callers,
            events,
        }
    }
}
