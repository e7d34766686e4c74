//! Signed events consumed once across replicas: two in-process replicas on
//! one grants database, each asked to verify the same envelope at the same
//! moment; the consumer's share counted across both; expiry, `db prune`;
//! and a database that cannot record an id refuses the event unconsumed.

use std::sync::Barrier;

use super::{connect, database, import, runtime, Replica};
use crate::support::{copy_policies, load, send};
use portcullis::grants_db::DatabaseConfig;
use serde_json::{json, Value};

const WORKER_KEY: &str = "worker-key-0123456789abcdef";
const PUBLISHER_KEY: &str = "publisher-key-0123456789abcdef";
const SIGN: &str = "/portcullis/v1/events/sign";
const VERIFY: &str = "/portcullis/v1/events/verify";
const MESSAGE: &str = r#"{"share":"document:1","with":"bob"}"#;

/// The bundled policies with an HMAC events key, a worker that consumes
/// and a publisher that may sign for any subject.
fn event_policies() -> tempfile::TempDir {
    let dir = copy_policies(|_, text| text);
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{name}: {e}"));
    };
    write("hmac.secret", "event-secret-0123456789abcdef0123456789");
    write("worker.key", WORKER_KEY);
    write("publisher.key", PUBLISHER_KEY);
    write(
        "event-callers.yaml",
        "callers:
  - name: worker
    api_key: { secret_file: worker.key }
  - name: publisher
    api_key: { secret_file: publisher.key }
    may: [sign]
",
    );
    write(
        "events.yaml",
        "events:
  sign_with: hmac
  default_lifetime_seconds: 600
  max_lifetime_seconds: 3600
  keys:
    - { kid: hmac, algorithm: HS256, secret_file: hmac.secret }
",
    );
    dir
}

