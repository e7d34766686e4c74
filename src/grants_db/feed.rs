//! The change feed: one dedicated connection (never a pooled one) that
//! LISTENs for writes and applies every change-log row after the last
//! revision this replica applied. NOTIFY is only the wake-up: the feed
//! also reads the log every `poll` interval, and after a dropped
//! connection it resumes from the revision it had reached, so a lost
//! notification costs at most one poll interval and loses no change.
//! Connected to a hot standby (`pg_is_in_recovery()`), which refuses
//! LISTEN and never hears the primary's NOTIFY, it only polls.
//!
//! Every read also takes the database's identity: another identity, or a
//! revision below the applied one (a point-in-time restore, a failover to
//! a standby that lagged), means the cache may hold what this database
//! never had or no longer has, and `revision > applied` would never read
//! the changes that matter again. The feed then drops the whole cache and
//! starts over at the database's revision. A restore or a failover also
//! restarts or replaces the server: a connection to a server started at
//! another time than the last one (`pg_postmaster_start_time()`) drops the
//! whole cache too, which catches a restored history whose counter has
//! already passed the applied one again by the time the feed reconnects.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{AsyncMessage, Client, IsolationLevel};

use super::{DbError, GrantStore, CHANNEL};
use crate::policy::grant_snapshot::{HolderKind, Lookup};

/// The `application_name` of the feed's connection.
pub const FEED_APPLICATION_NAME: &str = "portcullis-feed";

/// Most change rows applied one by one; a longer catch-up drops the
/// whole cache instead.
const MAX_CHANGES: i64 = 10_000;

/// Longest a catch-up read may take before the connection counts as lost.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Follows the change log until the task is aborted: connects, catches
/// up, applies changes as they come; on any failure marks the database
/// down and reconnects with backoff.
pub async fn follow(store: Arc<GrantStore>) {
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    loop {
        if !first {
            store
                .counters
                .feed_reconnects
                .fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        match follow_once(&store, &mut backoff).await {
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "grants change feed lost; reconnecting"),
        }
        store.set_down(true);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn follow_once(store: &GrantStore, backoff: &mut Duration) -> Result<(), DbError> {
    let mut pg = super::pg_config(store.config())?;
    // Named, so an operator (or a test) can tell the feed's connection.
    pg.application_name(FEED_APPLICATION_NAME);
    let tls = super::tls(store.config())?;
    let (mut client, mut connection) = pg.connect(tls).await.map_err(DbError::from_pg)?;
    let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel::<()>();
    // Drives the connection and turns notifications into wake-ups; ends
    // (dropping `wake`) when the connection does.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    if wake.send(()).is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "grants change feed connection ended");
                    break;
                }
                None => break,
            }
        }
    });
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _driver = AbortOnDrop(driver);
    // A hot standby (a read replica) refuses LISTEN, and a NOTIFY on the
    // primary never reaches it anyway: there the feed polls alone, so a
    // change is seen within a poll interval plus the standby's lag.
    let standby: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(DbError::from_pg)?
        .try_get(0)
        .map_err(DbError::from_pg)?;
    if !standby {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(DbError::from_pg)?;
    }
    // Which server this is: another than last time (a restart, a restore,
    // a failover) may hold another history than the cache reflects. A
    // database without the function (not PostgreSQL itself) is taken to be
    // the same server, and relies on the identity and counter checks.
    let started = super::server_started(&client).await?;
    let another_server = store.another_server(&started);
    // Listening before reading: a write committed in between is both read
    // here and notified.
    catch_up(store, &mut client, another_server).await?;
    store.note_server(started);
    store.set_down(false);
    *backoff = Duration::from_millis(50);
    tracing::info!(
        revision = store.applied_revision(),
        standby,
        "grants change feed connected"
    );
    let mut poll = tokio::time::interval(store.config().poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            woke = woken.recv() => {
                if woke.is_none() {
                    return Err(DbError::Unreachable("the change feed connection closed".into()));
                }
                store.counters.notifications.fetch_add(1, Ordering::Relaxed);
                while woken.try_recv().is_ok() {
                    store.counters.notifications.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = poll.tick() => {}
        }
        catch_up(store, &mut client, false).await?;
    }
}

/// What one catch-up read found.
enum Found {
    /// Another history: the identity or a counter behind the applied one.
    AnotherHistory { database: String, revision: i64 },
    /// The changes up to `revision` (`None`: too many, or pruned: drop all).
    Changes {
        revision: i64,
        lookups: Option<Vec<Lookup>>,
    },
}

/// Applies every change after the applied revision, up to the current
/// one, read in one repeatable-read snapshot; resets the cache when the
/// database shows another history.
async fn catch_up(
    store: &GrantStore,
    client: &mut Client,
    another_server: bool,
) -> Result<(), DbError> {
    let read = async {
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let row = tx
            .query_one(
                "SELECT revision, pruned_through, database_id FROM portcullis_revision",
                &[],
            )
            .await?;
        let (current, pruned, database): (i64, i64, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let from = store.applied_revision();
        if another_server || current < from || *store.database_id() != *database {
            tx.commit().await?;
            return Ok(Found::AnotherHistory {
                database,
                revision: current,
            });
        }
        let changes = |lookups| Found::Changes {
            revision: current,
            lookups,
        };
        if current == from {
            tx.commit().await?;
            return Ok(changes(Some(Vec::new())));
        }
        if pruned > from {
            tx.commit().await?;
            return Ok(changes(None));
        }
        let rows = tx
            .query(
                "SELECT holder_kind, holder, pattern, resource FROM portcullis_grant_changes \
                 WHERE revision > $1 AND revision <= $2 LIMIT $3",
                &[&from, &current, &(MAX_CHANGES + 1)],
            )
            .await?;
        tx.commit().await?;
        if rows.len() as i64 > MAX_CHANGES {
            return Ok(changes(None));
        }
        let mut lookups = Vec::with_capacity(rows.len());
        for row in rows {
            let kind = HolderKind::from_code(row.try_get(0)?);
            let holder: String = row.try_get(1)?;
            let pattern: bool = row.try_get(2)?;
            let resource: String = row.try_get(3)?;
            match kind {
                Some(kind) => lookups.push(Lookup {
                    kind,
                    holder: holder.into(),
                    pattern,
                    resource: resource.into(),
                }),
                // Unknown to this version: forget everything, safely.
                None => return Ok(changes(None)),
            }
        }
        Ok::<_, tokio_postgres::Error>(changes(Some(lookups)))
    };
    let found = tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| DbError::Unreachable("reading the change log timed out".into()))?
        .map_err(DbError::from_pg)?;
    let (current, lookups) = match found {
        Found::AnotherHistory { database, revision } => {
            store.reset(&database, revision, another_server);
            return Ok(());
        }
        Found::Changes { revision, lookups } => (revision, lookups),
    };
    if let Some(lookups) = &lookups {
        store
            .counters
            .changes_applied
            .fetch_add(lookups.len() as u64, Ordering::Relaxed);
    }
    store.invalidate(lookups.as_deref(), current);
    Ok(())
}
