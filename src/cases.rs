//! Decision cases written as data: a request and the decision expected.
//!
//! A case file names the policy directory it tests, relative to itself
//! (by default `..`, so cases live in a `tests/` folder beside the
//! policies), and lists cases. A case's caller is either anonymous or a
//! subject given directly (`as:`), standing for a verified token, so policy
//! authors test their rules without minting tokens. A case is a whole
//! request, or just a resource and an action:
//!
//! ```yaml
//! cases:
//!   - name: alice reads document 1
//!     request: { method: GET, path: /documents/1 }
//!     as: { subject: alice, groups: [staff] }
//!     expect: { decision: allow, status: 200, reason: granted }
//!   - name: bob may not write document 1
//!     as: { subject: bob }
//!     resource: document:1
//!     action: write
//!     expect: { decision: deny, reason: no_grant }
//! ```
//!
//! For conditions, a caller may carry verified `claims`, a request
//! `headers`, a resource/action case `resource_properties`,
//! `subject_properties` and `context` (the [`engine::Attributes`] a service
//! passes), and any case a `time` (RFC 3339; `context.time`, else the epoch).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::diagnostic::Diagnostic;
use crate::engine::{self, Attributes, Credential, Decision, KnownPrincipal, RequestAttrs};
use crate::policy::{load_policies_with, GrantSource, PolicySet, UnreadableKeys};
use crate::token::Principal;
use portcullis_core::yaml::{self, LineIndex, Step};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default = "CaseFile::default_policies")]
    policies: PathBuf,
    #[serde(default)]
    cases: Vec<Case>,
}

impl CaseFile {
    fn default_policies() -> PathBuf {
        PathBuf::from("..")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    request: Option<CaseRequest>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default, rename = "as")]
    caller: Option<Caller>,
    /// Resource/action cases: attributes the asking service passes.
    #[serde(default)]
    resource_properties: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    subject_properties: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    context: serde_json::Map<String, serde_json::Value>,
    /// When the case is decided (RFC 3339): `context.time`.
    #[serde(default)]
    time: Option<String>,
    expect: Expect,
    /// How a deployment in front of Portcullis changes this request, for
    /// the end-to-end runners; the engine and `portcullis test` ignore it.
    #[serde(default)]
    through: BTreeMap<Deployment, Through>,
}

/// A deployment the end-to-end tests run the case corpus through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Deployment {
    /// `envoy/front-proxy.yaml`.
    FrontProxy,
    /// The Istio-shaped sidecar of the end-to-end tests.
    IstioSidecar,
}

