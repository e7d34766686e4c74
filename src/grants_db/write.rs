//! Writing grants: adds and removes applied atomically in one
//! transaction that first bumps the revision counter row (serializing
//! writers, so revisions follow commit order), appends to the change log
//! and notifies the replicas at commit. Parameterized statements only.

use tokio_postgres::Client;

use super::{DbError, Grant, GrantError, HolderKind, Revision, CHANNEL};
use crate::policy::grant_snapshot::role_id;
use crate::policy::{Holder, PolicySet, ResourceKey};

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The revision of the write: a check at least this fresh sees it.
    pub revision: i64,
    /// The identity of the database the revision counts in.
    pub database: String,
    /// Grants that were not there before.
    pub added: u64,
    /// Grants that were there and are gone.
    pub removed: u64,
}

/// Most grants one write may add or remove (an import is split into
/// writes of this size).
pub const MAX_WRITE: usize = 50_000;

/// Refuses a grant whose role the policy does not define (without a
/// condition: conditions stay in the policy files).
pub fn check_role(policy: &PolicySet, grant: &Grant) -> Result<(), GrantError> {
    if role_id(policy, &grant.role).is_some() {
        Ok(())
    } else {
        Err(GrantError::UnknownRole(grant.role.clone()))
    }
}

/// Grants as the arrays a statement unnests: one parameter a column.
struct Columns<'g> {
    kinds: Vec<i16>,
    holders: Vec<&'g str>,
    patterns: Vec<bool>,
    resources: Vec<&'g str>,
    roles: Vec<&'g str>,
}

impl Written {
    /// The revision as a client carries it (`<identity>.<n>`).
    pub fn token(&self) -> Revision {
        Revision {
            database: self.database.as_str().into(),
            number: self.revision,
        }
    }
}

fn columns(grants: &[Grant]) -> Columns<'_> {
    Columns {
        kinds: grants.iter().map(|g| g.kind.code()).collect(),
        holders: grants.iter().map(|g| g.holder.as_str()).collect(),
        patterns: grants.iter().map(|g| g.pattern).collect(),
        resources: grants.iter().map(|g| g.resource.as_str()).collect(),
        roles: grants.iter().map(|g| g.role.as_str()).collect(),
    }
}

/// Removes `removes`, then adds `adds`, in one transaction; returns its
/// revision.
pub async fn write(
    client: &mut Client,
    adds: &[Grant],
    removes: &[Grant],
) -> Result<Written, DbError> {
    if adds.len() + removes.len() > MAX_WRITE {
        return Err(DbError::Invalid(format!(
            "a write may change at most {MAX_WRITE} grants"
        )));
    }
    let tx = client.transaction().await.map_err(DbError::from_pg)?;
    // First, so the row lock orders this write against every other.
    let row = tx
        .query_one(
            "UPDATE portcullis_revision SET revision = revision + 1 \
             RETURNING revision, database_id",
            &[],
        )
        .await
        .map_err(DbError::from_pg)?;
    let (revision, database): (i64, String) = (row.get(0), row.get(1));
    let c = columns(removes);
    let removed = tx
        .execute(
            "WITH removed AS ( \
               DELETE FROM portcullis_grants g \
               USING unnest($2::int2[], $3::text[], $4::bool[], $5::text[], $6::text[]) \
                     AS x(kind, holder, pattern, resource, role) \
               WHERE g.holder_kind = x.kind AND g.holder = x.holder COLLATE \"C\" \
                 AND g.pattern = x.pattern AND g.resource = x.resource COLLATE \"C\" \
                 AND g.role = x.role COLLATE \"C\" \
               RETURNING g.holder_kind, g.holder, g.pattern, g.resource, g.role) \
             INSERT INTO portcullis_grant_changes \
               (revision, holder_kind, holder, pattern, resource, role, added) \
             SELECT $1, holder_kind, holder, pattern, resource, role, false FROM removed",
            &[
                &revision,
                &c.kinds,
                &c.holders,
                &c.patterns,
                &c.resources,
                &c.roles,
            ],
        )
        .await
        .map_err(DbError::from_pg)?;
    let c = columns(adds);
    let added = tx
        .execute(
            "WITH added AS ( \
               INSERT INTO portcullis_grants \
                 (holder_kind, holder, pattern, resource, role, revision) \
               SELECT DISTINCT kind, holder, pattern, resource, role, $1::bigint \
               FROM unnest($2::int2[], $3::text[], $4::bool[], $5::text[], $6::text[]) \
                    AS x(kind, holder, pattern, resource, role) \
               ON CONFLICT DO NOTHING \
               RETURNING holder_kind, holder, pattern, resource, role) \
             INSERT INTO portcullis_grant_changes \
               (revision, holder_kind, holder, pattern, resource, role, added) \
             SELECT $1, holder_kind, holder, pattern, resource, role, true FROM added",
            &[
                &revision,
                &c.kinds,
                &c.holders,
                &c.patterns,
                &c.resources,
                &c.roles,
            ],
        )
        .await
        .map_err(DbError::from_pg)?;
    notify_and_commit(tx, revision).await?;
    Ok(Written {
        revision,
        database,
        added,
        removed,
    })
}

