//! The AuthZEN searches over grants in the database. Candidates come from
//! index scans ((holder, resource) for resources, (resource, holder) for
//! subjects), a page at a time; each is confirmed by the same decision the
//! file source's search runs ([`crate::search`]), over a small
//! [`GrantIndex`] of the rows read, so explicit denies still remove it,
//! and conditions are judged with the request's attributes and time. A
//! page reads ever larger batches (doubling) and confirms at most
//! [`search::MAX_SEARCH_CANDIDATES`] candidates, then ends with a cursor,
//! so denies that remove every candidate cost a bounded number of
//! statements per page, not one per sixteen grants of the whole table.

use std::collections::BTreeMap;

use super::{DbError, GrantStore, HolderKind};
use crate::policy::grant_snapshot::{role_id, Lookup};
use crate::policy::{GrantIndex, Holder, PolicySet, ResourceKey};
use crate::search::{self, Circumstances, Found, MAX_SEARCH_CANDIDATES};
use crate::token::Principal;

/// Names of the roles that hold `action` (under a condition or not: the
/// confirming decision judges it).
fn roles_holding(policy: &PolicySet, action: usize) -> Vec<String> {
    policy
        .roles
        .iter()
        .filter(|r| r.actions.contains(action))
        .map(|r| r.name.to_string())
        .collect()
}