/// What a deployment does to a case instead of what the engine decides.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Through {
    /// The request cannot be sent through this deployment at all.
    #[serde(default)]
    pub skip: bool,
    /// The HTTP status the client gets instead (Envoy's own answer, or
    /// Portcullis's on the request as Envoy rewrote it).
    #[serde(default)]
    pub status: Option<u16>,
    /// Why: a case that differs says so.
    pub because: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
    method: String,
    path: String,
    #[serde(default)]
    host: String,
    /// The destination workload's principal (SPIFFE id), as the mesh proves it.
    #[serde(default)]
    destination: String,
    #[serde(default)]
    context_extensions: BTreeMap<String, String>,
    /// Request headers; conditions see those a route names.
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Caller {
    subject: String,
    #[serde(default)]
    groups: Vec<String>,
    /// The verified token's claims, for conditions.
    #[serde(default)]
    claims: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    decision: ExpectedEffect,
    #[serde(default)]
    status: Option<u16>,
    /// A reason code such as `granted` or `no_grant`.
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ExpectedEffect {
    Allow,
    Deny,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseOutcome {
    pub name: String,
    /// 1-based line of the case in its file.
    pub line: usize,
    /// The request decided, for a request case (its credential stands for
    /// the caller's verified token).
    pub request: Option<RequestAttrs<'static>>,
    /// The caller's subject and token groups, if any.
    pub caller: Option<(String, Vec<String>)>,
    /// How deployments change the case (for the end-to-end runners).
    pub through: BTreeMap<Deployment, Through>,
    pub decision: Decision,
    /// What did not match the expectation; `None` when the case passed.
    pub failure: Option<String>,
}

/// Policy directories loaded for case files, each once, however many case
/// files name it (so its warnings are reported once).
///
/// Keys the policy names but this run cannot read (an issuer's secret in
/// an environment variable CI does not have, say) do not stop the run: the
/// cases stand for verified callers (`as:`) and never verify a token. Such
/// an issuer is loaded with a key set that refuses every token, and the
/// loader's warning says so.
#[derive(Default)]
pub struct CaseRunner {
    loaded: HashMap<PathBuf, Result<Arc<PolicySet>, ()>>,
    warnings: Vec<Diagnostic>,
    grants: Option<GrantsHook>,
}

/// Decides with grants kept elsewhere (a database): given the policy and
/// the engine's call, asks it with the grants it fetched and returns its
/// decision. `portcullis test --grants-database-url` runs cases through the
/// same path `serve` does.
pub(crate) type GrantsHook =
    Box<dyn Fn(&PolicySet, &dyn Fn(&dyn GrantSource) -> Decision) -> Decision>;

impl CaseRunner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes grants through `hook` instead of the policy files.
    pub fn with_grants(mut self, hook: GrantsHook) -> Self {
        self.grants = Some(hook);
        self
    }

    /// Warnings of the policy directories loaded since the last call.
    pub(crate) fn take_warnings(&mut self) -> Vec<Diagnostic> {
        std::mem::take(&mut self.warnings)
    }

    /// Runs every case of the file at `path` against the policies it names.
    pub fn run_file(&mut self, path: &Path) -> Result<Vec<CaseOutcome>, Vec<Diagnostic>> {
        let fail = |line, message: String| {
            vec![Diagnostic {
                file: path.to_path_buf(),
                line,
                message,
            }]
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(None, format!("cannot read file: {e}")))?;
        let file: CaseFile = yaml::parse(path, &text).map_err(|e| vec![e])?;
        let base = path.parent().unwrap_or(Path::new("."));
        let dir = base.join(&file.policies);
        let policy = self.policy(&dir).map_err(|errors| {
            if errors.is_empty() {
                // Reported with the first case file that named it.
                fail(
                    None,
                    format!("its policies ({}) do not load (see above)", dir.display()),
                )
            } else {
                errors
            }
        })?;
        let lines = LineIndex::new(&text);
        let outcomes = file
            .cases
            .iter()
            .enumerate()
            .map(|(i, case)| {
                let line = lines.line_of(&[Step::Key("cases"), Step::Index(i)]);
                run_case(&policy, case, line, self.grants.as_ref())
            })
            .collect();
        Ok(outcomes)
    }

    /// The policy in `dir`, loaded on first use. The errors of a directory
    /// that does not load are returned the first time, then an empty list.
    fn policy(&mut self, dir: &Path) -> Result<Arc<PolicySet>, Vec<Diagnostic>> {
        let key = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        if let Some(found) = self.loaded.get(&key) {
            return found.clone().map_err(|()| Vec::new());
        }
        match load_policies_with(dir, UnreadableKeys::Unverifiable) {
            Ok(loaded) => {
                self.warnings.extend(loaded.warnings);
                let policy = Arc::new(loaded.policy);
                self.loaded.insert(key, Ok(policy.clone()));
                Ok(policy)
            }
            Err(errors) => {
                self.loaded.insert(key, Err(()));
                Err(errors.0)
            }
        }
    }
}

/// Runs every case of the file at `path` against the policies it names
/// (a [`CaseRunner`] of its own; its warnings are dropped).
pub fn run_case_file(path: &Path) -> Result<Vec<CaseOutcome>, Vec<Diagnostic>> {
    CaseRunner::new().run_file(path)
}

fn run_case(
    policy: &PolicySet,
    case: &Case,
    line: usize,
    grants: Option<&GrantsHook>,
) -> CaseOutcome {
    let with_grants = |decide: &dyn Fn(&dyn GrantSource) -> Decision| match grants {
        Some(hook) => hook(policy, decide),
        None => decide(&*policy.grants),
    };
    let principal = Arc::new(Principal {
        issuer: Arc::from("case"),
        subject: case
            .caller
            .as_ref()
            .map(|c| Arc::from(c.subject.as_str()))
            .unwrap_or_else(|| Arc::from("")),
        groups: case
            .caller
            .as_ref()
            .map(|c| c.groups.clone())
            .unwrap_or_default(),
        expires_at: u64::MAX,
        claims: case
            .caller
            .as_ref()
            .map(|c| c.claims.clone())
            .unwrap_or_default(),
    });
    let now = match &case.time {
        None => 0,
        Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(t) => u64::try_from(t.timestamp()).unwrap_or(0),
            Err(e) => return broken(case, line, format!("time {text:?} is not RFC 3339: {e}")),
        },
    };
    let mut decided_request = None;
    let mut unmatched = None;
    let decision = match (&case.request, &case.resource, &case.action) {
        (Some(request), None, None) => {
            let request = RequestAttrs {
                method: request.method.clone().into(),
                path: request.path.clone().into(),
                host: request.host.clone().into(),
                destination: request.destination.clone().into(),
                context_extensions: request
                    .context_extensions
                    .iter()
                    .map(|(k, v)| (k.clone().into(), v.clone().into()))
                    .collect(),
                credential: match &case.caller {
                    Some(_) => Credential::Bearer("case".into()),
                    None => Credential::Absent,
                },
                request_id: None,
                verified_payloads: BTreeMap::new(),
                // As the adapter does: only the headers the policy names.
                headers: request
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .filter(|(k, _)| policy.condition_headers.contains(k))
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            };
            let authn = KnownPrincipal(principal);
            let decision = with_grants(&|grants| {
                engine::decide(
                    policy,
                    grants,
                    &engine::Request::Http(&request),
                    &authn,
                    now,
                )
            });
            // Explained only for a deny no route took, and only here, off
            // the engine's path.
            if decision.route.is_none() && !decision.is_allowed() {
                unmatched = engine::explain_unmatched(policy, &request);
            }
            decided_request = Some(request);
            decision
        }
        (None, Some(resource), Some(action)) if case.caller.is_some() => {
            let attributes = Attributes {
                subject: Arc::new(case.subject_properties.clone()),
                resource: Arc::new(case.resource_properties.clone()),
                action: Default::default(),
                context: Arc::new(case.context.clone()),
            };
            if !policy.actions.iter().any(|a| **a == **action) {
                return broken(
                    case,
                    line,
                    format!("no route or role names the action {action:?}"),
                );
            }
            let request = engine::Request::ResourceAction(engine::ResourceAction {
                principal: &principal,
                resource,
                action,
                attributes: &attributes,
            });
            with_grants(&|grants| {
                engine::decide(policy, grants, &request, &engine::VerifyEveryTime, now)
            })
        }
        _ => {
            return broken(
                case,
                line,
                "a case has either a request, or as: with a resource and an action".into(),
            )
        }
    };

    let mut problems = Vec::new();
    let allowed = case.expect.decision == ExpectedEffect::Allow;
    if decision.is_allowed() != allowed {
        let got = if decision.is_allowed() {
            "allow"
        } else {
            "deny"
        };
        let want = if allowed { "allow" } else { "deny" };
        problems.push(format!("expected {want}, got {got}"));
    }
    if let Some(status) = case.expect.status.filter(|s| *s != decision.status_code()) {
        problems.push(format!(
            "expected status {status}, got {}",
            decision.status_code()
        ));
    }
    if let Some(reason) = case
        .expect
        .reason
        .as_deref()
        .filter(|r| *r != decision.reason.code())
    {
        problems.push(format!(
            "expected reason {reason}, got {}",
            decision.reason.code()
        ));
    }
    let failure = (!problems.is_empty()).then(|| {
        let why = match unmatched {
            Some(u) => format!("{}; {}", decision.reason, u.explanation),
            None => decision.reason.to_string(),
        };
        format!("{} (engine: {why})", problems.join("; "))
    });
    CaseOutcome {
        name: case.name.clone(),
        line,
        request: decided_request,
        caller: case
            .caller
            .as_ref()
            .map(|c| (c.subject.clone(), c.groups.clone())),
        through: case.through.clone(),
        decision,
        failure,
    }
}

/// A case that cannot run: reported as a failure, never as a pass.
fn broken(case: &Case, line: usize, problem: String) -> CaseOutcome {
    CaseOutcome {
        name: case.name.clone(),
        line,
        request: None,
        caller: None,
        through: BTreeMap::new(),
        decision: Decision::deny(engine::DenyStatus::Forbidden, engine::Reason::InternalError),
        failure: Some(problem),
    }
}