/// Grants in key order after `after`, at most `limit`, optionally only
/// those of one holder.
pub async fn list(
    client: &Client,
    holder: Option<(HolderKind, &str)>,
    after: Option<&Grant>,
    limit: i64,
) -> Result<Vec<Grant>, DbError> {
    let kind = holder.map(|(k, _)| k.code());
    let name = holder.map(|(_, n)| n);
    let after_kind = after.map(|g| g.kind.code());
    let rows = client
        .query(
            "SELECT holder_kind, holder, pattern, resource, role FROM portcullis_grants \
             WHERE ($1::int2 IS NULL OR (holder_kind = $1 AND holder = $2::text COLLATE \"C\")) \
               AND ($3::int2 IS NULL OR (holder_kind, holder, pattern, resource, role) > \
                    ($3, $4::text COLLATE \"C\", $5::bool, $6::text COLLATE \"C\", $7::text COLLATE \"C\")) \
             ORDER BY holder_kind, holder, pattern, resource, role LIMIT $8",
            &[
                &kind,
                &name,
                &after_kind,
                &after.map(|g| g.holder.as_str()),
                &after.map(|g| g.pattern),
                &after.map(|g| g.resource.as_str()),
                &after.map(|g| g.role.as_str()),
                &limit,
            ],
        )
        .await
        .map_err(DbError::from_pg)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(kind) = HolderKind::from_code(row.try_get(0).map_err(DbError::from_pg)?) else {
            continue;
        };
        out.push(Grant {
            kind,
            holder: row.try_get(1).map_err(DbError::from_pg)?,
            pattern: row.try_get(2).map_err(DbError::from_pg)?,
            resource: row.try_get(3).map_err(DbError::from_pg)?,
            role: row.try_get(4).map_err(DbError::from_pg)?,
        });
    }
    Ok(out)
}

/// Every grant a loaded policy holds (its YAML `grants:` and `*.grants`
/// files, read by the one loader), in order; a grant under a condition
/// is refused: conditions stay in the policy files.
pub fn policy_grants(policy: &PolicySet) -> Result<Vec<Grant>, String> {
    let mut out = Vec::new();
    let mut conditional = 0usize;
    let holders = policy
        .grants
        .holders()
        .chain(std::iter::once(Holder::Authenticated));
    for holder in holders {
        for (key, roles) in policy.grants.held(holder) {
            for role in roles {
                let Some(role) = policy.roles.get(*role as usize) else {
                    continue;
                };
                if role.condition.is_some() {
                    conditional += 1;
                    continue;
                }
                let (kind, name) = crate::policy::grant_snapshot::split_holder(holder);
                let (pattern, resource) = match key {
                    ResourceKey::Exact(r) => (false, r),
                    ResourceKey::Prefix(p) => (true, p),
                };
                out.push(Grant {
                    kind,
                    holder: name.to_owned(),
                    pattern,
                    resource: resource.to_owned(),
                    role: role.name.to_string(),
                });
            }
        }
    }
    if conditional > 0 {
        return Err(format!(
            "{conditional} grants carry a condition: conditions stay in the policy files, so these cannot move to the database"
        ));
    }
    out.sort();
    Ok(out)
}

/// Deletes change-log rows older than `keep_seconds`, by whole revisions:
/// every row up to the newest revision that has a row that old goes, and
/// `pruned_through` records it, so a replica that had not reached it drops
/// its whole cache instead of missing a change. Returns that revision (0
/// when nothing was old enough).
pub async fn prune(client: &mut Client, keep_seconds: u64) -> Result<i64, DbError> {
    let keep = i64::try_from(keep_seconds).unwrap_or(i64::MAX);
    let tx = client.transaction().await.map_err(DbError::from_pg)?;
    let through: i64 = tx
        .query_one(
            "SELECT coalesce(max(revision), 0) FROM portcullis_grant_changes \
             WHERE changed_at < now() - make_interval(secs => $1::bigint)",
            &[&keep],
        )
        .await
        .map_err(DbError::from_pg)?
        .get(0);
    if through > 0 {
        // Recorded first: a replica reading the log in a snapshot that
        // lacks these rows also sees the mark.
        tx.execute(
            "UPDATE portcullis_revision SET pruned_through = greatest(pruned_through, $1)",
            &[&through],
        )
        .await
        .map_err(DbError::from_pg)?;
        tx.execute(
            "DELETE FROM portcullis_grant_changes WHERE revision <= $1",
            &[&through],
        )
        .await
        .map_err(DbError::from_pg)?;
    }
    tx.commit().await.map_err(DbError::from_pg)?;
    Ok(through)
}

/// Gives the database a new random identity, for the restore and failover
/// runbook: every replica then drops its whole cache, and every revision
/// handed out before is refused (a check carrying one is denied until its
/// write is made again), since a restore may have lost those writes.
/// Returns the new identity.
pub async fn new_identity(client: &mut Client) -> Result<String, DbError> {
    let tx = client.transaction().await.map_err(DbError::from_pg)?;
    // The revision row's lock: no write is half way through under the
    // old identity when the new one commits.
    let row = tx
        .query_one(
            "UPDATE portcullis_revision \
             SET database_id = left(md5(gen_random_uuid()::text), 16) \
             RETURNING database_id, revision",
            &[],
        )
        .await
        .map_err(DbError::from_pg)?;
    let (database, revision): (String, i64) = (row.get(0), row.get(1));
    notify_and_commit(tx, revision).await?;
    Ok(database)
}

/// Tells every replica's change feed about `revision` and commits: the
/// notification is delivered only if the transaction commits, so a feed
/// never hears of a write that did not happen.
async fn notify_and_commit(
    tx: tokio_postgres::Transaction<'_>,
    revision: i64,
) -> Result<(), DbError> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &revision.to_string()],
    )
    .await
    .map_err(DbError::from_pg)?;
    tx.commit().await.map_err(DbError::from_pg)
}
