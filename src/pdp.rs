//! The decision service: the one place every entry point asks.
//!
//! Envoy's check (`server.rs`), the AuthZEN API (`api/`), signed events
//! (`api/events.rs`) and the CLI each convert their input to one
//! [`engine::Request`] and ask [`Pdp::decide`]; they only convert the
//! answer back. The service owns what every decision needs and what used
//! to be wired once per entry point:
//!
//! - the served policy ([`PolicyHandle`]) and the clock;
//! - authentication: the verified-token cache, and for a token naming a key
//!   id its issuer's JWKS lacks, a brief wait for the refetch it asks for
//!   ([`KEY_REFETCH_WAIT`]) and one more decision;
//! - the grants backend: the policy files' grants, or the database's (its
//!   cache, the revision a request asks for, the "decide, read what was
//!   missed, decide again" passes of [`GrantStore::decide`]);
//! - the decision cache (HTTP checks with file grants only);
//! - the panic guard: an engine panic is a deny, on every path;
//! - metrics (`portcullis_checks_total`, by entry point) and the decision
//!   log, through [`Pdp::record`];
//! - searches ([`Pdp::search`]) over whichever grants serve.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::decision_cache::DecisionCache;
use crate::decision_log::{DecisionLog, Replayable};
use crate::engine::{self, Decision, DenyStatus, Reason};
use crate::grants_db::{DbError, GrantCache, GrantStore, Revision};
use crate::jwks::JwksFetcher;
use crate::metrics::Metrics;
use crate::policy::grant_snapshot::{Asked, GrantSnapshot, Resolve};
use crate::policy::{PolicyHandle, PolicySet};
use crate::search;
use crate::token::{Principal, TokenError};
use crate::token_cache::TokenCache;

/// Seconds since the Unix epoch; a parameter so tests can choose the time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Seconds since the Unix epoch by the system's clock: the one reading of
/// it that decisions, token expiry and the CLI use.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The system clock, as a [`Clock`].
pub fn system_clock() -> Clock {
    Arc::new(unix_now)
}

/// How long a decision whose token names a key id its issuer's JWKS lacks
/// waits for the refetch that asks for, well inside Envoy's timeout.
pub const KEY_REFETCH_WAIT: Duration = Duration::from_millis(100);

/// Which door a decision came through: a label of
/// `portcullis_checks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Envoy's ext_authz check.
    ExtAuthz,
    /// An AuthZEN evaluation.
    AuthZen,
    /// Signing or consuming a signed event.
    Events,
}

impl Entry {
    pub fn label(self) -> &'static str {
        match self {
            Entry::ExtAuthz => "ext_authz",
            Entry::AuthZen => "authzen",
            Entry::Events => "events",
        }
    }
}

/// The decision service. Cheap to clone: every part is shared.
#[derive(Clone)]
pub struct Pdp {
    policy: PolicyHandle,
    tokens: TokenCache,
    clock: Clock,
    grants_db: Option<Arc<GrantStore>>,
    decisions: Option<DecisionCache>,
    key_fetcher: Option<Arc<JwksFetcher>>,
    metrics: Option<Arc<Metrics>>,
    log: Option<Arc<DecisionLog>>,
}

impl Pdp {
    /// A service over `policy` with the policy files' grants, verifying
    /// tokens through `tokens`, at the time `clock` tells.
    pub fn new(policy: PolicyHandle, tokens: TokenCache, clock: Clock) -> Self {
        Self {
            policy,
            tokens,
            clock,
            grants_db: None,
            decisions: None,
            key_fetcher: None,
            metrics: None,
            log: None,
        }
    }

    /// Takes grants from `store` (a database) instead of the policy files;
    /// the decision cache, which knows nothing of grant revisions, is then
    /// not used.
    pub fn with_grants_db(mut self, store: Arc<GrantStore>) -> Self {
        self.grants_db = Some(store);
        self.decisions = None;
        self
    }

    /// Remembers HTTP decisions per policy version in `cache` (not with a
    /// grants database).
    pub fn with_decision_cache(mut self, cache: DecisionCache) -> Self {
        if self.grants_db.is_none() {
            self.decisions = Some(cache);
        }
        self
    }

