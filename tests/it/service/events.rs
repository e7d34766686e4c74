//! Signed events, checked when the work is done: envelopes opened against
//! real policy directories (keys in files, EdDSA and HMAC), every way an
//! envelope must be refused, replays in memory and across a restart, the
//! HTTP endpoints of a running `portcullis serve`, the CLI, and the
//! revocation story end to end through the worker example.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{
    copy_policies, load, ready_version, send, token, wait_for_new_version, Portcullis, Response,
};
use portcullis::events::envelope::{self, message_digest, Publish, Refusal};
use portcullis::events::{self, ReplayGuard};
use portcullis::policy::{load_policies, PolicySet};
use portcullis::token::Principal;
use portcullis_testkit::{b64url, Signer};
use serde_json::{json, Value};

/// The worker's API key: the caller events are addressed to.
const WORKER_KEY: &str = "worker-key-0123456789abcdef";
/// A caller that may sign for any subject.
const PUBLISHER_KEY: &str = "publisher-key-0123456789abcdef";
/// A caller the policy names but trusts with nothing.
const LIMITED_KEY: &str = "limited-key-0123456789abcdef";

const HMAC_SECRET: &str = "event-secret-0123456789abcdef0123456789";

/// Keys written beside a policy: EdDSA pairs by kid, and one HMAC secret.
struct Keys {
    eddsa: Vec<(String, Signer)>,
}

impl Keys {
    fn new(kids: &[&str]) -> Keys {
        Keys {
            eddsa: kids
                .iter()
                .map(|kid| ((*kid).to_owned(), Signer::eddsa()))
                .collect(),
        }
    }
}

/// `events.yaml` naming `keys` (EdDSA ones verify-only unless in
/// `private`), the HMAC key `hmac`, signing with `sign_with`.
fn events_yaml(keys: &[&str], private: &[&str], sign_with: &str, max_lifetime: u64) -> String {
    let mut text = format!(
        "events:\n  sign_with: {sign_with}\n  default_lifetime_seconds: 600\n  max_lifetime_seconds: {max_lifetime}\n  keys:\n"
    );
    for kid in keys {
        if *kid == "hmac" {
            text.push_str("    - { kid: hmac, algorithm: HS256, secret_file: hmac.secret }\n");
        } else if private.contains(kid) {
            text.push_str(&format!(
                "    - {{ kid: {kid}, algorithm: EdDSA, public_key_file: {kid}.pub.pem, private_key_file: {kid}.pem }}\n"
            ));
        } else {
            text.push_str(&format!(
                "    - {{ kid: {kid}, algorithm: EdDSA, public_key_file: {kid}.pub.pem }}\n"
            ));
        }
    }
    text
}

/// A copy of the bundled policies with callers, the key files of `keys`
/// and the HMAC secret, and `events` as its `events.yaml`.
fn policy_dir(keys: &Keys, events: &str) -> tempfile::TempDir {
    let dir = copy_policies(|_, text| text);
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{name}: {e}"));
    };
    for (kid, signer) in &keys.eddsa {
        write(&format!("{kid}.pem"), signer.private_pem());
        write(&format!("{kid}.pub.pem"), signer.public_pem());
    }
    write("hmac.secret", HMAC_SECRET);
    write("worker.key", WORKER_KEY);
    write("publisher.key", PUBLISHER_KEY);
    write("limited.key", LIMITED_KEY);
    write(
        "event-callers.yaml",
        "callers:
  - name: worker
    api_key: { secret_file: worker.key }
  - name: publisher
    api_key: { secret_file: publisher.key }
    may: [sign]
  - name: limited
    api_key: { secret_file: limited.key }
",
    );
    write("events.yaml", events);
    dir
}

fn alice() -> Principal {
    Principal {
        issuer: "test".into(),
        subject: "alice".into(),
        groups: Vec::new(),
        expires_at: u64::MAX,
        claims: Default::default(),
    }
}

const MESSAGE: &[u8] = br#"{"share":"document:1","with":"bob"}"#;

/// alice shares document:1 (she owns it), for the worker.
fn share<'a>(lifetime: Option<u64>) -> Publish<'a> {
    Publish {
        subject: "alice",
        idp: "test",
        groups: &[],
        action: "share",
        resource: "document:1",
        audience: "worker",
        message_sha256: message_digest(MESSAGE),
        lifetime,
    }
}

