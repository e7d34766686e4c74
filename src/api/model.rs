//! The AuthZEN information model as requests carry it: subject, resource,
//! action, context, evaluations and pages, read from JSON by hand.
//!
//! Reading by hand rather than by derive gives every missing or mistyped
//! field a message that names it (`subject.id must be a string`), and
//! unknown fields are ignored, as the specification requires. `null` counts
//! as absent (the specification asks senders to omit nulls). Properties and
//! context are kept as shared JSON objects (`Arc`): attribute conditions
//! read them (`subject.properties`, `resource.properties`,
//! `action.properties`, `context.properties`), and a batch's defaults are
//! read once and shared by every item, never copied per item.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

/// A JSON object.
pub type Object = Map<String, Value>;

/// Most evaluations one `/access/v1/evaluations` request may carry; more is
/// a 400. Advertised in the metadata (`max_evaluations`).
pub const MAX_EVALUATIONS: usize = 1000;

/// A request the caller got wrong: 400 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

/// A subject or a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub kind: String,
    pub id: String,
    pub properties: Option<Arc<Object>>,
}

/// An action.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub name: String,
    pub properties: Option<Arc<Object>>,
}

/// One access evaluation: the 4-tuple.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub subject: Entity,
    pub action: Action,
    pub resource: Entity,
    pub context: Option<Arc<Object>>,
}

/// How a batch of evaluations runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Semantic {
    #[default]
    ExecuteAll,
    DenyOnFirstDeny,
    PermitOnFirstPermit,
}

/// A batch: the top-level defaults, each read once, and each item as
/// sent, read into an [`Evaluation`] only when its turn comes, so a broken
/// item (or a broken default only some items use) fails alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluations {
    defaults: Defaults,
    /// `None` when the request has no (or an empty) `evaluations` array:
    /// then it is one evaluation, answered as one.
    pub items: Option<Vec<Object>>,
    pub semantic: Semantic,
}

/// The top-level subject, action, resource and context of a batch, read
/// once; an item takes each one it lacks by cloning a few strings and an
/// `Arc`, whatever the size of the default's properties.
#[derive(Debug, Clone, PartialEq, Default)]
struct Defaults {
    subject: Option<Result<Entity, BadRequest>>,
    action: Option<Result<Action, BadRequest>>,
    resource: Option<Result<Entity, BadRequest>>,
    context: Option<Arc<Object>>,
    /// The top-level subject's and resource's `type` and `id` as sent:
    /// what an item's entity lacking one of them falls back to.
    subject_names: Object,
    resource_names: Object,
}

/// The `type` and `id` of the top-level `key`, as sent.
fn names_of(body: &Object, key: &str) -> Object {
    let Some(Value::Object(entity)) = get(body, key) else {
        return Object::new();
    };
    ["type", "id"]
        .into_iter()
        .filter_map(|field| Some((field.to_owned(), get(entity, field)?.clone())))
        .collect()
}

/// The `page` of a search request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageRequest {
    pub token: Option<String>,
    pub limit: Option<u64>,
}

/// A search request: the entity searched for has only a type.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    /// Absent in an action search.
    pub subject: Option<Entity>,
    pub action: Option<Action>,
    pub resource: Option<Entity>,
    pub context: Option<Arc<Object>>,
    pub page: PageRequest,
}

/// Which entity a search lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchKind {
    Subject,
    Resource,
    Action,
}

impl SearchKind {
    pub fn name(self) -> &'static str {
        match self {
            SearchKind::Subject => "subject",
            SearchKind::Resource => "resource",
            SearchKind::Action => "action",
        }
    }
}

/// A field's value, with `null` read as absent.
fn get<'v>(object: &'v Object, key: &str) -> Option<&'v Value> {
    object.get(key).filter(|v| !v.is_null())
}

/// Where a field sits in a body (`evaluations[2].` and `subject`),
/// written out only when a message names it.
#[derive(Clone, Copy)]
struct At<'a> {
    path: &'a str,
    key: &'a str,
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.path, self.key)
    }
}