    /// Asks `fetcher` for the keys of a token naming an unknown key id
    /// (and waits briefly for them) before denying it.
    pub fn with_key_fetcher(mut self, fetcher: Arc<JwksFetcher>) -> Self {
        self.key_fetcher = Some(fetcher);
        self
    }

    /// Counts every decision in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The metrics decisions are counted in, if any (the console reads the
    /// counts per reason).
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Writes decisions to `log`; without one, none is logged.
    pub fn with_decision_log(mut self, log: Arc<DecisionLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// The decision log, if decisions are logged (the console taps it).
    pub fn decision_log(&self) -> Option<&Arc<DecisionLog>> {
        self.log.as_ref()
    }

    /// Decides `request` for the console's explain, recording the grant
    /// lookups the engine made, in order, for [`engine::trace`]: with
    /// `as_principal`, as if its token had been verified as that principal
    /// ("explain a request for this subject and groups"); without, as a
    /// check would (its token verified). The same engine, grants backend
    /// and panic guard as [`Pdp::decide`]; never cached, logged or counted.
    pub async fn explain(
        &self,
        policy: &PolicySet,
        request: &engine::Request<'_>,
        as_principal: Option<Arc<Principal>>,
        now: u64,
    ) -> (Decision, Vec<engine::Looked>) {
        let as_principal = as_principal.map(engine::KnownPrincipal);
        let authn: &dyn engine::Authenticate = match &as_principal {
            Some(principal) => principal,
            None => &self.tokens,
        };
        let looked = std::sync::Mutex::new(Vec::new());
        let decide = |grants: &dyn crate::policy::GrantSource| {
            let recording = engine::Recording::new(grants);
            let decision = std::panic::catch_unwind(AssertUnwindSafe(|| {
                engine::decide(policy, &recording, request, authn, now)
            }))
            .unwrap_or_else(|_| {
                tracing::error!("the engine panicked; denying");
                Decision::deny(DenyStatus::Forbidden, Reason::InternalError)
            });
            if let Ok(mut looked) = looked.lock() {
                *looked = recording.looked();
            }
            decision
        };
        let decision = match &self.grants_db {
            Some(store) => decide_with_cache(store, policy, None, decide).await,
            None => decide(&*policy.grants),
        };
        (decision, looked.into_inner().unwrap_or_default())
    }

    /// The policy served now: one snapshot for one request, start to end.
    pub fn policy(&self) -> Arc<PolicySet> {
        self.policy.load_full()
    }

    /// The handle reloads publish to.
    pub(crate) fn policy_handle(&self) -> &PolicyHandle {
        &self.policy
    }

    /// Seconds since the epoch, by the service's clock.
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// The token verifier decisions use (the API authenticates its callers
    /// with it too).
    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    /// The grants database, when grants are kept in one (for writes and
    /// searches; decisions go through [`Pdp::decide`]).
    pub fn grants_db(&self) -> Option<&Arc<GrantStore>> {
        self.grants_db.as_ref()
    }

    /// Decides `request` against `policy` at `now`, with grants at least as
    /// fresh as `min_revision` (a grants database only; an unreadable one
    /// can never be met). Never panics, never allows on a fault.
    pub async fn decide(
        &self,
        policy: &PolicySet,
        request: &engine::Request<'_>,
        min_revision: Option<&Revision>,
        now: u64,
    ) -> Arc<Decision> {
        let decision = self.decide_once(policy, request, min_revision, now).await;
        if !matches!(
            decision.reason,
            Reason::InvalidToken(TokenError::UnknownKey)
        ) {
            return decision;
        }
        // Perhaps the IdP rotated: the first tokens signed with a fresh
        // key are accepted once the refetch they ask for lands.
        let Some(fetcher) = &self.key_fetcher else {
            return decision;
        };
        if fetcher
            .refetch(policy, Instant::now() + KEY_REFETCH_WAIT)
            .await
        {
            self.decide_once(policy, request, min_revision, now).await
        } else {
            decision
        }
    }

    async fn decide_once(
        &self,
        policy: &PolicySet,
        request: &engine::Request<'_>,
        min_revision: Option<&Revision>,
        now: u64,
    ) -> Arc<Decision> {
        match &self.grants_db {
            Some(store) => Arc::new(
                decide_with_cache(store, policy, min_revision, |grants| {
                    self.guarded(policy, grants, request, now)
                })
                .await,
            ),
            None => match request {
                engine::Request::Http(attrs) => self.decide_cached(policy, attrs, now),
                _ => Arc::new(self.guarded(policy, &*policy.grants, request, now)),
            },
        }
    }

    /// The engine's decision; a panic inside it is a deny.
    fn guarded(
        &self,
        policy: &PolicySet,
        grants: &dyn crate::policy::GrantSource,
        request: &engine::Request<'_>,
        now: u64,
    ) -> Decision {
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            engine::decide(policy, grants, request, &self.tokens, now)
        }))
        .unwrap_or_else(|_| {
            tracing::error!("the engine panicked; denying");
            Decision::deny(DenyStatus::Forbidden, Reason::InternalError)
        })
    }

    /// The cached decision for `attrs`, or a new one (remembered when the
    /// cache is on and the decision is worth keeping).
    fn decide_cached(
        &self,
        policy: &PolicySet,
        attrs: &engine::RequestAttrs,
        now: u64,
    ) -> Arc<Decision> {
        // A request without a token cannot have a decision in the cache:
        // it is not looked up (nor hashed), and its decision is not kept.
        let cache = self
            .decisions
            .as_ref()
            .filter(|_| DecisionCache::may_hold(attrs));
        // The key epoch is read before the engine reads any key, so a
        // decision made with keys that are then replaced is filed under an
        // epoch no later check computes.
        let key = cache.map(|_| {
            let epoch = TokenCache::key_epoch(&policy.issuers);
            DecisionCache::key(&policy.version, epoch, attrs)
        });
        if let (Some(cache), Some(key)) = (cache, &key) {
            if let Some(decision) = cache.get(key, now) {
                return decision;
            }
        }
        let decision =
            Arc::new(self.guarded(policy, &*policy.grants, &engine::Request::Http(attrs), now));
        if let (Some(cache), Some(key)) = (cache, key) {
            cache.insert(key, &decision);
        }
        decision
    }

    /// Counts `decision` and hands it to the decision log: every entry
    /// point calls this once per decision it answers. `request` (an HTTP
    /// request) lets the log say what came closest for a deny no route took.
    pub fn record(&self, done: Recorded<'_>) {
        let elapsed = done.started.elapsed();
        if let Some(metrics) = &self.metrics {
            let application = done.decision.application.as_deref().unwrap_or("");
            metrics.record_check(
                done.entry.label(),
                application,
                done.decision.outcome(),
                done.decision.reason.code(),
                elapsed.as_secs_f64(),
            );
        }
        // A deny no application or route took says what the request was
        // and what came closest: worked out here, only for such denies,
        // never in the engine's decision path.
        if let Some(log) = &self.log {
            let unmatched = match done.http {
                Some(attrs) if DecisionLog::explains(done.decision) => {
                    engine::explain_unmatched(done.policy, attrs)
                }
                _ => None,
            };
            log.record_replayable(
                done.decision,
                done.request_id,
                &done.policy.version,
                elapsed,
                unmatched.as_ref(),
                Some(Replayable {
                    entry: done.entry.label(),
                    http: done.http,
                    claims: done.policy.condition_claims.as_deref(),
                }),
            );
        }
    }
}

