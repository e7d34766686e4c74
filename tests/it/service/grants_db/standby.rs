//! Reading grants from a read replica: a hot standby of the private
//! primary (`pg_basebackup -R`, a second private server), the service's
//! grants database URL pointed at it. A check carrying a revision the
//! standby has not replayed is never answered from the older state the
//! standby holds: replay is paused on the standby so that it lags for
//! certain, and the check is denied `grants_unavailable` until replay
//! resumes. The change feed, which cannot LISTEN on a standby, polls;
//! writes go to the primary (`write_url`).

use std::time::Duration;

use super::{connect, counter, database, grant, import, policies, Replica, WRITER_KEY};
use crate::support::{eventually, load};
use portcullis::grants_db::DatabaseConfig;
use serde_json::json;

async fn replay_state(standby: &tokio_postgres::Client) -> String {
    standby
        .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
        .await
        .unwrap()
        .get(0)
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl): make test runs it when found"]
fn a_standby_that_lags_is_never_read_as_if_it_had_caught_up() {
    let (primary, primary_url) = database("replicated");
    let dir = policies();
    import(&primary_url, &load(dir.path()));
    let standby = primary.standby();
    let standby_url = standby.url("replicated");
    let rt = super::runtime();
    let (primary_client, standby_client) = rt.block_on(async {
        (
            connect(&DatabaseConfig::new(primary_url.clone())).await,
            connect(&DatabaseConfig::new(standby_url.clone())).await,
        )
    });
    // The standby has replayed the import before the replica starts.
    let imported: i64 = rt.block_on(async {
        primary_client
            .query_one("SELECT revision FROM portcullis_revision", &[])
            .await
            .unwrap()
            .get(0)
    });
    eventually(
        Duration::from_secs(20),
        "the standby replays the import",
        || {
            rt.block_on(async {
                standby_client
                    .query_one("SELECT revision FROM portcullis_revision", &[])
                    .await
                    .map(|row| row.get::<_, i64>(0) == imported)
                    .unwrap_or(false)
            })
        },
    );

    // Reads from the standby, writes (the grants API) to the primary.
    let mut config = super::db_config(&standby_url, Duration::from_secs(30));
    config.poll = Duration::from_millis(200);
    config.write_url = Some(primary_url.clone());
    let replica = Replica::start(dir.path(), config);
    assert_eq!(replica.ready(), 200);
    assert!(replica.allows("bob", "read", "1", None));
    // Cached, without a revision: only the feed can take it back.
    assert!(replica.allows("alice", "write", "2", None));

    // Replay paused: the standby stays where it is, whatever the primary
    // commits.
    rt.block_on(async {
        standby_client
            .execute("SELECT pg_wal_replay_pause()", &[])
            .await
            .unwrap();
    });
    eventually(Duration::from_secs(10), "replay paused", || {
        rt.block_on(replay_state(&standby_client)) == "paused"
    });
    // A write through the replica: committed on the primary, revision N.
    let revision = replica.write(&json!({
        "add": [grant("bob", "viewer", "document:9")],
        "remove": [grant("alice", "editor", "document:2")],
    }));
    let on_primary: i64 = rt.block_on(async {
        primary_client
            .query_one("SELECT revision FROM portcullis_revision", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert!(revision.ends_with(&format!(".{on_primary}")), "{revision}");
    // At the write's revision: the standby has not replayed it, so the
    // check is denied as unavailable, not decided from the older grants
    // (which would deny bob for the wrong reason, and allow alice).
    for _ in 0..3 {
        assert_eq!(
            replica.decide("bob", "read", "9", Some(&revision)),
            (false, "grants_unavailable".to_owned())
        );
        assert_eq!(
            replica.decide("alice", "write", "2", Some(&revision)),
            (false, "grants_unavailable".to_owned())
        );
    }
    assert_eq!(
        rt.block_on(replay_state(&standby_client)),
        "paused",
        "the standby was still behind when those checks were denied"
    );
    // Without a write URL, a replica on a standby cannot write: refused,
    // the standby is read-only.
    let reads_only = Replica::start(
        dir.path(),
        super::db_config(&standby_url, Duration::from_secs(30)),
    );
    let refused = reads_only.post(
        super::GRANTS,
        WRITER_KEY,
        &json!({ "add": [grant("bob", "viewer", "document:8")] }),
    );
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("read-only"), "{}", refused.text());

    // Replay resumes: the same check, at the same revision, is allowed,
    // and the revocation reaches the cache by the feed's polls.
    rt.block_on(async {
        standby_client
            .execute("SELECT pg_wal_replay_resume()", &[])
            .await
            .unwrap();
    });
    let took = eventually(Duration::from_secs(10), "the standby catches up", || {
        replica.allows("bob", "read", "9", Some(&revision))
    });
    eprintln!("allowed at the write's revision {took:?} after replay resumed");
    eventually(Duration::from_secs(5), "the revocation, polled", || {
        !replica.allows("alice", "write", "2", None)
    });
    assert_eq!(
        counter(&replica, "portcullis_grants_db_feed_reconnects_total"),
        0
    );
    assert!(replica.metrics().contains("portcullis_grants_db_up 1"));
}