/// The resources of type `kind` `principal` may do `action` on, after the
/// id `after`, at most `limit`, as [`search::resources`] answers them.
#[allow(clippy::too_many_arguments)]
pub async fn resources(
    store: &GrantStore,
    policy: &PolicySet,
    principal: &Principal,
    action: &str,
    kind: &str,
    after: Option<&str>,
    limit: usize,
    given: Circumstances<'_>,
) -> Result<Found, DbError> {
    let Some(action) = search::action_index(policy, action) else {
        return Ok(Found::none());
    };
    let roles = roles_holding(policy, action);
    // Grants to every authenticated subject are not candidates here.
    let holders: Vec<Holder<'_>> = policy
        .holders(principal)
        .filter(|h| !matches!(h, Holder::Authenticated))
        .collect();
    if roles.is_empty()
        || holders
            .iter()
            .any(|h| matches!(h, Holder::Subject(s) | Holder::Group(s) if s.contains('\0')))
    {
        return Ok(Found::none());
    }
    let prefix = format!("{kind}:");
    // Every name starting with "kind:" sorts below "kind;" in byte order.
    let upper = format!("{kind};");
    let kinds: Vec<i16> = holders
        .iter()
        .map(|h| crate::policy::grant_snapshot::split_holder(*h).0.code())
        .collect();
    let names: Vec<&str> = holders
        .iter()
        .map(|h| crate::policy::grant_snapshot::split_holder(*h).1)
        .collect();
    let client = store.client().await?;
    // Patterns are few: read them all (the type's and the global one).
    let pattern_rows = client
        .query(
            "SELECT g.holder_kind, g.holder, g.resource, g.role FROM portcullis_grants g \
             JOIN unnest($1::int2[], $2::text[]) AS h(kind, holder) \
               ON g.holder_kind = h.kind AND g.holder = h.holder COLLATE \"C\" \
             WHERE g.pattern AND g.role = ANY($3::text[]) \
               AND (g.resource = '' OR starts_with($4::text, g.resource) OR starts_with(g.resource, $4::text))",
            &[&kinds, &names, &roles, &prefix],
        )
        .await
        .map_err(DbError::from_pg)?;
    let mut patterns: BTreeMap<String, Vec<(HolderKind, String, String, String)>> = BTreeMap::new();
    for row in pattern_rows {
        let Some(k) = HolderKind::from_code(row.get(0)) else {
            continue;
        };
        let resource: String = row.get(2);
        // A pattern broader than the type (`*`, or a prefix of "kind:" other
        // than the type's own) gives the id `*`, as the file source does.
        let id = match resource.strip_prefix(prefix.as_str()) {
            Some(rest) => format!("{rest}*"),
            None if resource.is_empty() => "*".to_owned(),
            None => continue,
        };
        patterns
            .entry(id)
            .or_default()
            .push((k, row.get(1), resource, row.get(3)));
    }
    // One ordered, bounded index scan per holder, merged.
    let mut sql = String::from("SELECT resource, holder_kind, holder, role FROM (");
    for i in 0..holders.len() {
        if i > 0 {
            sql.push_str(" UNION ALL ");
        }
        let (k, h) = (5 + 2 * i, 6 + 2 * i);
        sql.push_str(&format!(
            "(SELECT resource, holder_kind, holder, role FROM portcullis_grants \
              WHERE holder_kind = ${k}::int2 AND holder = ${h}::text COLLATE \"C\" AND NOT pattern \
                AND resource > $1::text COLLATE \"C\" AND resource < $2::text COLLATE \"C\" \
                AND role = ANY($3::text[]) \
              ORDER BY resource LIMIT $4)"
        ));
    }
    sql.push_str(") AS c ORDER BY resource LIMIT $4");
    let statement = client.prepare(&sql).await.map_err(DbError::from_pg)?;
    let mut cursor = match after {
        Some(a) => format!("{prefix}{a}"),
        // Below every "kind:…" name: "kind:" itself is not a resource of it.
        None => prefix.clone(),
    };
    let mut out: Vec<String> = Vec::new();
    let mut pattern_ids: Vec<&String> = patterns
        .keys()
        .filter(|id| after.is_none_or(|a| id.as_str() > a))
        .collect();
    pattern_ids.reverse();
    let mut batch = i64::try_from(limit + 1).unwrap_or(i64::MAX).max(16);
    let mut examined = 0usize;
    loop {
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&cursor, &upper, &roles, &batch];
        for i in 0..holders.len() {
            params.push(&kinds[i]);
            params.push(&names[i]);
        }
        let rows = client
            .query(&statement, &params)
            .await
            .map_err(DbError::from_pg)?;
        let full = rows.len() as i64 == batch;
        let mut exact: BTreeMap<String, Vec<(HolderKind, String, String)>> = BTreeMap::new();
        for row in &rows {
            let Some(k) = HolderKind::from_code(row.get(1)) else {
                continue;
            };
            exact
                .entry(row.get(0))
                .or_default()
                .push((k, row.get(2), row.get(3)));
        }
        let last_exact = exact.keys().next_back().cloned();
        // Candidates of this batch in id order: exact ones, and pattern
        // ids that sort before the batch's end (or all, on the last batch).
        let mut candidates: Vec<(String, String, GrantIndex)> = Vec::new();
        for (resource, grants) in &exact {
            let mut index = GrantIndex::builder();
            for (k, h, role) in grants {
                if let Some(role) = role_id(policy, role) {
                    index.insert(holder(*k, h), ResourceKey::Exact(resource), role);
                }
            }
            let id = resource[prefix.len()..].to_owned();
            candidates.push((id, resource.clone(), index.build()));
        }
        while let Some(id) = pattern_ids.last() {
            let within = match &last_exact {
                Some(last) if full => id.as_str() <= &last[prefix.len()..],
                _ => true,
            };
            if !within {
                break;
            }
            let id = (*id).clone();
            pattern_ids.pop();
            let mut index = GrantIndex::builder();
            let mut check = prefix.clone();
            for (k, h, p, role) in patterns.get(&id).into_iter().flatten() {
                if let Some(role) = role_id(policy, role) {
                    index.insert(holder(*k, h), ResourceKey::Prefix(p), role);
                }
                if p.len() > prefix.len() {
                    check.clone_from(p);
                }
            }
            candidates.push((id, check, index.build()));
        }
        candidates.sort_by(|a, b| a.0.cmp(&b.0));
        examined += candidates.len();
        let last_examined = candidates.last().map(|c| c.0.clone());
        for (id, check, index) in candidates {
            if search::allows(policy, &index, principal, &check, action, given) {
                out.push(id);
            }
        }
        if out.len() > limit || !full {
            break;
        }
        if examined >= MAX_SEARCH_CANDIDATES {
            if let Some(last) = last_examined {
                out.sort();
                out.dedup();
                return Ok(Found::spent(out, last));
            }
        }
        match last_exact {
            Some(last) => cursor = last,
            None => break,
        }
        // Fewer statements for a page that denies thin out.
        let left = i64::try_from(MAX_SEARCH_CANDIDATES.saturating_sub(examined)).unwrap_or(1);
        batch = batch.saturating_mul(2).min(left.max(16));
    }
    out.sort();
    out.dedup();
    Ok(Found::from(out, limit))
}