fn string(object: &Object, key: &str, path: impl fmt::Display) -> Result<String, BadRequest> {
    match get(object, key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(format!("{path}.{key} must be a string"))),
        None => Err(bad(format!("{path}.{key} is required"))),
    }
}

fn optional_object(
    object: &Object,
    key: &str,
    path: impl fmt::Display,
) -> Result<Option<Arc<Object>>, BadRequest> {
    match get(object, key) {
        Some(Value::Object(o)) => Ok(Some(Arc::new(o.clone()))),
        Some(_) => Err(bad(format!("{path}{key} must be an object"))),
        None => Ok(None),
    }
}

fn required_object<'v>(
    object: &'v Object,
    key: &str,
    path: &str,
) -> Result<&'v Object, BadRequest> {
    match get(object, key) {
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(bad(format!("{path}{key} must be an object"))),
        None => Err(bad(format!("{path}{key} is required"))),
    }
}

/// Reads a subject or resource; `with_id` false for the entity a search
/// lists (its id, if sent, is ignored).
fn entity(object: &Object, key: &str, path: &str, with_id: bool) -> Result<Entity, BadRequest> {
    let value = required_object(object, key, path)?;
    let here = At { path, key };
    let kind = string(value, "type", here)?;
    // A type is one word of the policy's `type:id` names: a `:` in it
    // would make `{"type": "record:1", "id": ""}` another resource's name.
    if kind.is_empty() || kind.contains(':') {
        return Err(bad(format!(
            "{here}.type must be a non-empty type without ':'"
        )));
    }
    let id = if with_id {
        string(value, "id", here)?
    } else {
        String::new()
    };
    // A resource's empty id names the collection (`documents`); a subject
    // is always someone.
    if with_id && key == "subject" && id.is_empty() {
        return Err(bad(format!("{here}.id must not be empty")));
    }
    let properties = optional_object(value, "properties", format_args!("{here}."))?;
    Ok(Entity {
        kind,
        id,
        properties,
    })
}

fn action(object: &Object, path: &str) -> Result<Action, BadRequest> {
    let value = required_object(object, "action", path)?;
    let here = At {
        path,
        key: "action",
    };
    let name = string(value, "name", here)?;
    if name.is_empty() {
        return Err(bad(format!("{here}.name must not be empty")));
    }
    Ok(Action {
        name,
        properties: optional_object(value, "properties", format_args!("{here}."))?,
    })
}

/// Reads one evaluation from `object`; `path` prefixes field names in
/// messages (`evaluations[2].`).
pub fn evaluation(object: &Object, path: &str) -> Result<Evaluation, BadRequest> {
    Ok(Evaluation {
        subject: entity(object, "subject", path, true)?,
        action: action(object, path)?,
        resource: entity(object, "resource", path, true)?,
        context: optional_object(object, "context", path)?,
    })
}

/// The top level of a body: a JSON object.
pub(crate) fn body_object(body: &[u8]) -> Result<Object, BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("the request body is empty; a JSON object is required"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(bad("the request body must be a JSON object")),
        Err(e) => Err(bad(format!("the request body is not valid JSON: {e}"))),
    }
}

/// The keys a batch item may take from the top level.
const DEFAULTED: [&str; 4] = ["subject", "action", "resource", "context"];

