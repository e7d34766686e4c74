//! Signed events: asynchronous work checked when it is done.
//!
//! At publish time a service asks Portcullis to sign an event for the
//! acting subject: the subject must be allowed the action on the resource
//! now, and the envelope ([`envelope`]) carries who, what, on what, for
//! whom, until when and the SHA-256 of the message, never the user's token.
//! At consume time the worker hands back the envelope and the message:
//! Portcullis opens it (key, signature, audience, expiry, digest), refuses
//! an id it has accepted before ([`replay`]), and decides the event against
//! the policy as it is *now*, so a grant revoked in between stops the work.
//!
//! [`envelope`] is pure; this module and [`replay`] are the shell around it
//! (randomness for ids, the replay memory and its log).

pub use portcullis_core::envelope;
pub mod replay;

use std::sync::Arc;

use crate::engine::{self, Attributes, Decision, Reason};
use crate::grants_db::{consumed, GrantStore};
use crate::policy::{GrantSource, PolicySet};
use crate::token::Principal;
pub use envelope::{EventClaims, Publish, Refusal, SignError, Signed};
pub use replay::ReplayGuard;

/// A new event id: 128 random bits as 32 hex digits.
pub fn new_event_id() -> Result<String, SignError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| SignError::Crypto(format!("no randomness for an event id: {e}")))?;
    Ok(envelope::hex(&bytes))
}

/// Decides whether `principal` may do `action` on `resource` under
/// `policy`, with `grants` (the policy's own or the grants database's), at
/// `now`: the one question asked when an event is signed and again when it
/// is consumed. An action the policy does not know is a deny.
pub fn decide(
    policy: &PolicySet,
    grants: &dyn GrantSource,
    principal: &Principal,
    resource: &str,
    action: &str,
    now: u64,
) -> Decision {
    let attributes = Attributes::default();
    let request = engine::Request::ResourceAction(engine::ResourceAction {
        principal,
        resource,
        action,
        attributes: &attributes,
    });
    engine::decide(policy, grants, &request, &engine::VerifyEveryTime, now)
}

/// Signs `event` for `principal` if the policy's own grants allow it now.
/// `Ok(Err(..))` is the policy's deny: nothing is signed.
pub fn publish(
    policy: &PolicySet,
    principal: &Principal,
    event: &Publish<'_>,
    now: u64,
) -> Result<Result<Signed, Decision>, SignError> {
    let decision = decide(
        policy,
        &*policy.grants,
        principal,
        event.resource,
        event.action,
        now,
    );
    publish_decided(policy, decision, event, now)
}

/// Signs `event` if `decision` (of its subject, action and resource, made
/// now with whichever grants serve) allows it.
pub fn publish_decided(
    policy: &PolicySet,
    decision: Decision,
    event: &Publish<'_>,
    now: u64,
) -> Result<Result<Signed, Decision>, SignError> {
    let keys = policy.events.as_ref().ok_or(SignError::NoSigningKey)?;
    keys.signing.as_ref().ok_or(SignError::NoSigningKey)?;
    if !decision.is_allowed() {
        return Ok(Err(decision));
    }
    let id = new_event_id()?;
    envelope::sign(keys, event, &id, now).map(Ok)
}

/// An event that was opened: who did what, and the policy's decision now.
#[derive(Debug)]
pub struct Consumed {
    pub claims: EventClaims,
    pub decision: Decision,
}

/// Opens `envelope` for `audience`, decides it against `policy` and its
/// own grants at `now`, and consumes its id (once only). An event is
/// judged once: its id is consumed whether the policy allows it or not.
pub fn consume(
    policy: &PolicySet,
    replay: &ReplayGuard,
    envelope: &str,
    message_sha256: &[u8; 32],
    audience: &str,
    now: u64,
) -> Result<Consumed, Refusal> {
    let claims = open(policy, envelope, message_sha256, audience, now)?;
    let decision = decide(
        policy,
        &*policy.grants,
        &principal_of(&claims),
        &claims.resource,
        &claims.action,
        now,
    );
    consume_decided_here(policy, replay, claims, decision, now)
}