fn signed(policy: &PolicySet, now: u64) -> String {
    match events::publish(policy, &alice(), &share(None), now) {
        Ok(Ok(signed)) => signed.envelope,
        other => panic!("alice's share should be signed: {other:?}"),
    }
}

fn open(policy: &PolicySet, envelope: &str, now: u64) -> Result<envelope::EventClaims, Refusal> {
    envelope::open(
        policy.events.as_ref(),
        envelope,
        &message_digest(MESSAGE),
        "worker",
        now,
    )
}

const NOW: u64 = 1_900_000_000;

#[test]
fn an_envelope_opens_with_either_algorithm_and_says_who_did_what() {
    let keys = Keys::new(&["ed-1"]);
    for sign_with in ["ed-1", "hmac"] {
        let dir = policy_dir(
            &keys,
            &events_yaml(&["ed-1", "hmac"], &["ed-1"], sign_with, 3600),
        );
        let policy = load(dir.path());
        let envelope = signed(&policy, NOW);
        let header = jsonwebtoken::decode_header(&envelope).unwrap();
        assert_eq!(header.kid.as_deref(), Some(sign_with));
        assert_eq!(header.typ.as_deref(), Some(envelope::ENVELOPE_TYPE));
        let claims = open(&policy, &envelope, NOW + 10).unwrap();
        assert_eq!(
            (
                claims.sub.as_str(),
                claims.action.as_str(),
                claims.resource.as_str()
            ),
            ("alice", "share", "document:1")
        );
        assert_eq!(claims.aud, "worker");
        assert_eq!(claims.exp, NOW + 600);
        assert_eq!(
            claims.message_sha256,
            envelope::hex(&message_digest(MESSAGE))
        );
        // The token never travels: no claim but the event's own.
        let payload = envelope.split('.').nth(1).unwrap_or_default();
        let decoded = base64_decode(payload);
        let object: Value = serde_json::from_slice(&decoded).unwrap();
        let mut names: Vec<&str> = object
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "action",
                "aud",
                "exp",
                "iat",
                "idp",
                "iss",
                "jti",
                "message_sha256",
                "resource",
                "sub"
            ]
        );
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .expect("base64")
}

/// The envelope with its payload replaced by `edit(payload)`, signature kept.
fn with_payload(envelope: &str, edit: impl Fn(&mut Value)) -> String {
    let parts: Vec<&str> = envelope.split('.').collect();
    let mut payload: Value = serde_json::from_slice(&base64_decode(parts[1])).unwrap();
    edit(&mut payload);
    format!(
        "{}.{}.{}",
        parts[0],
        b64url(payload.to_string().as_bytes()),
        parts[2]
    )
}

