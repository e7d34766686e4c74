//! `portcullis token`: mints a token for an HMAC issuer of the policy
//! (development only).

use super::check::now;
use super::validate::load_or_report;
use super::*;

pub(super) fn token(args: TokenArgs) -> ExitCode {
    let Some(policy) = load_or_report(&args.policies) else {
        return Exit::Failure.into();
    };
    let issuer = policy
        .issuers
        .position(&args.issuer)
        .and_then(|i| policy.issuers.get(i));
    let Some(issuer) = issuer else {
        eprintln!("no issuer named {:?} in the policy", args.issuer);
        return Exit::Failure.into();
    };
    let (KeySet::Single(key), Some(&alg)) = (&issuer.keys, issuer.algorithms.first()) else {
        eprintln!("issuer {:?} has no single key", args.issuer);
        return Exit::Failure.into();
    };
    let Ok(secret) = key.try_get_as_bytes() else {
        eprintln!(
            "issuer {:?} is not an HMAC issuer: only its IdP can mint tokens",
            args.issuer
        );
        return Exit::Failure.into();
    };
    let issued = now();
    let mut claims = serde_json::json!({
        "iss": issuer.issuer,
        "aud": issuer.audiences.first(),
        issuer.subject_claim.clone(): args.subject,
        "iat": issued,
        "exp": issued + args.ttl,
    });
    if let (Some(claim), false) = (&issuer.groups_claim, args.groups.is_empty()) {
        claims[claim] = serde_json::json!(args.groups);
    }
    match jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret),
    ) {
        Ok(token) => {
            println!("{token}");
            Exit::Ok.into()
        }
        Err(e) => {
            eprintln!("cannot sign the token: {e}");
            Exit::Failure.into()
        }
    }
}
