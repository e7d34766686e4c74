//! One log line read back into the request the engine read, and decided
//! again: the recorded principal taken as verified, the line's timestamp
//! as the time.

use super::*;

#[derive(Deserialize)]
struct LogLine<'a> {
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    target: Option<Cow<'a, str>>,
    #[serde(borrow)]
    fields: Option<LineFields<'a>>,
}

/// A line's fields; every one optional so that lines of other targets
/// read, and a decision line missing one is reported by name.
#[derive(Deserialize)]
struct LineFields<'a> {
    #[serde(borrow, default)]
    request_id: Cow<'a, str>,
    #[serde(borrow)]
    application: Option<Cow<'a, str>>,
    #[serde(borrow)]
    route: Option<Cow<'a, str>>,
    #[serde(borrow)]
    decision: Option<Cow<'a, str>>,
    status: Option<u16>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    detail: Cow<'a, str>,
    #[serde(borrow, default)]
    rule: Cow<'a, str>,
    #[serde(borrow, default)]
    policy_version: Cow<'a, str>,
    #[serde(borrow)]
    entry: Option<Cow<'a, str>>,
    #[serde(borrow)]
    request: Option<RequestLine<'a>>,
}

#[derive(Deserialize)]
struct RequestLine<'a> {
    #[serde(default)]
    oversized: bool,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    path: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    host: Cow<'a, str>,
    #[serde(borrow, default)]
    destination: Cow<'a, str>,
    #[serde(borrow, default)]
    context_extensions: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(borrow, default)]
    headers: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(borrow)]
    credential: Cow<'a, str>,
    principal: Option<PrincipalLine>,
}

#[derive(Deserialize)]
struct PrincipalLine {
    issuer: String,
    subject: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    claims: Map<String, Value>,
}

/// The caller a line recorded, as an [`Authenticate`]: the verified
/// principal, accepted again where the candidate's application trusts its
/// issuer (by name); the token error the line recorded; or, for a token
/// the log never verified, [`NOT_VERIFIED`].
pub struct RecordedCaller {
    principal: Option<Arc<Principal>>,
    refused: Option<TokenError>,
}

impl RecordedCaller {
    /// A caller the engine already verified: the shadow decision of a
    /// served check.
    pub fn verified(principal: Option<Arc<Principal>>) -> Self {
        Self {
            principal,
            refused: None,
        }
    }

    /// True when `decision` needed a token the log did not verify.
    pub fn unverified(decision: &Decision) -> bool {
        matches!(&decision.reason, Reason::InvalidToken(e) if *e == NOT_VERIFIED)
    }
}

impl Authenticate for RecordedCaller {
    fn authenticate(
        &self,
        policy: &PolicySet,
        allowed_issuers: &[usize],
        _: &str,
        _: u64,
    ) -> Result<Arc<Principal>, TokenError> {
        match (&self.principal, &self.refused) {
            (Some(principal), _) => engine::trusted_again(policy, allowed_issuers, principal),
            (None, Some(refused)) => Err(refused.clone()),
            (None, None) => Err(NOT_VERIFIED),
        }
    }
}

/// The token error a line recorded by its reason code.
fn token_error(code: &str) -> TokenError {
    match code {
        "token_too_large" => TokenError::TooLarge,
        "token_unknown_issuer" => TokenError::UnknownIssuer,
        "token_algorithm_not_allowed" => TokenError::AlgorithmNotAllowed(String::new()),
        "token_unknown_key" => TokenError::UnknownKey,
        "token_bad_signature" => TokenError::BadSignature,
        "token_wrong_audience" => TokenError::WrongAudience,
        "token_wrong_issuer" => TokenError::WrongIssuer,
        "token_missing_claim" => TokenError::MissingClaim(String::new()),
        "token_expired" => TokenError::Expired,
        "token_not_yet_valid" => TokenError::NotYetValid,
        "token_bad_subject" => TokenError::BadSubject,
        "token_bad_groups" => TokenError::BadGroups,
        _ => TokenError::Malformed("refused when the decision was logged"),
    }
}

/// The credential error a line's `detail` names.
fn credential_error(detail: &str) -> CredentialError {
    [
        CredentialError::Multiple,
        CredentialError::NotBearer,
        CredentialError::Malformed,
    ]
    .into_iter()
    .find(|e| e.to_string() == detail)
    .unwrap_or(CredentialError::Malformed)
}

