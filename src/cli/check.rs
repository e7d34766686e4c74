//! `portcullis check`: decides one request with the decision service
//! `serve` uses, over the policy directory, and explains why (exit 0
//! allow, 2 deny, 1 error).

use super::validate::load_or_report;
use super::*;
use crate::pdp::Pdp;
use crate::token_cache::TokenCache;

pub(super) use crate::pdp::unix_now as now;

pub(super) fn check(args: CheckArgs) -> ExitCode {
    let Some(policy) = load_or_report(&args.policies) else {
        return Exit::Failure.into();
    };
    if let Err(message) = fetch_remote_keys(&policy) {
        eprintln!("{message}");
        return Exit::Failure.into();
    }
    let credential = match &args.token {
        Some(token) => adapter::credential([format!("Bearer {token}").into()]).into_owned(),
        None => engine::Credential::Absent,
    };
    let request = RequestAttrs {
        method: args.method.into(),
        path: args.path.into(),
        host: args.host.into(),
        destination: args.destination.into(),
        context_extensions: args
            .context_extensions
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect::<BTreeMap<_, _>>(),
        credential,
        request_id: None,
        verified_payloads: BTreeMap::new(),
        headers: BTreeMap::new(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return Exit::Failure.into();
        }
    };
    let policy = std::sync::Arc::new(policy);
    let pdp = Pdp::new(
        std::sync::Arc::new(arc_swap::ArcSwap::new(policy.clone())),
        TokenCache::new(DEFAULT_TOKEN_CACHE_BYTES),
        std::sync::Arc::new(now),
    );
    let decision =
        runtime.block_on(pdp.decide(&policy, &engine::Request::Http(&request), None, now()));
    print!("{}", explain(&decision));
    // Which route came closest, and why it did not take the request:
    // worked out here, on demand, never by the engine while deciding.
    if decision.route.is_none() && !decision.is_allowed() {
        if let Some(unmatched) = engine::explain_unmatched(&policy, &request) {
            println!("  {:<12} {}", "why", unmatched.explanation);
        }
    }
    if decision.is_allowed() {
        Exit::Ok.into()
    } else {
        Exit::Deny.into()
    }
}

/// Fetches, once, the keys of issuers that publish them at a URL.
pub(super) fn fetch_remote_keys(policy: &PolicySet) -> Result<(), String> {
    if policy.issuers.remote_key_sets().next().is_none() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let fetcher = JwksFetcher::new(Box::new(|| {}), None)
        .map_err(|e| format!("cannot build the JWKS client: {e}"))?;
    runtime
        .block_on(fetcher.fetch_all_once(policy))
        .map_err(|(url, e)| format!("cannot fetch {url}: {e}"))
}

/// A decision in words, one field a line.
pub fn explain(decision: &Decision) -> String {
    let verdict = if decision.is_allowed() {
        "allow"
    } else {
        "deny"
    };
    let mut out = format!(
        "{verdict} ({}): {}\n",
        decision.status_code(),
        decision.reason
    );
    let rule = decision.rule_text();
    let fields = [
        ("application", decision.application.as_deref()),
        ("route", decision.route.as_deref()),
        ("subject", decision.subject.as_deref()),
        ("resource", decision.resource.as_deref()),
        ("action", decision.action.as_deref()),
        ("rule", rule.as_deref()),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            out.push_str(&format!("  {name:<12} {value}\n"));
        }
    }
    out
}