fn post(replica: &Replica, path: &str, key: &str, body: &Value) -> Value {
    let response = send(
        replica.api_port(),
        "POST",
        path,
        &[("content-type", "application/json"), ("x-api-key", key)],
        body.to_string().as_bytes(),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    response
        .json()
        .unwrap_or_else(|| panic!("not JSON: {}", response.text()))
}

/// alice shares document:1, signed by `replica` for the worker: (id, envelope).
fn sign(replica: &Replica) -> (String, String) {
    let answer = post(
        replica,
        SIGN,
        PUBLISHER_KEY,
        &json!({
            "subject": { "type": "user", "id": "alice" },
            "action": { "name": "share" },
            "resource": { "type": "document", "id": "1" },
            "audience": "worker",
            "message": MESSAGE,
        }),
    );
    assert_eq!(answer["decision"], json!(true), "{answer}");
    (
        answer["id"].as_str().unwrap().to_owned(),
        answer["envelope"].as_str().unwrap().to_owned(),
    )
}

/// The worker verifies `envelope` at `replica`: `Ok(())` when accepted,
/// else the refusal's code.
fn verify(replica: &Replica, envelope: &str) -> Result<(), String> {
    let answer = post(
        replica,
        VERIFY,
        WORKER_KEY,
        &json!({ "envelope": envelope, "message": MESSAGE }),
    );
    if answer["decision"] == json!(true) {
        return Ok(());
    }
    Err(answer["refused"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("neither accepted nor refused: {answer}"))
        .to_owned())
}

fn rows(url: &str, sql: &str) -> i64 {
    runtime().block_on(async {
        let client = connect(&DatabaseConfig::new(url)).await;
        client.query_one(sql, &[]).await.unwrap().get(0)
    })
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl): make test runs it when found"]
fn an_event_is_consumed_once_across_replicas() {
    let (mut pg, url) = database("events");
    let dir = event_policies();
    let policy = load(dir.path());
    import(&url, &policy);
    // Each consumer's share: 25 unexpired ids, counted across replicas.
    let share = 25;
    let capacity = share * portcullis::events::consumers(&policy);
    let start = || {
        let mut config = crate::support::serve_config(dir.path());
        config.grants_db = Some(super::db_config(&url, std::time::Duration::from_secs(30)));
        if let Some(api) = config.api.as_mut() {
            api.replay_capacity = capacity;
        }
        Replica::with_config(config)
    };
    let (a, b) = (start(), start());

    // One envelope, both replicas at once: exactly one accepts, the
    // other refuses it as a replay. Twenty times, so the race is real.
    let mut accepted = Vec::new();
    for round in 0..20 {
        let (id, envelope) = sign(if round % 2 == 0 { &a } else { &b });
        let barrier = Barrier::new(2);
        let (at_a, at_b) = std::thread::scope(|s| {
            let at = |replica: &'static str| {
                let (barrier, envelope) = (&barrier, &envelope);
                let replica = if replica == "a" { &a } else { &b };
                move || {
                    barrier.wait();
                    verify(replica, envelope)
                }
            };
            let one = s.spawn(at("a"));
            let other = s.spawn(at("b"));
            (one.join().unwrap(), other.join().unwrap())
        });
        match (&at_a, &at_b) {
            (Ok(()), Err(code)) | (Err(code), Ok(())) => assert_eq!(code, "replayed"),
            _ => panic!("round {round}: a {at_a:?}, b {at_b:?}: not exactly one accept"),
        }
        accepted.push((id, envelope));
    }
    assert_eq!(
        rows(&url, "SELECT count(*) FROM portcullis_consumed_events"),
        20
    );

    // The share is counted in the database, whichever replica consumes:
    // five more fit, the next is refused (and not consumed).
    for _ in 0..5 {
        let (_, envelope) = sign(&a);
        assert_eq!(verify(&b, &envelope), Ok(()));
    }
    let (_, over) = sign(&a);
    assert_eq!(verify(&a, &over), Err("replay_caller_full".into()));
    assert_eq!(verify(&b, &over), Err("replay_caller_full".into()));

    // Ten ids expire (as if their envelopes were an hour and more past
    // their expiry): the worker has room again, and `db prune` deletes them.
    let aged = runtime().block_on(async {
        let client = connect(&DatabaseConfig::new(url.clone())).await;
        client
            .execute(
                "UPDATE portcullis_consumed_events SET expires_at = \
                 extract(epoch FROM now())::bigint - 7200 \
                 WHERE id IN (SELECT id FROM portcullis_consumed_events ORDER BY id LIMIT 10)",
                &[],
            )
            .await
            .unwrap()
    });
    assert_eq!(aged, 10);
    assert_eq!(verify(&b, &over), Ok(()));
    let prune = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["db", "prune", "--database-url", &url])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&prune.stdout);
    assert!(prune.status.success(), "{said}");
    assert!(
        said.contains("pruned 10 consumed event ids"),
        "{said}{}",
        String::from_utf8_lossy(&prune.stderr)
    );
    assert_eq!(
        rows(&url, "SELECT count(*) FROM portcullis_consumed_events"),
        16
    );
    // An id prune kept is still refused, at either replica.
    let kept: Vec<String> = runtime().block_on(async {
        let client = connect(&DatabaseConfig::new(url.clone())).await;
        client
            .query("SELECT id FROM portcullis_consumed_events", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    });
    let (_, envelope) = accepted
        .iter()
        .find(|(id, _)| kept.contains(id))
        .expect("an accepted id prune kept");
    assert_eq!(verify(&a, envelope), Err("replayed".into()));
    assert_eq!(verify(&b, envelope), Err("replayed".into()));

    // The database goes away: the grants still serve from the cache (the
    // grace period), but the id cannot be recorded, so the event is
    // refused and not consumed. Once the database is back it is accepted,
    // once.
    let (_, envelope) = sign(&a);
    pg.stop();
    assert_eq!(verify(&a, &envelope), Err("replay_unavailable".into()));
    pg.start_again();
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the event accepted once the database is back",
        || match verify(&a, &envelope) {
            Ok(()) => true,
            Err(code) => {
                assert_eq!(code, "replay_unavailable", "never consumed before");
                false
            }
        },
    );
    assert_eq!(verify(&b, &envelope), Err("replayed".into()));
}