/// Seconds since the epoch of an RFC 3339 timestamp.
fn unix_seconds(timestamp: &str) -> Option<u64> {
    let time = humantime::parse_rfc3339_weak(timestamp.trim_end_matches('Z')).ok()?;
    time.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Reads one line of a decision log and decides it again against
/// `candidate` (with its file grants).
pub fn replay_line(candidate: &PolicySet, text: &str) -> LineOutcome {
    let line: LogLine<'_> = match serde_json::from_str(text) {
        Ok(line) => line,
        Err(e) => return LineOutcome::Malformed(format!("not a JSON log line: {e}")),
    };
    if line.target.as_deref() != Some("decision") {
        return LineOutcome::NotDecision;
    }
    let Some(fields) = line.fields else {
        return LineOutcome::Malformed("a decision line without `fields`".into());
    };
    let (Some(application), Some(route), Some(decision), Some(status), Some(reason)) = (
        fields.application,
        fields.route,
        fields.decision,
        fields.status,
        fields.reason,
    ) else {
        return LineOutcome::Malformed(
            "a decision line without `application`, `route`, `decision`, `status` or `reason`"
                .into(),
        );
    };
    let Some(effect) = Effect::parse(&decision) else {
        return LineOutcome::Malformed(format!("unknown decision {decision:?}"));
    };
    let Some(entry) = fields.entry.as_deref() else {
        return LineOutcome::BeforeReplayFields;
    };
    let Some(request) = fields.request else {
        return LineOutcome::NotHttp(if entry == "ext_authz" {
            "connection_or_unreadable".into()
        } else {
            entry.to_owned()
        });
    };
    if request.oversized {
        return LineOutcome::Malformed(
            "cannot replay: its Host or method was too long to log".into(),
        );
    }
    let Some(now) = line.timestamp.as_deref().and_then(unix_seconds) else {
        return LineOutcome::Malformed("no readable `timestamp`".into());
    };
    let recorded = Recorded {
        effect,
        status,
        application: application.into_owned(),
        route: route.into_owned(),
        reason: reason.clone().into_owned(),
        rule: fields.rule.into_owned(),
        request_id: fields.request_id.into_owned(),
        policy_version: fields.policy_version.into_owned(),
        method: request.method.to_string(),
        path: request.path.as_deref().unwrap_or_default().to_owned(),
        subject: request
            .principal
            .as_ref()
            .map(|p| p.subject.clone())
            .unwrap_or_default(),
    };
    let Some(path) = request.path else {
        // A path the normalizer refuses is refused by every policy alike.
        let candidate = Decision::deny(
            engine::DenyStatus::BadRequest,
            Reason::BadPath(crate::path::PathError::Empty),
        );
        return LineOutcome::Replayed(Box::new(Replayed {
            recorded,
            candidate,
        }));
    };
    let principal = request.principal.map(|p| {
        Arc::new(Principal {
            issuer: Arc::from(p.issuer),
            subject: Arc::from(p.subject),
            groups: p.groups,
            expires_at: u64::MAX,
            claims: p.claims,
        })
    });
    let (attrs_credential, refused) = match &*request.credential {
        credential::ABSENT => (Credential::Absent, None),
        credential::INVALID => (Credential::Invalid(credential_error(&fields.detail)), None),
        credential::BEARER | credential::JWT_AUTHN => (
            Credential::Bearer(Cow::Borrowed("")),
            // No principal and a token reason: the token was refused.
            (principal.is_none() && reason.starts_with("token_")).then(|| token_error(&reason)),
        ),
        other => {
            return LineOutcome::Malformed(format!("unknown credential {other:?}"));
        }
    };
    let attrs = RequestAttrs {
        method: request.method,
        path,
        host: request.host,
        destination: request.destination,
        context_extensions: request.context_extensions,
        credential: attrs_credential,
        request_id: None,
        verified_payloads: BTreeMap::new(),
        headers: request.headers,
    };
    let caller = RecordedCaller { principal, refused };
    let candidate = decide(candidate, &attrs, &caller, now);
    LineOutcome::Replayed(Box::new(Replayed {
        recorded,
        candidate,
    }))
}

/// The engine's decision with the candidate's file grants; a panic is a
/// deny, as the service makes it.
pub fn decide(
    policy: &PolicySet,
    attrs: &RequestAttrs<'_>,
    caller: &RecordedCaller,
    now: u64,
) -> Decision {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine::decide(
            policy,
            &*policy.grants,
            &engine::Request::Http(attrs),
            caller,
            now,
        )
    }))
    .unwrap_or_else(|_| Decision::deny(engine::DenyStatus::Forbidden, Reason::InternalError))
}

/// Why the candidate cannot decide a request, if it cannot: an
/// application the log names that the candidate lacks, or a token the log
/// never verified.
pub fn undecidable(recorded_application: &str, candidate: &Decision) -> Option<&'static str> {
    if RecordedCaller::unverified(candidate) {
        return Some("token_not_verified_when_logged");
    }
    let no_application = matches!(
        candidate.reason,
        Reason::NoApplication | Reason::AmbiguousApplication
    ) || matches!(
        candidate.matched_rule,
        Some(MatchedRule::Unrouted(
            Reason::NoApplication | Reason::AmbiguousApplication
        ))
    );
    (no_application && !recorded_application.is_empty()).then_some("unknown_application")
}