/// The most lookups a decision may make (a subject in very many groups);
/// a snapshot allocates room for them only as they are asked.
const SNAPSHOT_ROOM: usize = 16 * 1024;

/// Decides with grants kept in a database, through `cache`: `decide` is
/// the engine call, given the grants to ask. The first pass answers from
/// the cache when it may (the feed reached `min_revision`, the cache is
/// trusted); a deny with lookups nobody could answer is decided once more
/// after one read of them all (a grant can only allow, so an allow stands
/// as it is). A read that fails, or a second pass that asks what the first
/// did not, is a deny (`grants_unavailable`), never a guess.
pub async fn decide_with_cache<F>(
    cache: &GrantCache,
    policy: &PolicySet,
    min_revision: Option<&Revision>,
    decide: F,
) -> Decision
where
    F: Fn(&dyn crate::policy::GrantSource) -> Decision,
{
    let now = std::time::Instant::now();
    let resolve = |asked: &Asked<'_>| cache.cached(policy, asked, now);
    let resolve: Resolve<'_> = &resolve;
    let from_cache = cache.may_answer(min_revision).await.then_some(resolve);
    let first = GrantSnapshot::new(SNAPSHOT_ROOM, from_cache);
    let decision = decide(&first);
    if first.overflowed() {
        return cache.unavailable(decision, "a decision asked for too many grant lookups");
    }
    if decision.is_allowed() {
        return decision;
    }
    let missed = first.missed();
    if missed.is_empty() {
        return decision;
    }
    let fetched = match cache.fetch(policy, &missed, min_revision).await {
        Ok(fetched) => fetched,
        Err(e) => return cache.unavailable(decision, &e.to_string()),
    };
    let second = GrantSnapshot::new(SNAPSHOT_ROOM, None);
    for roles in first.answered() {
        second.give(roles.clone());
    }
    for (_, roles) in fetched {
        second.give(roles);
    }
    let decision = decide(&second);
    if second.overflowed() || !second.missed().is_empty() {
        // The second pass asked what the first did not: never guess.
        return cache.unavailable(
            decision,
            "the decision asked for grants it had not asked for before",
        );
    }
    decision
}