/// Opens `envelope` for `audience` without consuming it.
pub fn open(
    policy: &PolicySet,
    envelope: &str,
    message_sha256: &[u8; 32],
    audience: &str,
    now: u64,
) -> Result<EventClaims, Refusal> {
    envelope::open(
        policy.events.as_ref(),
        envelope,
        message_sha256,
        audience,
        now,
    )
}

/// Consumes an opened event decided `decision` in this process's
/// `replay` memory (the CLI's `event verify`); see [`consume_decided`].
pub fn consume_decided_here(
    policy: &PolicySet,
    replay: &ReplayGuard,
    claims: EventClaims,
    decision: Decision,
    now: u64,
) -> Result<Consumed, Refusal> {
    decided(&decision)?;
    replay.first_use(&claims.aud, &claims.jti, claims.exp, now, consumers(policy))?;
    Ok(Consumed { claims, decision })
}

/// Consumes an opened event decided `decision` in `replay` (this
/// replica's memory, or the grants database shared by every replica),
/// unless the decision could not be made (the grants database unreachable
/// past its grace period): such an event is refused without being
/// consumed, so it can be tried again once the grants can be read, rather
/// than lost to an outage.
///
/// The id is remembered under its audience, the consumer: each of the
/// policy's consumers ([`consumers`]) holds at most its share of the
/// replay memory, so none can fill it for the others.
pub async fn consume_decided(
    policy: &PolicySet,
    replay: &Replay,
    claims: EventClaims,
    decision: Decision,
    now: u64,
) -> Result<Consumed, Refusal> {
    decided(&decision)?;
    replay
        .first_use(&claims.aud, &claims.jti, claims.exp, now, consumers(policy))
        .await?;
    Ok(Consumed { claims, decision })
}

fn decided(decision: &Decision) -> Result<(), Refusal> {
    if matches!(decision.reason, Reason::GrantsUnavailable) {
        return Err(Refusal::GrantsUnavailable);
    }
    Ok(())
}

/// Where accepted event ids are remembered, so that each is accepted once.
pub enum Replay {
    /// This replica's memory (and its optional log): once per replica.
    /// Without a grants database there is nothing shared to keep them in.
    Memory(Box<ReplayGuard>),
    /// The grants database ([`consumed`](crate::grants_db::consumed)):
    /// once across every replica on it. `capacity` is shared out among
    /// the consumers as in memory.
    Database {
        store: Arc<GrantStore>,
        capacity: usize,
    },
}

impl Replay {
    /// Accepts `id` the first time, for `consumer`, until `expires_at`;
    /// refuses a replay, a consumer past its share of `capacity ÷
    /// consumers`, and (fail closed: nothing recorded, nothing accepted)
    /// a store that cannot record it.
    pub async fn first_use(
        &self,
        consumer: &str,
        id: &str,
        expires_at: u64,
        now: u64,
        consumers: usize,
    ) -> Result<(), Refusal> {
        match self {
            Replay::Memory(guard) => guard.first_use(consumer, id, expires_at, now, consumers),
            Replay::Database { store, capacity } => {
                let share = (capacity / consumers.max(1)).max(1);
                match consumed::consume(store, consumer, id, expires_at, now, share).await {
                    Ok(consumed::Consumed::First) => Ok(()),
                    Ok(consumed::Consumed::Replayed) => Err(Refusal::Replayed),
                    Ok(consumed::Consumed::ConsumerFull) => Err(Refusal::ReplayCallerFull),
                    Err(e) => {
                        tracing::error!(error = %e, event_id = %id, "cannot record a consumed event: refused, not consumed");
                        Err(Refusal::ReplayUnavailable)
                    }
                }
            }
        }
    }
}

/// How many consumers share the replay memory: every caller the policy
/// names may consume the events addressed to it (at least one, the
/// audience of `portcullis event verify`).
pub fn consumers(policy: &PolicySet) -> usize {
    policy.callers.iter().count().max(1)
}

/// The subject an envelope names, as the engine takes it: its groups are
/// those its token asserted when the event was signed; no claims travel.
pub fn principal_of(claims: &EventClaims) -> Principal {
    Principal {
        issuer: Arc::from(claims.idp.as_str()),
        subject: claims.sub.as_str().into(),
        groups: claims.groups.clone(),
        expires_at: claims.exp,
        claims: Default::default(),
    }
}