#[test]
fn every_tampering_is_refused() {
    let keys = Keys::new(&["ed-1"]);
    let dir = policy_dir(
        &keys,
        &events_yaml(&["ed-1", "hmac"], &["ed-1"], "ed-1", 3600),
    );
    let policy = load(dir.path());
    let envelope = signed(&policy, NOW);
    let later = NOW + 10;

    // The message is not the one signed over.
    let other = envelope::open(
        policy.events.as_ref(),
        &envelope,
        &message_digest(br#"{"share":"document:1","with":"mallory"}"#),
        "worker",
        later,
    );
    assert_eq!(other, Err(Refusal::MessageMismatch));

    // Any field of the envelope changed, the signature kept.
    for (field, value) in [
        ("resource", json!("document:2")),
        ("action", json!("delete")),
        ("sub", json!("carol")),
        ("aud", json!("other-worker")),
        ("exp", json!(NOW + 999_999)),
        ("groups", json!(["auditors"])),
    ] {
        let forged = with_payload(&envelope, |p| p[field] = value.clone());
        assert_eq!(
            open(&policy, &forged, later),
            Err(Refusal::BadSignature),
            "{field}"
        );
    }
    // The signature of another envelope.
    let second = signed(&policy, NOW + 1);
    let spliced = format!(
        "{}.{}",
        envelope.rsplit_once('.').map_or("", |(head, _)| head),
        second.rsplit_once('.').map_or("", |(_, sig)| sig)
    );
    assert_eq!(open(&policy, &spliced, later), Err(Refusal::BadSignature));

    // Garbage, and an envelope over the size limit.
    for bad in ["", "a.b", "a.b.c", "not an envelope", &"x".repeat(9000)] {
        assert_eq!(
            open(&policy, bad, later),
            Err(Refusal::Malformed),
            "{bad:.20}"
        );
    }
}

#[test]
fn a_key_the_policy_does_not_hold_is_refused() {
    let keys = Keys::new(&["ed-1", "ed-2"]);
    let dir = policy_dir(
        &keys,
        &events_yaml(&["ed-1", "hmac"], &["ed-1"], "ed-1", 3600),
    );
    let policy = load(dir.path());
    let claims = json!({
        "iss": "portcullis", "sub": "alice", "idp": "test", "action": "share",
        "resource": "document:1", "aud": "worker", "iat": NOW, "exp": NOW + 60,
        "jti": "0123456789abcdef0123456789abcdef",
        "message_sha256": envelope::hex(&message_digest(MESSAGE)),
    });
    let header = |alg, kid: &str, typ: &str| {
        let mut h = jsonwebtoken::Header::new(alg);
        h.kid = Some(kid.into());
        h.typ = Some(typ.into());
        h
    };
    let ed2 = &keys.eddsa[1].1;
    // Another key under the policy's kid: the signature does not verify.
    let wrong_key = ed2.sign_with(
        &header(
            jsonwebtoken::Algorithm::EdDSA,
            "ed-1",
            envelope::ENVELOPE_TYPE,
        ),
        &claims,
    );
    assert_eq!(open(&policy, &wrong_key, NOW), Err(Refusal::BadSignature));
    // A kid the policy does not know, and none at all.
    let unknown = ed2.sign_with(
        &header(
            jsonwebtoken::Algorithm::EdDSA,
            "ed-2",
            envelope::ENVELOPE_TYPE,
        ),
        &claims,
    );
    assert_eq!(open(&policy, &unknown, NOW), Err(Refusal::UnknownKey));
    let mut no_kid = header(jsonwebtoken::Algorithm::EdDSA, "x", envelope::ENVELOPE_TYPE);
    no_kid.kid = None;
    assert_eq!(
        open(&policy, &ed2.sign_with(&no_kid, &claims), NOW),
        Err(Refusal::UnknownKey)
    );
    // The HMAC secret, but as a plain JWT (a token, not an event).
    let hmac = Signer::hs256(HMAC_SECRET.as_bytes());
    let token = hmac.sign_with(
        &header(jsonwebtoken::Algorithm::HS256, "hmac", "JWT"),
        &claims,
    );
    assert_eq!(open(&policy, &token, NOW), Err(Refusal::WrongType));
    // The right secret and type: it opens (the forgeries above were the test).
    let event = hmac.sign_with(
        &header(
            jsonwebtoken::Algorithm::HS256,
            "hmac",
            envelope::ENVELOPE_TYPE,
        ),
        &claims,
    );
    assert!(open(&policy, &event, NOW).is_ok());
    // The EdDSA public key's bytes as an HMAC secret (algorithm confusion).
    let confused = Signer::hs256(keys.eddsa[0].1.public_pem().as_bytes()).sign_with(
        &header(
            jsonwebtoken::Algorithm::HS256,
            "ed-1",
            envelope::ENVELOPE_TYPE,
        ),
        &claims,
    );
    assert_eq!(open(&policy, &confused, NOW), Err(Refusal::BadSignature));
}

#[test]
fn a_rotated_key_verifies_until_it_is_removed() {
    let keys = Keys::new(&["ed-old", "ed-new"]);
    let before = policy_dir(
        &keys,
        &events_yaml(&["ed-old"], &["ed-old"], "ed-old", 3600),
    );
    let old_envelope = signed(&load(before.path()), NOW);
    // Rotation: sign with the new key, keep the old one to verify.
    let rotated = policy_dir(
        &keys,
        &events_yaml(&["ed-new", "ed-old"], &["ed-new"], "ed-new", 3600),
    );
    let policy = load(rotated.path());
    let new_envelope = signed(&policy, NOW);
    let kid = |e: &str| jsonwebtoken::decode_header(e).ok().and_then(|h| h.kid);
    assert_eq!(kid(&new_envelope).as_deref(), Some("ed-new"));
    assert!(open(&policy, &old_envelope, NOW + 1).is_ok());
    assert!(open(&policy, &new_envelope, NOW + 1).is_ok());
    // Once the old envelopes have expired, the old key goes.
    let retired = policy_dir(
        &keys,
        &events_yaml(&["ed-new"], &["ed-new"], "ed-new", 3600),
    );
    let policy = load(retired.path());
    assert_eq!(
        open(&policy, &old_envelope, NOW + 1),
        Err(Refusal::UnknownKey)
    );
    assert!(open(&policy, &new_envelope, NOW + 1).is_ok());
}

#[test]
fn time_and_audience_bound_an_envelope() {
    let keys = Keys::new(&["ed-1"]);
    let dir = policy_dir(&keys, &events_yaml(&["ed-1"], &["ed-1"], "ed-1", 3600));
    let policy = load(dir.path());
    let envelope = signed(&policy, NOW);
    assert!(open(&policy, &envelope, NOW + 599).is_ok());
    assert_eq!(open(&policy, &envelope, NOW + 600), Err(Refusal::Expired));
    assert_eq!(
        open(
            &policy,
            &envelope,
            NOW - envelope::MAX_CLOCK_SKEW_SECONDS - 1
        ),
        Err(Refusal::NotYetValid)
    );
    let elsewhere = envelope::open(
        policy.events.as_ref(),
        &envelope,
        &message_digest(MESSAGE),
        "another-worker",
        NOW,
    );
    assert_eq!(elsewhere, Err(Refusal::WrongAudience));
    // A lifetime over the policy's maximum is not signed.
    let long = events::publish(&policy, &alice(), &share(Some(3601)), NOW);
    assert!(
        matches!(
            long,
            Err(events::SignError::LifetimeTooLong {
                asked: 3601,
                max: 3600
            })
        ),
        "{long:?}"
    );
    // Nor is an event the subject may not do now.
    let mut not_hers = share(None);
    not_hers.resource = "document:3";
    match events::publish(&policy, &alice(), &not_hers, NOW) {
        Ok(Err(deny)) => assert!(!deny.is_allowed()),
        other => panic!("alice may not share document:3: {other:?}"),
    }
}

#[test]
fn a_replay_is_refused_in_memory_and_with_a_log_across_a_restart() {
    let keys = Keys::new(&["ed-1"]);
    let dir = policy_dir(&keys, &events_yaml(&["ed-1"], &["ed-1"], "ed-1", 3600));
    let policy = load(dir.path());
    let digest = message_digest(MESSAGE);
    let consume = |guard: &ReplayGuard, envelope: &str, now: u64| {
        events::consume(&policy, guard, envelope, &digest, "worker", now)
            .map(|c| c.decision.is_allowed())
    };
    let first = signed(&policy, NOW);

    let memory = ReplayGuard::new(100);
    assert_eq!(consume(&memory, &first, NOW + 1), Ok(true));
    assert_eq!(consume(&memory, &first, NOW + 2), Err(Refusal::Replayed));
    // What memory alone guarantees: a new process has forgotten.
    let restarted = ReplayGuard::new(100);
    assert_eq!(consume(&restarted, &first, NOW + 3), Ok(true));

    // With a log, the ids outlive the process.
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("replay.log");
    let second = signed(&policy, NOW);
    {
        let guard = ReplayGuard::with_log(&log, 100, NOW).unwrap();
        assert_eq!(consume(&guard, &second, NOW + 1), Ok(true));
    }
    let guard = ReplayGuard::with_log(&log, 100, NOW + 2).unwrap();
    assert_eq!(consume(&guard, &second, NOW + 2), Err(Refusal::Replayed));
    // An expired id is forgotten (its envelope is refused as expired anyway).
    let reopened = ReplayGuard::with_log(&log, 100, NOW + 601).unwrap();
    assert!(reopened.is_empty());
    // A torn last line (a crash mid-write) is skipped, the rest kept.
    let third = signed(&policy, NOW);
    {
        let guard = ReplayGuard::with_log(&log, 100, NOW).unwrap();
        assert_eq!(consume(&guard, &third, NOW + 1), Ok(true));
    }
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("19000");
    std::fs::write(&log, text).unwrap();
    let guard = ReplayGuard::with_log(&log, 100, NOW + 2).unwrap();
    assert_eq!(consume(&guard, &third, NOW + 2), Err(Refusal::Replayed));
}

#[test]
fn a_full_replay_memory_refuses_new_events_and_forgets_none() {
    let keys = Keys::new(&["ed-1"]);
    let dir = policy_dir(&keys, &events_yaml(&["ed-1"], &["ed-1"], "ed-1", 3600));
    let policy = load(dir.path());
    let digest = message_digest(MESSAGE);
    // Room for two of the worker's events: its share of the memory.
    let consumers = events::consumers(&policy);
    let guard = ReplayGuard::new(2 * consumers);
    assert_eq!(guard.share(consumers), 2);
    let envelopes: Vec<String> = (0..3).map(|i| signed(&policy, NOW + i)).collect();
    let consume = |envelope: &str, now: u64| {
        events::consume(&policy, &guard, envelope, &digest, "worker", now).map(|_| ())
    };
    assert_eq!(consume(&envelopes[0], NOW + 3), Ok(()));
    assert_eq!(consume(&envelopes[1], NOW + 3), Ok(()));
    assert_eq!(
        consume(&envelopes[2], NOW + 3),
        Err(Refusal::ReplayCallerFull)
    );
    assert_eq!(consume(&envelopes[0], NOW + 3), Err(Refusal::Replayed));
    // Once the first has expired, there is room again.
    assert_eq!(consume(&envelopes[2], NOW + 600), Ok(()));
}

/// Issue 21: one caller consuming its own events filled the memory every
/// worker shares, and every other worker then got `replay_cache_full`.
#[test]
fn one_consumer_cannot_fill_the_replay_memory_for_the_others() {
    let keys = Keys::new(&["ed-1"]);
    let dir = policy_dir(&keys, &events_yaml(&["ed-1"], &["ed-1"], "ed-1", 3600));
    let policy = load(dir.path());
    let digest = message_digest(MESSAGE);
    let consumers = events::consumers(&policy);
    assert!(consumers >= 2, "the policy names {consumers} callers");
    let guard = ReplayGuard::new(3 * consumers);
    let signed_for = |audience: &str, i: u64| {
        let event = Publish {
            audience,
            ..share(None)
        };
        match events::publish(&policy, &alice(), &event, NOW + i) {
            Ok(Ok(signed)) => signed.envelope,
            other => panic!("alice's share should be signed: {other:?}"),
        }
    };
    let consume = |audience: &str, envelope: &str| {
        events::consume(&policy, &guard, envelope, &digest, audience, NOW + 5).map(|_| ())
    };
    // The worker consumes as many of its own events as it can.
    let mut accepted: usize = 0;
    let refusal = loop {
        match consume("worker", &signed_for("worker", (accepted % 5) as u64)) {
            Ok(()) => accepted += 1,
            Err(refusal) => break refusal,
        }
        assert!(
            accepted <= 3 * consumers,
            "the worker filled the whole memory"
        );
    };
    assert_eq!(refusal, Refusal::ReplayCallerFull);
    assert_eq!(accepted, 3, "the worker's share");
    // Another caller still consumes its events, its whole share.
    for i in 0..3 {
        assert_eq!(consume("publisher", &signed_for("publisher", i)), Ok(()));
    }
    assert_eq!(
        consume("publisher", &signed_for("publisher", 3)),
        Err(Refusal::ReplayCallerFull)
    );
}

/// Issue 21: a failed partial write left a torn line, the next id was
/// appended to it, and after a restart that event was accepted again.
#[test]
fn a_torn_write_in_the_replay_log_never_lets_the_next_event_be_replayed() {
    let keys = Keys::new(&["ed-1"]);
    let dir = policy_dir(&keys, &events_yaml(&["ed-1"], &["ed-1"], "ed-1", 3600));
    let policy = load(dir.path());
    let digest = message_digest(MESSAGE);
    let consume = |guard: &ReplayGuard, envelope: &str, now: u64| {
        events::consume(&policy, guard, envelope, &digest, "worker", now).map(|_| ())
    };
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("replay.log");
    let (first, second) = (signed(&policy, NOW), signed(&policy, NOW));
    {
        let guard = ReplayGuard::with_log(&log, 100, NOW).unwrap();
        assert_eq!(consume(&guard, &first, NOW + 1), Ok(()));
        // A write that stopped part way (a full disk, then space again):
        // the start of a line, no newline.
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut file, format!("{} worker 9f3a", NOW + 600).as_bytes())
            .unwrap();
        // The next event's line lands right after the torn one.
        assert_eq!(consume(&guard, &second, NOW + 2), Ok(()));
    }
    let restarted = ReplayGuard::with_log(&log, 100, NOW + 3).unwrap();
    assert_eq!(
        consume(&restarted, &second, NOW + 3),
        Err(Refusal::Replayed)
    );
    assert_eq!(consume(&restarted, &first, NOW + 3), Err(Refusal::Replayed));
    assert_eq!(restarted.load_report().recovered, 1);
    // A damaged line in the middle is skipped and counted, the rest kept.
    let third = signed(&policy, NOW);
    assert_eq!(consume(&restarted, &third, NOW + 4), Ok(()));
    drop(restarted);
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{text}");
    lines[0] = lines[0].replace(' ', "  ");
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let reopened = ReplayGuard::with_log(&log, 100, NOW + 5).unwrap();
    assert_eq!(reopened.load_report().bad_lines, 1);
    assert_eq!(reopened.load_report().first_bad_line, Some(1));
    assert_eq!(reopened.len(), 2);
    assert_eq!(consume(&reopened, &third, NOW + 5), Err(Refusal::Replayed));
}

