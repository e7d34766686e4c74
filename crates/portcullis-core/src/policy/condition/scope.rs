//! What a decision's conditions see: the attributes the engine gathered
//! ([`Inputs`]), held as they are ([`Scope`]). The fast path ([`super::fast`])
//! reads them in place; they are turned into CEL values only for a
//! condition the fast path leaves to `cel`, once per decision.

use super::*;
use std::borrow::Cow;

/// The attributes of one decision, as the engine gathers them: borrowed,
/// never copied for the fast path; turned into CEL values once per
/// decision, only when `cel` evaluates a condition.
#[derive(Debug, Default, Clone)]
pub struct Inputs<'a> {
    pub subject_id: &'a str,
    pub groups: Vec<&'a str>,
    /// Verified token claims (empty unless the policy's conditions read them).
    pub claims: Option<&'a Map<String, Json>>,
    /// Subject properties given by the caller of the resource/action form.
    pub subject_properties: Option<&'a Map<String, Json>>,
    /// The resource, as rendered (`type:id`).
    pub resource: Option<&'a str>,
    /// Resource properties given by the caller of the resource/action form.
    pub resource_properties: Option<&'a Map<String, Json>>,
    /// The route's captures by name (on the Envoy path): resource properties too.
    pub captures: Vec<(&'a str, &'a str)>,
    pub action: Option<&'a str>,
    /// Action properties given by the caller of the resource/action form.
    pub action_properties: Option<&'a Map<String, Json>>,
    /// Seconds since the epoch: `context.time`.
    pub now: u64,
    /// The request headers the route names, lower-case.
    pub headers: Option<&'a BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
    /// Envoy's context extensions.
    pub extensions: Option<&'a BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
    /// Context properties given by the caller of the resource/action form.
    pub context_properties: Option<&'a Map<String, Json>>,
}

/// What one decision's conditions see: its [`Inputs`], and their CEL
/// values, built on first use by a condition `cel` evaluates. `None` there
/// when they could not be built (then every such condition is false).
pub struct Scope<'a> {
    pub(super) inputs: Inputs<'a>,
    env: &'a ConditionEnv,
    context: OnceCell<Option<Context<'static, 'static>>>,
}

impl<'a> Scope<'a> {
    pub fn new(env: &'a ConditionEnv, inputs: Inputs<'a>) -> Scope<'a> {
        Scope {
            inputs,
            env,
            context: OnceCell::new(),
        }
    }

    /// The CEL variables, built now if no condition needed them before.
    pub(super) fn context(&self) -> Option<&Context<'static, 'static>> {
        self.context
            .get_or_init(|| build_context(self.env, &self.inputs))
            .as_ref()
    }

    /// Whether the CEL variables were built.
    #[cfg(test)]
    pub(super) fn built(&self) -> bool {
        self.context.get().is_some()
    }
}

fn build_context(env: &ConditionEnv, i: &Inputs<'_>) -> Option<Context<'static, 'static>> {
    let string = |s: &str| Value::String(Arc::new(s.to_owned()));
    let object = |fields: Vec<(&str, Value)>| -> Value {
        let map: HashMap<Key, Value> = fields
            .into_iter()
            .map(|(k, v)| (Key::from(k.to_owned()), v))
            .collect();
        Value::Map(CelMap { map: Arc::new(map) })
    };
    let json_map = |m: Option<&Map<String, Json>>| -> Value {
        let map: HashMap<Key, Value> = m
            .into_iter()
            .flatten()
            .map(|(k, v)| (Key::from(k.clone()), from_json(v)))
            .collect();
        Value::Map(CelMap { map: Arc::new(map) })
    };
    let string_map = |m: Option<&BTreeMap<Cow<'_, str>, Cow<'_, str>>>| -> Value {
        let map: HashMap<Key, Value> = m
            .into_iter()
            .flatten()
            .map(|(k, v)| (Key::from(k.to_string()), string(v)))
            .collect();
        Value::Map(CelMap { map: Arc::new(map) })
    };

    let mut subject = vec![
        ("id", string(i.subject_id)),
        (
            "groups",
            Value::List(Arc::new(i.groups.iter().map(|g| string(g)).collect())),
        ),
        ("claims", json_map(i.claims)),
        ("properties", json_map(i.subject_properties)),
    ];
    if i.subject_id.is_empty() {
        subject.retain(|(k, _)| *k != "id");
    }

    let mut resource = Vec::new();
    if let Some(rendered) = i.resource {
        match rendered.split_once(':') {
            Some((ty, id)) => {
                resource.push(("type", string(ty)));
                if !id.is_empty() {
                    resource.push(("id", string(id)));
                }
            }
            None => resource.push(("type", string(rendered))),
        }
    }
    let mut properties: HashMap<Key, Value> = i
        .resource_properties
        .into_iter()
        .flatten()
        .map(|(k, v)| (Key::from(k.clone()), from_json(v)))
        .collect();
    for (name, value) in &i.captures {
        properties.insert(Key::from((*name).to_owned()), string(value));
    }
    resource.push((
        "properties",
        Value::Map(CelMap {
            map: Arc::new(properties),
        }),
    ));

    let mut action = vec![("properties", json_map(i.action_properties))];
    if let Some(name) = i.action {
        action.push(("name", string(name)));
    }

    let time = i64::try_from(i.now)
        .ok()
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .map(|t| Value::Timestamp(t.fixed_offset()));
    let mut context = vec![
        ("headers", string_map(i.headers)),
        ("extensions", string_map(i.extensions)),
        ("properties", json_map(i.context_properties)),
    ];
    if let Some(time) = time {
        context.push(("time", time));
    }

    let mut cel = Context::with_env(env.0.clone());
    for (name, value) in [
        ("subject", object(subject)),
        ("resource", object(resource)),
        ("action", object(action)),
        ("context", object(context)),
    ] {
        let value: Box<dyn Val> = value.try_into().ok()?;
        cel.add_variable_as_val(name, value);
    }
    Some(cel)
}

/// JSON as CEL sees it: integers that fit stay integers (so
/// `subject.claims.level >= 3` compares as written), other numbers are
/// doubles.
fn from_json(value: &Json) -> Value {
    match value {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => Value::UInt(u),
            (None, None, Some(f)) => Value::Float(f),
            (None, None, None) => Value::Null,
        },
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(from_json).collect())),
        Json::Object(fields) => {
            let map: HashMap<Key, Value> = fields
                .iter()
                .map(|(k, v)| (Key::from(k.clone()), from_json(v)))
                .collect();
            Value::Map(CelMap { map: Arc::new(map) })
        }
    }
}

// ---------------------------------------------------------------------------
// The checker.