fn holder(kind: HolderKind, name: &str) -> Holder<'_> {
    match kind {
        HolderKind::Subject => Holder::Subject(name),
        HolderKind::Group => Holder::Group(name),
        HolderKind::Authenticated => Holder::Authenticated,
    }
}

/// The subjects that may do `action` on `resource` (see [`search::subjects`]).
pub async fn subjects(
    store: &GrantStore,
    policy: &PolicySet,
    resource: &str,
    action: &str,
    after: Option<&str>,
    limit: usize,
    given: Circumstances<'_>,
) -> Result<Found, DbError> {
    if resource.contains('\0') {
        return Ok(Found::none());
    }
    let keys: Vec<ResourceKey<'_>> = ResourceKey::covering(resource).collect();
    let patterns: Vec<bool> = keys
        .iter()
        .map(|k| matches!(k, ResourceKey::Prefix(_)))
        .collect();
    let texts: Vec<&str> = keys
        .iter()
        .map(|k| crate::policy::grant_snapshot::split_key(*k).1)
        .collect();
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT g.holder_kind, g.holder, g.pattern, g.resource, g.role FROM portcullis_grants g \
             JOIN unnest($1::bool[], $2::text[]) AS k(pattern, resource) \
               ON g.pattern = k.pattern AND g.resource = k.resource COLLATE \"C\" \
             WHERE g.holder_kind IN (0, 1)",
            &[&patterns, &texts],
        )
        .await
        .map_err(DbError::from_pg)?;
    let mut index = GrantIndex::builder();
    for row in &rows {
        let (Some(k), Some(role)) = (
            HolderKind::from_code(row.get(0)),
            role_id(policy, row.get(4)),
        ) else {
            continue;
        };
        let key = if row.get::<_, bool>(2) {
            ResourceKey::Prefix(row.get(3))
        } else {
            ResourceKey::Exact(row.get(3))
        };
        index.insert(holder(k, row.get(1)), key, role);
    }
    let index = index.build();
    Ok(search::subjects(
        policy, &index, resource, action, after, limit, given,
    ))
}

/// The actions `principal` may do on `resource` (see [`search::actions`]).
pub async fn actions(
    store: &GrantStore,
    policy: &PolicySet,
    principal: &Principal,
    resource: &str,
    after: Option<&str>,
    limit: usize,
    given: Circumstances<'_>,
) -> Result<Found, DbError> {
    let lookups: Vec<Lookup> = policy
        .holders(principal)
        .flat_map(|h| ResourceKey::covering(resource).map(move |k| Lookup::new(h, k)))
        .collect();
    let (_, names) = store.read(&lookups).await?;
    let mut index = GrantIndex::builder();
    for (lookup, names) in lookups.iter().zip(&names) {
        for name in names.iter() {
            if let Some(role) = role_id(policy, name) {
                index.insert(lookup.holder(), lookup.key(), role);
            }
        }
    }
    let index = index.build();
    Ok(search::actions(
        policy, &index, principal, resource, after, limit, given,
    ))
}