/// What a search asks, the other way round from a decision.
#[derive(Debug, Clone, Copy)]
pub enum Search<'a> {
    /// Who may do `action` on `resource`?
    Subjects { resource: &'a str, action: &'a str },
    /// Which resources of type `kind` may `principal` do `action` on?
    Resources {
        principal: &'a Principal,
        action: &'a str,
        kind: &'a str,
    },
    /// What may `principal` do on `resource`?
    Actions {
        principal: &'a Principal,
        resource: &'a str,
    },
}

impl Pdp {
    /// One page of `search`: at most `limit` results after `after`, each
    /// confirmed as a decision with the same attributes and time
    /// (`given`) would be, over the grants that serve (the policy files',
    /// or the database's, read in bounded pages).
    pub async fn search(
        &self,
        policy: &PolicySet,
        search: Search<'_>,
        after: Option<&str>,
        limit: usize,
        given: search::Circumstances<'_>,
    ) -> Result<search::Found, DbError> {
        use crate::grants_db::search as db;
        let Some(store) = &self.grants_db else {
            return Ok(match search {
                Search::Subjects { resource, action } => search::subjects(
                    policy,
                    &*policy.grants,
                    resource,
                    action,
                    after,
                    limit,
                    given,
                ),
                Search::Resources {
                    principal,
                    action,
                    kind,
                } => search::resources(
                    policy,
                    &*policy.grants,
                    principal,
                    action,
                    kind,
                    after,
                    limit,
                    given,
                ),
                Search::Actions {
                    principal,
                    resource,
                } => search::actions(
                    policy,
                    &*policy.grants,
                    principal,
                    resource,
                    after,
                    limit,
                    given,
                ),
            });
        };
        match search {
            Search::Subjects { resource, action } => {
                db::subjects(store, policy, resource, action, after, limit, given).await
            }
            Search::Resources {
                principal,
                action,
                kind,
            } => db::resources(store, policy, principal, action, kind, after, limit, given).await,
            Search::Actions {
                principal,
                resource,
            } => db::actions(store, policy, principal, resource, after, limit, given).await,
        }
    }
}

/// One answered decision, as [`Pdp::record`] counts and logs it.
pub struct Recorded<'a> {
    pub entry: Entry,
    pub policy: &'a PolicySet,
    pub decision: &'a Decision,
    /// The HTTP request decided, for a deny's closest route.
    pub http: Option<&'a engine::RequestAttrs<'a>>,
    pub request_id: Option<&'a str>,
    /// When the entry point took the request.
    pub started: Instant,
}