/// Reads an access evaluations request; more than [`MAX_EVALUATIONS`]
/// items is the whole request's fault.
pub fn evaluations(mut body: Object) -> Result<Evaluations, BadRequest> {
    let semantic = match get(&body, "options") {
        None => Semantic::default(),
        Some(Value::Object(options)) => match get(options, "evaluations_semantic") {
            None => Semantic::default(),
            Some(Value::String(s)) => match s.as_str() {
                "execute_all" => Semantic::ExecuteAll,
                "deny_on_first_deny" => Semantic::DenyOnFirstDeny,
                "permit_on_first_permit" => Semantic::PermitOnFirstPermit,
                other => {
                    return Err(bad(format!(
                        "options.evaluations_semantic {other:?} is not one of execute_all, deny_on_first_deny, permit_on_first_permit"
                    )))
                }
            },
            Some(_) => return Err(bad("options.evaluations_semantic must be a string")),
        },
        Some(_) => return Err(bad("options must be an object")),
    };
    let items = match body.remove("evaluations") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if items.is_empty() => None,
        Some(Value::Array(items)) if items.len() > MAX_EVALUATIONS => {
            return Err(bad(format!(
                "evaluations has {} items; at most {MAX_EVALUATIONS} are accepted in one request",
                items.len()
            )))
        }
        Some(Value::Array(items)) => Some(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Object(o) => Ok(o),
                    _ => Err(bad(format!("evaluations[{i}] must be an object"))),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(bad("evaluations must be an array")),
    };
    // Defaults of the wrong type are the whole request's fault.
    for key in DEFAULTED {
        if let Some(value) = get(&body, key) {
            if !value.is_object() {
                return Err(bad(format!("{key} must be an object")));
            }
        }
    }
    let defaults = Defaults {
        subject: get(&body, "subject").map(|_| entity(&body, "subject", "", true)),
        action: get(&body, "action").map(|_| action(&body, "")),
        resource: get(&body, "resource").map(|_| entity(&body, "resource", "", true)),
        context: optional_object(&body, "context", "")?,
        subject_names: names_of(&body, "subject"),
        resource_names: names_of(&body, "resource"),
    };
    Ok(Evaluations {
        defaults,
        items,
        semantic,
    })
}

/// An item's own value for `key`, if it sends one (not `null`).
fn own<'v>(item: Option<&'v Object>, key: &str) -> Option<&'v Object> {
    item.filter(|item| get(item, key).is_some())
}

impl Evaluations {
    /// Item `i` with the top-level defaults filled in: a key the item has
    /// replaces the default whole.
    pub fn item(&self, i: usize, item: &Object) -> Result<Evaluation, BadRequest> {
        self.compose(Some(item), &format!("evaluations[{i}]."))
    }

    /// The request without items: its top level is the one evaluation.
    pub fn single(&self) -> Result<Evaluation, BadRequest> {
        self.compose(None, "")
    }

    fn compose(&self, item: Option<&Object>, path: &str) -> Result<Evaluation, BadRequest> {
        let missing = |key: &str| bad(format!("{path}{key} is required"));
        let subject = match (own(item, "subject"), &self.defaults.subject) {
            (Some(item), _) => with_names(item, "subject", &self.defaults.subject_names, path)?,
            (None, Some(default)) => default.clone()?,
            (None, None) => return Err(missing("subject")),
        };
        let action = match (own(item, "action"), &self.defaults.action) {
            (Some(item), _) => action(item, path)?,
            (None, Some(default)) => default.clone()?,
            (None, None) => return Err(missing("action")),
        };
        let resource = match (own(item, "resource"), &self.defaults.resource) {
            (Some(item), _) => with_names(item, "resource", &self.defaults.resource_names, path)?,
            (None, Some(default)) => default.clone()?,
            (None, None) => return Err(missing("resource")),
        };
        let context = match own(item, "context") {
            Some(item) => optional_object(item, "context", path)?,
            None => self.defaults.context.clone(),
        };
        Ok(Evaluation {
            subject,
            action,
            resource,
            context,
        })
    }
}

/// An item's own entity `key`, which replaces the default whole but for a
/// required `type` or `id` it lacks: those fall back to the default's (the
/// certification scenario's "default value merging").
fn with_names(item: &Object, key: &str, names: &Object, path: &str) -> Result<Entity, BadRequest> {
    let lacking = match get(item, key) {
        Some(Value::Object(own)) => names.keys().any(|field| get(own, field).is_none()),
        _ => false,
    };
    if !lacking {
        return entity(item, key, path, true);
    }
    let mut own = match get(item, key) {
        Some(Value::Object(own)) => own.clone(),
        _ => Object::new(),
    };
    for (field, value) in names {
        if get(&own, field).is_none() {
            own.insert(field.clone(), value.clone());
        }
    }
    let mut patched = Object::new();
    patched.insert(key.to_owned(), Value::Object(own));
    entity(&patched, key, path, true)
}

