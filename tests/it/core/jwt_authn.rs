//! jwt_authn mode: Envoy's jwt_authn filter verifies the token and passes
//! its payload in dynamic metadata; an issuer marked `jwt_authn` trusts that
//! payload, and a raw Authorization header proves nothing for it. Here with
//! hand-built CheckRequests; through the real filter in `e2e::jwt_authn`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::support::copy_policies;
use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value as ProtoValue};
use portcullis::adapter::ResponseConfig;
use portcullis::engine::Reason;
use portcullis::policy::load_policies;
use portcullis::server::Authorizer;
use portcullis::token::TokenError;
use portcullis::token_cache::TokenCache;
use portcullis_testkit::{Check, Signer};
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000;

/// The bundled policies with the demo issuer switched to jwt_authn mode.
pub(crate) fn jwt_authn_policies() -> tempfile::TempDir {
    copy_policies(|name, text| {
        if name != "issuers.yaml" {
            return text;
        }
        let trusted = text.replace(
            "    algorithms: [HS256]\n    key:\n      secret_file: demo.secret\n",
            "    jwt_authn:\n      payload_key: jwt_payload\n",
        );
        assert!(trusted.contains("jwt_authn"), "issuers.yaml changed shape");
        trusted
    })
}

fn proto(value: &Value) -> ProtoValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(proto).collect(),
        }),
        Value::Object(fields) => Kind::StructValue(Struct {
            fields: fields.iter().map(|(k, v)| (k.clone(), proto(v))).collect(),
        }),
    };
    ProtoValue { kind: Some(kind) }
}

fn request(path: &str, payload: Option<Value>, authorization: Option<&str>) -> CheckRequest {
    let metadata = payload.map(|payload| Metadata {
        filter_metadata: HashMap::from([(
            "envoy.filters.http.jwt_authn".to_owned(),
            Struct {
                fields: [("jwt_payload".to_owned(), proto(&payload))]
                    .into_iter()
                    .collect(),
            },
        )]),
        ..Default::default()
    });
    let mut request = Check::get(path).authorization(authorization).build();
    if let Some(attributes) = request.attributes.as_mut() {
        attributes.metadata_context = metadata;
    }
    request
}

fn authorizer() -> &'static Authorizer {
    static AUTHORIZER: OnceLock<Authorizer> = OnceLock::new();
    AUTHORIZER.get_or_init(|| {
        let dir = jwt_authn_policies();
        let policy = load_policies(dir.path()).unwrap();
        Authorizer::new(
            Arc::new(ArcSwap::from_pointee(policy)),
            TokenCache::new(100),
            ResponseConfig::default(),
            Arc::new(|| NOW),
        )
    })
}

fn payload(sub: &str) -> Value {
    json!({ "iss": "https://idp.example.com", "aud": "documents-api", "sub": sub, "exp": NOW + 60 })
}

#[test]
fn a_verified_payload_names_the_subject() {
    let (decision, _) = portcullis_testkit::ready(authorizer().check_request(&request(
        "/documents/1",
        Some(payload("bob")),
        None,
    )));
    assert!(decision.is_allowed(), "{decision:?}");
    assert_eq!(decision.subject.as_deref(), Some("bob"));
    let (decision, _) = portcullis_testkit::ready(authorizer().check_request(&request(
        "/documents/2",
        Some(payload("bob")),
        None,
    )));
    assert_eq!(decision.reason, Reason::NoGrant);
    // Groups come from the payload's groups claim.
    let mut dave = payload("dave");
    dave["groups"] = json!(["auditors"]);
    let (decision, _) = portcullis_testkit::ready(authorizer().check_request(&request(
        "/documents/9",
        Some(dave),
        None,
    )));
    assert!(decision.is_allowed(), "{decision:?}");
}

#[test]
fn without_metadata_a_raw_token_proves_nothing() {
    // Even a well-formed token with the right claims: nobody verified it.
    let claims = payload("carol");
    let forged = Signer::hs256(b"0123456789abcdef0123456789abcdef").sign(&claims);
    let bearer = format!("Bearer {forged}");
    let (decision, _) = portcullis_testkit::ready(authorizer().check_request(&request(
        "/documents/1",
        None,
        Some(&bearer),
    )));
    assert_eq!(
        decision.reason,
        Reason::InvalidToken(TokenError::UnknownIssuer)
    );
    assert_eq!(decision.status_code(), 401);
    let (decision, _) =
        portcullis_testkit::ready(authorizer().check_request(&request("/documents/1", None, None)));
    assert_eq!(decision.reason, Reason::MissingCredentials);
}

#[test]
fn a_payload_is_still_checked() {
    let cases = [
        (
            json!({ "iss": "https://evil.example.com", "aud": "documents-api", "sub": "carol", "exp": NOW + 60 }),
            TokenError::WrongIssuer,
        ),
        (
            json!({ "iss": "https://idp.example.com", "aud": "other-api", "sub": "carol", "exp": NOW + 60 }),
            TokenError::WrongAudience,
        ),
        (
            json!({ "iss": "https://idp.example.com", "aud": "documents-api", "sub": "carol", "exp": NOW - 31 }),
            TokenError::Expired,
        ),
        (
            json!({ "iss": "https://idp.example.com", "aud": "documents-api", "sub": "carol" }),
            TokenError::MissingClaim("exp".into()),
        ),
        (
            json!({ "iss": "https://idp.example.com", "aud": "documents-api", "exp": NOW + 60 }),
            TokenError::BadSubject,
        ),
    ];
    for (claims, error) in cases {
        let (decision, _) = portcullis_testkit::ready(authorizer().check_request(&request(
            "/documents/1",
            Some(claims.clone()),
            None,
        )));
        assert_eq!(decision.reason, Reason::InvalidToken(error), "{claims}");
    }
    // An audience list is fine when it holds an accepted value.
    let mut listed = payload("alice");
    listed["aud"] = json!(["other-api", "documents-api"]);
    assert!(
        portcullis_testkit::ready(authorizer().check_request(&request(
            "/documents/1",
            Some(listed),
            None
        )))
        .0
        .is_allowed()
    );
}
