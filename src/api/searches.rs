//! The three AuthZEN searches (`/access/v1/search/{subject,resource,action}`):
//! who may ask what, one page at a time through the decision service, with
//! opaque page tokens bound to the request by a hash.

use super::*;

pub(super) async fn search_subject(
    State(state): State<Arc<ApiState>>,
    request: Request,
) -> Response {
    answer_search(&state, request, SearchKind::Subject).await
}

pub(super) async fn search_resource(
    State(state): State<Arc<ApiState>>,
    request: Request,
) -> Response {
    answer_search(&state, request, SearchKind::Resource).await
}

pub(super) async fn search_action(
    State(state): State<Arc<ApiState>>,
    request: Request,
) -> Response {
    answer_search(&state, request, SearchKind::Action).await
}

async fn answer_search(state: &ApiState, request: Request, kind: SearchKind) -> Response {
    match run_search(state, request, kind).await {
        Ok(answer) => json_response(&answer),
        Err(e) => e.into_response(),
    }
}

async fn run_search(
    state: &ApiState,
    request: Request,
    kind: SearchKind,
) -> Result<Value, ApiError> {
    let Asked {
        policy,
        asker,
        body,
        now,
        ..
    } = asked(state, request).await?;
    if !asker.may().search {
        return Err(ApiError::Forbidden("this caller may not search".into()));
    }
    let query = model::search(&body, kind)?;
    if query.page.limit == Some(0) {
        return Err(bad("page.limit must be at least 1"));
    }
    let digest = query_digest(&query, kind);
    let (after, token_limit) = match &query.page.token {
        Some(token) => {
            let (cursor, limit) = page_token::open(token, &digest).ok_or_else(|| {
                bad("page.token does not belong to this request: a token may only be sent again with the same subject, action, resource and context")
            })?;
            (Some(cursor), Some(limit))
        }
        None => (None, None),
    };
    // A token carries the limit it was made with; a limit sent beside it
    // wins (the cursor does not depend on it).
    let limit = query
        .page
        .limit
        .or(token_limit)
        .unwrap_or(DEFAULT_PAGE_LIMIT)
        .clamp(1, MAX_PAGE_LIMIT);
    let subject = query.subject.as_ref();
    let resource = query.resource.as_ref();
    // Asking about someone else's subject, or who may do something (every
    // subject), is what `any_subject` permits: with `search` alone a caller
    // asks only about the subject of the user token it presents.
    let own = |s: &model::Entity| {
        asker
            .user
            .as_ref()
            .is_some_and(|user| s.kind == SUBJECT_TYPE && *user.subject == *s.id)
    };
    let about_own = match kind {
        SearchKind::Subject => false,
        _ => subject.is_some_and(own),
    };
    if !about_own && !asker.may().any_subject {
        return Err(ApiError::Forbidden(
            "this caller may only search about the subject of the user token it presents".into(),
        ));
    }
    let users = subject.is_some_and(|s| s.kind == SUBJECT_TYPE);
    let principal = |subject: &model::Entity| -> Arc<Principal> {
        match &asker.user {
            Some(user) if *user.subject == *subject.id => user.clone(),
            _ => Arc::new(Principal::named("api", subject.id.clone())),
        }
    };
    // What conditions read, as an evaluation of the same request would.
    let attributes = Attributes {
        subject: subject
            .and_then(|s| s.properties.clone())
            .unwrap_or_default(),
        resource: resource
            .and_then(|r| r.properties.clone())
            .unwrap_or_default(),
        action: query
            .action
            .as_ref()
            .and_then(|a| a.properties.clone())
            .unwrap_or_default(),
        context: query.context.clone().unwrap_or_default(),
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let action = query.action.as_ref().map_or("", |a| a.name.as_str());
    let found = if users {
        // Owned, for the decision pool.
        let subject = subject.map(&principal);
        let resource = resource.map(|r| (r.kind.clone(), resource_name(&r.kind, &r.id)));
        let action = action.to_owned();
        let after = after.clone();
        let pdp = state.pdp.clone();
        state
            .bulkhead
            .run(move |_| async move {
                let search = match (kind, &subject, &resource) {
                    (SearchKind::Subject, _, Some((_, resource))) => Search::Subjects {
                        resource,
                        action: &action,
                    },
                    (SearchKind::Resource, Some(subject), Some((kind, _))) => Search::Resources {
                        principal: subject,
                        action: &action,
                        kind,
                    },
                    (SearchKind::Action, Some(subject), Some((_, resource))) => Search::Actions {
                        principal: subject,
                        resource,
                    },
                    _ => return Err(bad("the search request is incomplete")),
                };
                let given = search::Circumstances {
                    attributes: &attributes,
                    now,
                };
                pdp.search(&policy, search, after.as_deref(), limit, given)
                    .await
                    .map_err(|e| ApiError::Unavailable(e.to_string()))
            })
            .await??
    } else {
        search::Found::none()
    };
    let limit = u64::try_from(limit).unwrap_or(MAX_PAGE_LIMIT);
    let next_token = match (found.more, &found.next) {
        (true, Some(next)) => page_token::seal(next, limit, &digest),
        _ => String::new(),
    };
    let results: Vec<Value> = found
        .items
        .iter()
        .map(|item| match kind {
            SearchKind::Subject => json!({ "type": SUBJECT_TYPE, "id": item }),
            SearchKind::Resource => {
                json!({ "type": resource.map_or("", |r| r.kind.as_str()), "id": item })
            }
            SearchKind::Action => json!({ "name": item }),
        })
        .collect();
    Ok(json!({
        "page": { "next_token": next_token, "count": results.len() },
        "results": results,
    }))
}

/// What a page token is bound to: every entity and parameter of the
/// request but the page, as the search reads them.
fn query_digest(query: &model::Search, kind: SearchKind) -> [u8; 32] {
    let entity = |e: Option<&model::Entity>| {
        e.map(|e| json!([e.kind, e.id, e.properties.as_deref()]))
            .unwrap_or(Value::Null)
    };
    let canonical = json!({
        "kind": kind.name(),
        "subject": entity(query.subject.as_ref()),
        "action": query.action.as_ref().map(|a| json!([a.name, a.properties.as_deref()])),
        "resource": entity(query.resource.as_ref()),
        "context": query.context.as_deref(),
    });
    // serde_json's maps are ordered by key: the same request, the same bytes.
    Sha256::digest(canonical.to_string().as_bytes()).into()
}

/// Opaque page tokens: the cursor (where the next page starts), the page
/// limit it was made with (so a token sent alone, as the specification's
/// paging example does, keeps its page size) and a check value over both
/// and the request's parameters. A token sent with other parameters, or
/// altered, does not open. The check is a hash, not a secret: a forged
/// token can only ask for a page the same request could.
mod page_token {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;

    use crate::events::envelope::{hex, unhex};

    const CHECK_BYTES: usize = 12;

    fn check(cursor: &str, limit: u64, digest: &[u8; 32]) -> [u8; CHECK_BYTES] {
        let mut hash = Sha256::new();
        hash.update(b"portcullis search page v2\0");
        hash.update(digest);
        hash.update(limit.to_be_bytes());
        hash.update(cursor.as_bytes());
        let full: [u8; 32] = hash.finalize().into();
        let mut out = [0u8; CHECK_BYTES];
        out.copy_from_slice(&full[..CHECK_BYTES]);
        out
    }

    pub(crate) fn seal(cursor: &str, limit: u64, digest: &[u8; 32]) -> String {
        format!(
            "{}.{limit}.{}",
            hex(&check(cursor, limit, digest)),
            hex(cursor.as_bytes())
        )
    }

    /// The cursor and limit of a token made by [`seal`] for the same
    /// parameters.
    pub fn open(token: &str, digest: &[u8; 32]) -> Option<(String, u64)> {
        let mut parts = token.splitn(3, '.');
        let (sum, limit, cursor) = (parts.next()?, parts.next()?, parts.next()?);
        if limit.is_empty() || !limit.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let limit: u64 = limit.parse().ok()?;
        let cursor = String::from_utf8(unhex(cursor)?).ok()?;
        let sum = unhex(sum)?;
        // Not a secret, but compared without an early exit anyway.
        let expected = check(&cursor, limit, digest);
        bool::from(sum.as_slice().ct_eq(&expected[..])).then_some((cursor, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::page_token;

    #[test]
    fn page_tokens_open_only_for_their_request() {
        let digest = [7u8; 32];
        let token = page_token::seal("document:42", 5, &digest);
        assert_eq!(
            page_token::open(&token, &digest),
            Some(("document:42".to_owned(), 5))
        );
        assert_eq!(page_token::open(&token, &[8u8; 32]), None);
        let mut tampered = token.clone();
        tampered.push_str("00");
        assert_eq!(page_token::open(&tampered, &digest), None);
        let other_limit = token.replacen(".5.", ".6.", 1);
        assert_eq!(page_token::open(&other_limit, &digest), None);
        assert_eq!(page_token::open("nonsense", &digest), None);
    }
}