#[test]
fn a_broken_events_section_is_refused_with_its_reason() {
    let keys = Keys::new(&["ed-1", "ed-2"]);
    let cases: Vec<(String, &str)> = vec![
        (events_yaml(&["ed-1"], &[], "ed-1", 3600), "can only verify"),
        (events_yaml(&["ed-1"], &["ed-1"], "ed-9", 3600), "is not among the keys"),
        (events_yaml(&["ed-1"], &["ed-1"], "ed-1", 0), "max_lifetime_seconds"),
        (
            "events:\n  keys:\n    - { kid: short, algorithm: HS256, secret_file: short.secret }\n".into(),
            "at least 32 are needed",
        ),
        (
            "events:\n  keys:\n    - { kid: rsa, algorithm: RS256, public_key_file: ed-1.pub.pem }\n".into(),
            "not an event algorithm",
        ),
        (
            "events:\n  keys:\n    - { kid: mixed, algorithm: EdDSA, public_key_file: ed-1.pub.pem, private_key_file: ed-2.pem }\n".into(),
            "does not match",
        ),
        (
            "events:\n  keys:\n    - { kid: gone, algorithm: EdDSA, public_key_file: missing.pem }\n".into(),
            "cannot read",
        ),
    ];
    for (events, expected) in cases {
        let dir = policy_dir(&keys, &events);
        std::fs::write(dir.path().join("short.secret"), "too-short").unwrap();
        match load_policies(dir.path()) {
            Ok(_) => panic!("loaded:\n{events}"),
            Err(errors) => {
                let text = errors.to_string();
                assert!(
                    text.contains(expected) && text.contains("events.yaml"),
                    "{events}\nexpected {expected:?} in:\n{text}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Over HTTP, through a running `portcullis serve`
// ---------------------------------------------------------------------------

fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &Value) -> Response {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(port, "POST", path, &all, body.to_string().as_bytes())
}

fn json_of(response: &Response) -> Value {
    response
        .json()
        .unwrap_or_else(|| panic!("not JSON ({}): {}", response.status, response.text()))
}

const SIGN: &str = "/portcullis/v1/events/sign";
const VERIFY: &str = "/portcullis/v1/events/verify";

fn share_request(subject: &str, resource_id: &str, message: &str) -> Value {
    json!({
        "subject": { "type": "user", "id": subject },
        "action": { "name": "share" },
        "resource": { "type": "document", "id": resource_id },
        "audience": "worker",
        "message": message,
    })
}

fn alice_token() -> String {
    token("alice")
}

/// Signs alice's share of `document:1` over HTTP with her own token.
fn sign_as_alice(api: u16, message: &str) -> String {
    let bearer = format!("Bearer {}", alice_token());
    let response = post(
        api,
        SIGN,
        &[("authorization", &bearer)],
        &share_request("alice", "1", message),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let answer = json_of(&response);
    assert_eq!(answer["decision"], json!(true), "{answer}");
    answer["envelope"]
        .as_str()
        .unwrap_or_else(|| panic!("no envelope: {answer}"))
        .to_owned()
}

#[test]
fn who_may_sign_and_who_may_consume() {
    let keys = Keys::new(&["ed-1"]);
    let dir = policy_dir(&keys, &events_yaml(&["ed-1"], &["ed-1"], "ed-1", 3600));
    let server = Portcullis::start_with_api(dir.path(), &[]);
    let api = server.api_port();
    let message = r#"{"with":"bob"}"#;

    // A caller trusted with nothing may not sign for alice.
    let limited = post(
        api,
        SIGN,
        &[("x-api-key", LIMITED_KEY)],
        &share_request("alice", "1", message),
    );
    assert_eq!(limited.status, 403, "{}", limited.text());
    assert!(
        limited
            .text()
            .contains("may only sign events for the subject"),
        "{}",
        limited.text()
    );
    // Nor may alice's token sign for bob.
    let bearer = format!("Bearer {}", alice_token());
    let for_bob = post(
        api,
        SIGN,
        &[("authorization", &bearer)],
        &share_request("bob", "1", message),
    );
    assert_eq!(for_bob.status, 403, "{}", for_bob.text());
    // A caller with `sign` may, for any subject; the policy still decides.
    let published = post(
        api,
        SIGN,
        &[("x-api-key", PUBLISHER_KEY)],
        &share_request("alice", "1", message),
    );
    assert_eq!(
        json_of(&published)["decision"],
        json!(true),
        "{}",
        published.text()
    );
    let bob_may_not = post(
        api,
        SIGN,
        &[("x-api-key", PUBLISHER_KEY)],
        &share_request("bob", "1", message),
    );
    assert_eq!(json_of(&bob_may_not), json!({ "decision": false }));
    // No credential, and a request without an audience.
    assert_eq!(
        post(api, SIGN, &[], &share_request("alice", "1", message)).status,
        401
    );
    let mut no_audience = share_request("alice", "1", message);
    no_audience.as_object_mut().map(|o| o.remove("audience"));
    let missing = post(api, SIGN, &[("x-api-key", PUBLISHER_KEY)], &no_audience);
    assert_eq!(missing.status, 400);
    assert!(missing.text().contains("audience"), "{}", missing.text());

    let envelope = sign_as_alice(api, message);
    let verify = json!({ "envelope": envelope, "message": message });
    // A user token is no consumer, and the events are not the limited caller's.
    let by_user = post(api, VERIFY, &[("authorization", &bearer)], &verify);
    assert_eq!(by_user.status, 403, "{}", by_user.text());
    let by_other = json_of(&post(api, VERIFY, &[("x-api-key", LIMITED_KEY)], &verify));
    assert_eq!(
        by_other["refused"]["code"],
        json!("wrong_audience"),
        "{by_other}"
    );
    // A changed message.
    let tampered = json!({ "envelope": envelope, "message": r#"{"with":"mallory"}"# });
    let answer = json_of(&post(api, VERIFY, &[("x-api-key", WORKER_KEY)], &tampered));
    assert_eq!(
        answer["refused"]["code"],
        json!("message_mismatch"),
        "{answer}"
    );
    // The worker, once; then it is a replay.
    let answer = json_of(&post(api, VERIFY, &[("x-api-key", WORKER_KEY)], &verify));
    assert_eq!(answer["decision"], json!(true), "{answer}");
    assert_eq!(answer["event"]["subject"]["id"], json!("alice"));
    assert_eq!(answer["event"]["resource"], json!("document:1"));
    let again = json_of(&post(api, VERIFY, &[("x-api-key", WORKER_KEY)], &verify));
    assert_eq!(again["refused"]["code"], json!("replayed"), "{again}");
}

/// The worker example's binary, built by `cargo test` beside this test.
fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("no target directory above {}", exe.display()));
    let worker = debug.join("examples").join("event-worker");
    assert!(
        worker.is_file(),
        "{} is missing: `cargo test` builds the examples",
        worker.display()
    );
    worker
}

/// Runs the worker example with `args`; its output lines.
fn worker(args: &[&str]) -> Vec<String> {
    let out = Command::new(worker_binary())
        .args(args)
        .output()
        .expect("event-worker");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "event-worker failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// Runs the worker on `queue` with the worker's API key in `dir`.
fn run_worker(api: u16, dir: &Path, queue: &Path) -> Vec<String> {
    worker(&[
        "work",
        "--api",
        &format!("http://127.0.0.1:{api}"),
        "--api-key-file",
        &dir.join("worker.key").display().to_string(),
        "--queue",
        &queue.display().to_string(),
    ])
}

/// Writes `grants.yaml` by rename and waits for the server to serve it.
fn rewrite_grants(dir: &Path, server: &Portcullis, edit: impl Fn(String) -> String) {
    let path = dir.join("grants.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let old = ready_version(server.admin_port()).expect("not ready");
    let staging = dir.join(".grants.yaml.tmp");
    std::fs::write(&staging, edit(text)).unwrap();
    std::fs::rename(&staging, &path).unwrap();
    wait_for_new_version(server.admin_port(), &old, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the new grants were not loaded:\n{}", server.log()));
}

const ALICE_OWNS_1: &str = "  - subject: alice\n    role: owner\n    resource: document:1\n";

#[test]
fn a_revoked_grant_stops_the_work_and_a_restored_one_lets_new_work_through() {
    let keys = Keys::new(&["ed-1"]);
    let dir = policy_dir(&keys, &events_yaml(&["ed-1"], &["ed-1"], "ed-1", 3600));
    let replay_log = dir.path().join("replay.log");
    let replay_env = replay_log.display().to_string();
    let mut server = Portcullis::start_with_api(
        dir.path(),
        &[("PORTCULLIS_EVENT_REPLAY_LOG", replay_env.as_str())],
    );
    let work = tempfile::tempdir().unwrap();
    let queue = work.path().join("queue.jsonl");

    // alice shares document 1: the service signs the event with her token
    // and queues it.
    let publish = || {
        worker(&[
            "publish",
            "--api",
            &format!("http://127.0.0.1:{}", server.api_port()),
            "--token",
            &token("alice"),
            "--subject",
            "alice",
            "--action",
            "share",
            "--resource",
            "document:1",
            "--audience",
            "worker",
            "--message",
            r#"{"with":"bob"}"#,
            "--queue",
            &queue.display().to_string(),
        ])
    };
    let published = publish();
    assert!(
        published[0].starts_with("queued ")
            && published[0].ends_with(": alice share document:1 for worker"),
        "{published:?}"
    );

    // Her ownership is revoked before the worker gets to it.
    let grants = std::fs::read_to_string(dir.path().join("grants.yaml")).unwrap();
    rewrite_grants(dir.path(), &server, |text| {
        assert!(
            text.contains(ALICE_OWNS_1),
            "grants.yaml changed: update this test"
        );
        text.replace(ALICE_OWNS_1, "")
    });
    let lines = run_worker(server.api_port(), dir.path(), &queue);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("refused line 1: ") && lines[0].ends_with(": denied"),
        "{lines:?}"
    );

    // Restored: the old event was judged once and stays refused; a newly
    // signed one is done.
    rewrite_grants(dir.path(), &server, |_| grants.clone());
    publish();
    let lines = run_worker(server.api_port(), dir.path(), &queue);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], "refused line 1: replayed");
    assert!(
        lines[1].starts_with("done line 2: ") && lines[1].contains("alice share document:1"),
        "{lines:?}"
    );

    // Restarted with the same replay log: both stay consumed.
    server.kill();
    let server = Portcullis::start_with_api(
        dir.path(),
        &[("PORTCULLIS_EVENT_REPLAY_LOG", replay_env.as_str())],
    );
    let lines = run_worker(server.api_port(), dir.path(), &queue);
    assert_eq!(
        lines,
        ["refused line 1: replayed", "refused line 2: replayed"]
    );
}

#[test]
fn the_cli_signs_and_verifies_once() {
    let keys = Keys::new(&["ed-1"]);
    let dir = policy_dir(&keys, &events_yaml(&["ed-1"], &["ed-1"], "ed-1", 3600));
    let message = dir.path().join("message.json");
    std::fs::write(&message, MESSAGE).unwrap();
    let portcullis = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .output()
            .expect("portcullis")
    };
    let policies = dir.path().display().to_string();
    let message_path = message.display().to_string();
    let sign = portcullis(&[
        "event",
        "sign",
        "--policies",
        &policies,
        "--subject",
        "alice",
        "--action",
        "share",
        "--resource",
        "document:1",
        "--audience",
        "worker",
        "--message-file",
        &message_path,
    ]);
    assert_eq!(
        sign.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&sign.stderr)
    );
    let envelope = String::from_utf8_lossy(&sign.stdout).trim().to_owned();
    let log = dir.path().join("cli-replay.log").display().to_string();
    let verify = |digest: &str| {
        portcullis(&[
            "event",
            "verify",
            "--policies",
            &policies,
            "--audience",
            "worker",
            "--envelope",
            &envelope,
            "--message-sha256",
            digest,
            "--replay-log",
            &log,
        ])
    };
    let digest = envelope::hex(&message_digest(MESSAGE));
    let first = verify(&digest);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let answer: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(answer["event"]["subject"], json!("alice"));
    let second = verify(&digest);
    assert_eq!(second.status.code(), Some(2));
    let answer: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(answer["refused"]["code"], json!("replayed"));
    // bob may not share document 1: nothing is signed.
    let denied = portcullis(&[
        "event",
        "sign",
        "--policies",
        &policies,
        "--subject",
        "bob",
        "--action",
        "share",
        "--resource",
        "document:1",
        "--audience",
        "worker",
        "--message-file",
        &message_path,
    ]);
    assert_eq!(denied.status.code(), Some(2));
    assert!(denied.stdout.is_empty());
}