/// Reads a search request for `kind`.
pub fn search(body: &Object, kind: SearchKind) -> Result<Search, BadRequest> {
    let subject = entity(body, "subject", "", kind != SearchKind::Subject)?;
    let action = match kind {
        SearchKind::Action => None,
        _ => Some(action(body, "")?),
    };
    let resource = entity(body, "resource", "", kind != SearchKind::Resource)?;
    let context = optional_object(body, "context", "")?;
    let page = match get(body, "page") {
        None => PageRequest::default(),
        Some(Value::Object(page)) => PageRequest {
            token: match get(page, "token") {
                None => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(bad("page.token must be a string")),
            },
            limit: match get(page, "limit") {
                None => None,
                Some(Value::Number(n)) => Some(
                    n.as_u64()
                        .ok_or_else(|| bad("page.limit must be a non-negative integer"))?,
                ),
                Some(_) => return Err(bad("page.limit must be a non-negative integer")),
            },
        },
        Some(_) => return Err(bad("page must be an object")),
    };
    Ok(Search {
        subject: Some(subject),
        action,
        resource: Some(resource),
        context,
        page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(text: &str) -> Object {
        body_object(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn fields_are_named_when_missing_or_mistyped() {
        let ok = object(
            r#"{"subject":{"type":"user","id":"alice","x":1},"action":{"name":"read"},"resource":{"type":"document","id":"1"},"extra":true}"#,
        );
        assert_eq!(
            evaluation(&ok, "").map(|e| e.subject.id),
            Ok("alice".into())
        );
        for (text, message) in [
            (
                r#"{"action":{"name":"read"},"resource":{"type":"d","id":"1"}}"#,
                "subject is required",
            ),
            (
                r#"{"subject":{"type":"user","id":7},"action":{"name":"read"},"resource":{"type":"d","id":"1"}}"#,
                "subject.id must be a string",
            ),
            (
                r#"{"subject":{"type":"user","id":"a"},"action":"read","resource":{"type":"d","id":"1"}}"#,
                "action must be an object",
            ),
            (
                r#"{"subject":{"type":"user","id":"a"},"action":{"name":"read"},"resource":{"type":"d","id":"1"},"context":[]}"#,
                "context must be an object",
            ),
        ] {
            assert_eq!(evaluation(&object(text), ""), Err(bad(message)), "{text}");
        }
        assert!(body_object(b"").is_err());
        assert!(body_object(b"[]").is_err());
        assert!(body_object(b"{").is_err());
    }

    #[test]
    fn batch_items_replace_defaults_whole() {
        let batch = evaluations(object(
            r#"{"subject":{"type":"user","id":"alice"},"action":{"name":"read"},"evaluations":[{"resource":{"type":"d","id":"1"}},{"action":{"name":"write"},"resource":{"type":"d","id":"2"}}]}"#,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let items = batch.items.clone().unwrap_or_default();
        let second = batch.item(1, &items[1]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(second.action.name, "write");
        assert_eq!(second.subject.id, "alice");
    }

    #[test]
    fn batch_defaults_are_shared_not_copied() {
        let batch = evaluations(object(
            r#"{"subject":{"type":"user","id":"alice","properties":{"a":1}},"action":{"name":"read"},"resource":{"type":"d","id":"1"},"context":{"big":[1,2,3]},"evaluations":[{},{}]}"#,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let items = batch.items.clone().unwrap_or_default();
        let first = batch.item(0, &items[0]).unwrap_or_else(|e| panic!("{e}"));
        let second = batch.item(1, &items[1]).unwrap_or_else(|e| panic!("{e}"));
        let same = |a: &Option<Arc<Object>>, b: &Option<Arc<Object>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        assert!(same(&first.context, &second.context));
        assert!(same(&first.subject.properties, &second.subject.properties));
    }

    #[test]
    fn batches_over_the_cap_are_refused_whole() {
        let items = vec!["{}"; MAX_EVALUATIONS + 1].join(",");
        let text = format!(r#"{{"evaluations":[{items}]}}"#);
        assert!(evaluations(object(&text)).is_err());
        let items = vec!["{}"; MAX_EVALUATIONS].join(",");
        let text = format!(r#"{{"evaluations":[{items}]}}"#);
        assert!(evaluations(object(&text)).is_ok());
    }
}
