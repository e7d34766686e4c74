//! Signed events consumed once across replicas: the ids of accepted
//! events in `portcullis_consumed_events` (migration 3) until their
//! envelopes expire.
//!
//! One statement consumes an id: it counts the consumer's unexpired rows
//! (up to its share) and inserts the id if the count is below the share,
//! `ON CONFLICT (id) DO NOTHING`. A row inserted means accepted; none
//! means the id was there (replayed) or the consumer is full, which a
//! second look tells apart. Two replicas inserting one id at once: the
//! second waits for the first's transaction and inserts nothing, so one
//! envelope is accepted once. The share's count is a snapshot: consumes
//! of one consumer in flight at the same moment may pass it by at most
//! their number (bounded by the pools), never without bound.
//!
//! An id is answered as accepted only after its row is committed; any
//! error refuses the event (the caller may try again: if the row did
//! commit before the error, the retry is refused as a replay, so an event
//! can be lost to an outage, never accepted twice).

use std::time::Duration;

use super::{DbError, GrantStore};

/// What consuming an id found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// The id is recorded now: the event is accepted.
    First,
    /// The id was recorded before: a replay.
    Replayed,
    /// The consumer holds its whole share of unexpired ids.
    ConsumerFull,
}

/// Longest a consume waits for the database before refusing the event.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(2);

/// How long past its expiry an id is kept before `db prune` deletes it:
/// more than any clock difference between replicas and the database, so
/// no replica still takes an envelope whose id is gone.
pub const PRUNE_MARGIN_SECONDS: i64 = 3600;

fn seconds(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Records `id` (consumed by `consumer`, expiring at `expires_at`) unless
/// it is there already or `consumer` holds `share` unexpired ids at `now`.
pub async fn consume(
    store: &GrantStore,
    consumer: &str,
    id: &str,
    expires_at: u64,
    now: u64,
    share: usize,
) -> Result<Consumed, DbError> {
    let share = i64::try_from(share.max(1)).unwrap_or(i64::MAX);
    let (expires_at, now) = (seconds(expires_at), seconds(now));
    let work = async {
        let client = store.write_client().await?;
        // Prepared afresh on each consume, so planned with this
        // consumer's name: a cached statement turns generic after five
        // runs, and the generic plan for `consumer = $2` over a handful of
        // consumers walks every unexpired row of all of them (measured:
        // 50 ms for a consumer holding none beside 500k rows of another,
        // against 0.05 ms by the (consumer, expires_at) index).
        let inserted = client
            .execute(
                "INSERT INTO portcullis_consumed_events (id, consumer, expires_at) \
                 SELECT $1::text, $2::text, $3::bigint \
                 WHERE (SELECT count(*) FROM (SELECT 1 FROM portcullis_consumed_events \
                        WHERE consumer = $2::text AND expires_at > $4::bigint \
                        LIMIT $5::bigint) held) < $5::bigint \
                 ON CONFLICT (id) DO NOTHING",
                &[&id, &consumer, &expires_at, &now, &share],
            )
            .await
            .map_err(DbError::from_pg)?;
        if inserted == 1 {
            return Ok(Consumed::First);
        }
        let known: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM portcullis_consumed_events WHERE id = $1)",
                &[&id],
            )
            .await
            .map_err(DbError::from_pg)?
            .get(0);
        Ok(if known {
            Consumed::Replayed
        } else {
            Consumed::ConsumerFull
        })
    };
    tokio::time::timeout(CONSUME_TIMEOUT, work)
        .await
        .map_err(|_| DbError::Unreachable("recording a consumed event timed out".into()))?
}

/// Deletes the ids that expired more than [`PRUNE_MARGIN_SECONDS`] ago
/// by the database's clock; returns how many.
pub async fn prune(client: &tokio_postgres::Client) -> Result<u64, DbError> {
    client
        .execute(
            "DELETE FROM portcullis_consumed_events \
             WHERE expires_at < extract(epoch FROM now())::bigint - $1",
            &[&PRUNE_MARGIN_SECONDS],
        )
        .await
        .map_err(DbError::from_pg)
}
