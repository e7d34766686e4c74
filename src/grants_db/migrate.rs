//! Versioned schema migrations, embedded in the binary and applied in
//! order by `portcullis db migrate`; `serve` only checks the version.

use tokio_postgres::Client;

use super::DbError;

/// Every migration, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "grants",
        include_str!("../../migrations/0001_grants.sql"),
    ),
    (
        2,
        "database identity",
        include_str!("../../migrations/0002_database_identity.sql"),
    ),
    (
        3,
        "consumed events",
        include_str!("../../migrations/0003_consumed_events.sql"),
    ),
];

/// The version this binary needs.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS portcullis_schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// A key for `pg_advisory_xact_lock`, so two `migrate` runs (two Jobs)
/// apply each migration once.
const LOCK_KEY: i64 = 0x706f_7274_6375_6c6c;

/// The schema version the database is at (0: none).
pub async fn version(client: &Client) -> Result<i32, DbError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('portcullis_schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(DbError::from_pg)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM portcullis_schema_migrations",
            &[],
        )
        .await
        .map_err(DbError::from_pg)?;
    Ok(row.get(0))
}

/// Refuses a database whose schema is not the one this binary needs.
pub async fn check(client: &Client) -> Result<(), DbError> {
    let found = version(client).await?;
    if found == latest() {
        Ok(())
    } else {
        Err(DbError::Schema {
            found,
            needed: latest(),
        })
    }
}

/// Applies every migration the database lacks, each in a transaction of
/// its own; returns the versions applied.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, DbError> {
    client
        .batch_execute(CREATE_TABLE)
        .await
        .map_err(DbError::from_pg)?;
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        let tx = client.transaction().await.map_err(DbError::from_pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(DbError::from_pg)?;
        let done: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM portcullis_schema_migrations WHERE version = $1)",
                &[version],
            )
            .await
            .map_err(DbError::from_pg)?
            .get(0);
        if done {
            continue;
        }
        tx.batch_execute(sql).await.map_err(DbError::from_pg)?;
        tx.execute(
            "INSERT INTO portcullis_schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(DbError::from_pg)?;
        tx.commit().await.map_err(DbError::from_pg)?;
        applied.push(*version);
    }
    Ok(applied)
}
