//! The demo issuer's secret for this test process and the tokens it signs
//! by the wall clock, for tests of the running binary (which reads the
//! wall clock itself). Keys, claims and signing are
//! `portcullis_testkit::token`'s; this adds only the per-process secret.

use std::sync::OnceLock;

use jsonwebtoken::Algorithm;
// Re-exported for the tests; each test binary uses only some of them.
#[allow(unused_imports)]
pub use portcullis_testkit::{
    alg_none_token, b64url, bearer, unix_now, Claims, Signer, DEMO_AUDIENCE as AUDIENCE,
    DEMO_ISSUER as ISSUER,
};
use rand::distributions::{Alphanumeric, DistString};
use serde_json::Value;

/// The demo issuer's HS256 secret for this test process: random, 48
/// alphanumerics, in the `demo.secret` file of every policy copy and in
/// `PORTCULLIS_DEMO_SECRET` of every child process.
pub fn test_secret() -> &'static str {
    static SECRET: OnceLock<String> = OnceLock::new();
    SECRET.get_or_init(|| Alphanumeric.sample_string(&mut rand::thread_rng(), 48))
}

/// The demo issuer's key: HS256 with [`test_secret`].
pub fn demo_signer() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| Signer::hs256(test_secret().as_bytes()))
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    i64::try_from(unix_now()).unwrap_or(i64::MAX)
}

/// What the demo issuer would hand `sub` now: valid for 5 minutes.
pub fn demo_claims(sub: &str) -> Claims {
    Claims::demo(sub, unix_now())
}

/// Signs any JSON claim set with an HMAC algorithm and secret.
pub fn sign(claims: &Value, alg: Algorithm, secret: &[u8]) -> String {
    Signer::hmac(alg, secret).sign(claims)
}

/// The demo issuer's token with any claim left out (`None`); offsets are
/// seconds from now.
pub fn mint(
    sub: Option<&str>,
    groups: Option<&[&str]>,
    exp_offset: Option<i64>,
    nbf_offset: Option<i64>,
    iss: Option<&str>,
    aud: Option<&str>,
) -> String {
    Claims {
        sub: sub.map(str::to_owned),
        groups: groups.map(|gs| gs.iter().map(|g| (*g).to_owned()).collect()),
        iss: iss.map(str::to_owned),
        aud: aud.map(str::to_owned),
        exp_offset,
        nbf_offset,
        ..demo_claims("")
    }
    .sign(demo_signer())
}

/// A valid token for `sub` with no groups claim.
pub fn token(sub: &str) -> String {
    demo_claims(sub).sign(demo_signer())
}

/// A valid token for `sub` carrying a `groups` claim.
pub fn token_with_groups(sub: &str, groups: &[&str]) -> String {
    demo_claims(sub).groups(groups).sign(demo_signer())
}
