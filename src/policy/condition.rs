//! Attribute conditions: CEL expressions a grant or a route carries, such as
//! `resource.properties.ownerID == subject.id`.
//!
//! A condition is parsed by the `cel` crate and then checked here, at load,
//! against the attributes Portcullis defines (the crate has no type checker
//! of its own): an unknown root or field of `subject`, `resource`, `action`
//! or `context`, an unknown function, or operands of types that can never
//! meet (`context.time > 5`, `subject.id == 1`) are load errors. Maps whose
//! content comes from the request (`subject.claims`, `*.properties`) are
//! dynamic: what they hold is only known when deciding.
//!
//! Evaluating is pure and fails closed: a missing attribute, an evaluation
//! error, a result that is not `true`, even a panic inside the interpreter,
//! make the condition false. The attribute values are built once per
//! decision, and only when a condition is evaluated ([`Scope`]), so a policy
//! without conditions never builds them.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use cel::common::value::Val;
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Env, Program, Value};
use serde_json::{Map, Value as Json};

/// Longest condition accepted, in bytes: conditions are rules, not programs.
pub const MAX_CONDITION_LEN: usize = 4096;

/// The CEL environment every condition of a policy is compiled and run in:
/// the standard library, built once per policy.
#[derive(Clone)]
pub struct ConditionEnv(Arc<Env>);

impl ConditionEnv {
    pub fn new() -> Self {
        Self(Arc::new(Env::stdlib()))
    }
}

impl Default for ConditionEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ConditionEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConditionEnv")
    }
}

/// What a condition reads beyond the subject, resource and action: the
/// loader keeps verified claims only for a policy whose conditions read
/// them, and the engine caps the validity of a decision that read the time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reads {
    /// `subject.claims`.
    pub claims: bool,
    /// `context.time`.
    pub time: bool,
}

impl Reads {
    pub fn union(self, other: Reads) -> Reads {
        Reads {
            claims: self.claims || other.claims,
            time: self.time || other.time,
        }
    }
}

/// A compiled, checked condition.
pub struct Condition {
    source: String,
    program: Program,
    reads: Reads,
    /// Header names the condition reads with a literal key
    /// (`context.headers["x-tenant"]`), for the loader to check that some
    /// route names them.
    headers: Vec<String>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

/// Why a condition was refused at load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("condition is empty")]
    Empty,
    #[error("condition is longer than {MAX_CONDITION_LEN} bytes")]
    TooLong,
    #[error("syntax error in condition: {0}")]
    Syntax(String),
    #[error("{message} (column {column} of the condition)")]
    Check { message: String, column: usize },
}

impl Condition {
    /// Parses and checks `source`.
    pub fn compile(env: &ConditionEnv, source: &str) -> Result<Self, ConditionError> {
        let source = source.trim();
        if source.is_empty() {
            return Err(ConditionError::Empty);
        }
        if source.len() > MAX_CONDITION_LEN {
            return Err(ConditionError::TooLong);
        }
        // The parser has been seen to panic on odd input in other
        // versions; a panic while loading must not take the server down.
        let parsed = std::panic::catch_unwind(AssertUnwindSafe(|| env.0.compile(source)))
            .map_err(|_| ConditionError::Syntax("the parser failed on this input".into()))?;
        let program = parsed.map_err(|errors| {
            let text: Vec<String> = errors
                .errors
                .iter()
                .map(|e| format!("{} at line {}, column {}", e.msg, e.pos.0, e.pos.1 + 1))
                .collect();
            ConditionError::Syntax(text.join("; "))
        })?;
        let mut checker = Checker {
            scopes: Vec::new(),
            reads: Reads::default(),
            headers: Vec::new(),
        };
        let ty = checker.infer(program.expression()).map_err(|e| {
            let column = program
                .source_info()
                .offset_for(e.id)
                .map_or(1, |(start, _)| column_of(source, start as usize));
            ConditionError::Check {
                message: e.message,
                column,
            }
        })?;
        if !matches!(ty, Ty::Bool | Ty::Dyn) {
            return Err(ConditionError::Check {
                message: format!("a condition must be true or false, this one is {ty}"),
                column: 1,
            });
        }
        Ok(Self {
            source: source.to_owned(),
            program,
            reads: checker.reads,
            headers: checker.headers,
        })
    }

    /// The condition as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn reads(&self) -> Reads {
        self.reads
    }

    /// Header names read with a literal key.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// True only when the condition evaluates to `true` in `scope`. A
    /// missing attribute, an error or a panic in the interpreter is false.
    pub fn holds(&self, scope: &Scope) -> bool {
        let Some(context) = &scope.context else {
            return false;
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.program.execute(context)));
        matches!(result, Ok(Ok(Value::Bool(true))))
    }
}

/// The column (1-based, in characters) of byte `offset` in `source`.
fn column_of(source: &str, offset: usize) -> usize {
    let before = source.get(..offset.min(source.len())).unwrap_or(source);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    before[line_start..].chars().count() + 1
}

/// The attributes of one decision, as the engine gathers them; turned into
/// CEL values by [`Scope::new`], once per decision, only when a condition
/// is evaluated.
#[derive(Debug, Default)]
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
    pub headers: Option<&'a BTreeMap<String, String>>,
    /// Envoy's context extensions.
    pub extensions: Option<&'a BTreeMap<String, String>>,
    /// Context properties given by the caller of the resource/action form.
    pub context_properties: Option<&'a Map<String, Json>>,
}

/// The CEL variables of one decision. `None` inside when they could not be
/// built (then every condition is false).
pub struct Scope {
    context: Option<Context<'static, 'static>>,
}

impl Scope {
    pub fn new(env: &ConditionEnv, inputs: &Inputs<'_>) -> Scope {
        Scope {
            context: build_context(env, inputs),
        }
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
    let string_map = |m: Option<&BTreeMap<String, String>>| -> Value {
        let map: HashMap<Key, Value> = m
            .into_iter()
            .flatten()
            .map(|(k, v)| (Key::from(k.clone()), string(v)))
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

/// A static type, as far as the checker knows it.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Null,
    Timestamp,
    Duration,
    List(Box<Ty>),
    /// A map with string keys.
    Map(Box<Ty>),
    Object(Root),
    /// Known only when deciding (request data).
    Dyn,
}

impl std::fmt::Display for Ty {
    /// The type with its article, as messages use it: "a string", "an int".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.name();
        let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        write!(f, "{article} {name}")
    }
}

impl Ty {
    fn name(&self) -> String {
        match self {
            Ty::Bool => "bool".into(),
            Ty::Int => "int".into(),
            Ty::Uint => "uint".into(),
            Ty::Double => "double".into(),
            Ty::String => "string".into(),
            Ty::Bytes => "bytes".into(),
            Ty::Null => "null".into(),
            Ty::Timestamp => "timestamp".into(),
            Ty::Duration => "duration".into(),
            Ty::List(t) => format!("list of {}", t.name()),
            Ty::Map(t) => format!("map of {}", t.name()),
            Ty::Object(root) => format!("`{}` object", root.name()),
            Ty::Dyn => "dynamic value".into(),
        }
    }

    fn is_numeric(&self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Double)
    }

    /// Whether values of the two types can ever be equal (or compared).
    fn meets(&self, other: &Ty) -> bool {
        match (self, other) {
            (Ty::Dyn, _) | (_, Ty::Dyn) => true,
            // `x == null` is how a caller tests for a JSON null.
            (Ty::Null, _) | (_, Ty::Null) => true,
            (a, b) if a.is_numeric() && b.is_numeric() => true,
            (Ty::List(a), Ty::List(b)) | (Ty::Map(a), Ty::Map(b)) => a.meets(b),
            (a, b) => a == b,
        }
    }
}

/// The attribute roots a condition may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Subject,
    Resource,
    Action,
    Context,
}

impl Root {
    fn parse(name: &str) -> Option<Root> {
        match name {
            "subject" => Some(Root::Subject),
            "resource" => Some(Root::Resource),
            "action" => Some(Root::Action),
            "context" => Some(Root::Context),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Root::Subject => "subject",
            Root::Resource => "resource",
            Root::Action => "action",
            Root::Context => "context",
        }
    }

    fn fields(self) -> &'static [&'static str] {
        match self {
            Root::Subject => &["id", "groups", "claims", "properties"],
            Root::Resource => &["type", "id", "properties"],
            Root::Action => &["name", "properties"],
            Root::Context => &["time", "headers", "extensions", "properties"],
        }
    }

    fn field(self, name: &str) -> Option<Ty> {
        let dyn_map = || Ty::Map(Box::new(Ty::Dyn));
        let string_map = || Ty::Map(Box::new(Ty::String));
        let ty = match (self, name) {
            (Root::Subject, "id") => Ty::String,
            (Root::Subject, "groups") => Ty::List(Box::new(Ty::String)),
            (Root::Subject, "claims" | "properties") => dyn_map(),
            (Root::Resource, "type" | "id") => Ty::String,
            (Root::Resource, "properties") => dyn_map(),
            (Root::Action, "name") => Ty::String,
            (Root::Action, "properties") => dyn_map(),
            (Root::Context, "time") => Ty::Timestamp,
            (Root::Context, "headers" | "extensions") => string_map(),
            (Root::Context, "properties") => dyn_map(),
            _ => return None,
        };
        Some(ty)
    }
}

struct CheckError {
    message: String,
    id: u64,
}

struct Checker {
    /// Variables bound by comprehensions (`exists(x, ...)`), innermost last.
    scopes: Vec<(String, Ty)>,
    reads: Reads,
    headers: Vec<String>,
}

type Checked = Result<Ty, CheckError>;

fn fail(e: &IdedExpr, message: impl Into<String>) -> CheckError {
    CheckError {
        message: message.into(),
        id: e.id,
    }
}

/// The accessor functions of a timestamp (and some of a duration).
const TIME_ACCESSORS: &[&str] = &[
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
];

impl Checker {
    fn infer(&mut self, e: &IdedExpr) -> Checked {
        match &e.expr {
            Expr::Literal(literal) => Ok(match literal {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::Uint,
            }),
            Expr::Ident(name) => {
                if let Some((_, ty)) = self.scopes.iter().rev().find(|(n, _)| n == name) {
                    return Ok(ty.clone());
                }
                match Root::parse(name) {
                    Some(root) => Ok(Ty::Object(root)),
                    None => Err(fail(
                        e,
                        format!("unknown attribute `{name}` (a condition reads subject, resource, action and context)"),
                    )),
                }
            }
            Expr::Select(select) => {
                let operand = self.infer(&select.operand)?;
                let ty = self.select(e, &operand, &select.field)?;
                if let Ty::Object(Root::Context) = operand {
                    if select.field == "time" {
                        self.reads.time = true;
                    }
                }
                if let Ty::Object(Root::Subject) = operand {
                    if select.field == "claims" {
                        self.reads.claims = true;
                    }
                }
                // `has(a.b)` is a presence test: true or false.
                Ok(if select.test { Ty::Bool } else { ty })
            }
            Expr::List(list) => {
                let mut element: Option<Ty> = None;
                for item in &list.elements {
                    let ty = self.infer(item)?;
                    element = Some(match element {
                        None => ty,
                        Some(seen) if seen == ty => seen,
                        Some(_) => Ty::Dyn,
                    });
                }
                Ok(Ty::List(Box::new(element.unwrap_or(Ty::Dyn))))
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(entry) = &entry.expr {
                        self.infer(&entry.key)?;
                        self.infer(&entry.value)?;
                    }
                }
                Ok(Ty::Map(Box::new(Ty::Dyn)))
            }
            Expr::Struct(_) => Err(fail(e, "a condition cannot build messages")),
            Expr::Unspecified => Err(fail(e, "incomplete expression")),
            Expr::Comprehension(c) => {
                let range = self.infer(&c.iter_range)?;
                let (first, second) = match &range {
                    Ty::List(element) => (Ty::Int, (**element).clone()),
                    Ty::Map(value) => (Ty::String, (**value).clone()),
                    Ty::Dyn => (Ty::Dyn, Ty::Dyn),
                    other => {
                        return Err(fail(&c.iter_range, format!("cannot iterate over {other}")))
                    }
                };
                let accu = self.infer(&c.accu_init)?;
                let depth = self.scopes.len();
                match &c.iter_var2 {
                    Some(second_var) => {
                        self.scopes.push((c.iter_var.clone(), first));
                        self.scopes.push((second_var.clone(), second));
                    }
                    None => {
                        let element = match range {
                            Ty::List(_) => second,
                            Ty::Map(_) => Ty::String,
                            _ => Ty::Dyn,
                        };
                        self.scopes.push((c.iter_var.clone(), element));
                    }
                }
                // The accumulator's type may widen in the loop (a list
                // built by `map`): treat it as dynamic inside.
                let accu_inside = match accu {
                    Ty::Bool => Ty::Bool,
                    Ty::Int => Ty::Int,
                    _ => Ty::Dyn,
                };
                self.scopes.push((c.accu_var.clone(), accu_inside));
                let result = (|| {
                    self.infer(&c.loop_cond)?;
                    self.infer(&c.loop_step)?;
                    self.infer(&c.result)
                })();
                self.scopes.truncate(depth);
                result
            }
            Expr::Call(call) => self.call(e, call),
        }
    }

    fn select(&mut self, e: &IdedExpr, operand: &Ty, field: &str) -> Checked {
        match operand {
            Ty::Object(root) => root.field(field).ok_or_else(|| {
                fail(
                    e,
                    format!(
                        "unknown attribute `{}.{field}` ({} has {})",
                        root.name(),
                        root.name(),
                        root.fields().join(", ")
                    ),
                )
            }),
            Ty::Map(value) => Ok((**value).clone()),
            Ty::Dyn => Ok(Ty::Dyn),
            other => Err(fail(e, format!("{other} has no field `{field}`"))),
        }
    }

    fn call(&mut self, e: &IdedExpr, call: &cel::common::ast::CallExpr) -> Checked {
        use cel::common::ast::operators as op;
        let name = call.func_name.as_str();
        let target = match &call.target {
            Some(t) => Some(self.infer(t)?),
            None => None,
        };
        let mut args = Vec::with_capacity(call.args.len());
        for arg in &call.args {
            args.push(self.infer(arg)?);
        }
        let want_bool = |ty: &Ty, at: &IdedExpr, what: &str| {
            if matches!(ty, Ty::Bool | Ty::Dyn) {
                Ok(())
            } else {
                Err(fail(at, format!("{what} needs true or false, not {ty}")))
            }
        };
        let arity = |n: usize| -> Result<(), CheckError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(fail(e, format!("`{name}` takes {n} argument(s)")))
            }
        };
        match (name, &target) {
            (op::LOGICAL_AND | op::LOGICAL_OR, None) => {
                arity(2)?;
                for (ty, at) in args.iter().zip(&call.args) {
                    want_bool(ty, at, "`&&` and `||`")?;
                }
                Ok(Ty::Bool)
            }
            (op::LOGICAL_NOT, None) => {
                arity(1)?;
                want_bool(&args[0], &call.args[0], "`!`")?;
                Ok(Ty::Bool)
            }
            (op::NOT_STRICTLY_FALSE, None) => Ok(Ty::Bool),
            (op::CONDITIONAL, None) => {
                arity(3)?;
                want_bool(&args[0], &call.args[0], "`?:`")?;
                Ok(if args[1] == args[2] {
                    args[1].clone()
                } else {
                    Ty::Dyn
                })
            }
            (op::EQUALS | op::NOT_EQUALS, None) => {
                arity(2)?;
                if !args[0].meets(&args[1]) {
                    return Err(fail(
                        e,
                        format!("{} is never equal to {}", args[0], args[1]),
                    ));
                }
                Ok(Ty::Bool)
            }
            (op::LESS | op::LESS_EQUALS | op::GREATER | op::GREATER_EQUALS, None) => {
                arity(2)?;
                let orderable = |t: &Ty| {
                    t.is_numeric()
                        || matches!(
                            t,
                            Ty::String
                                | Ty::Bytes
                                | Ty::Bool
                                | Ty::Timestamp
                                | Ty::Duration
                                | Ty::Dyn
                        )
                };
                let (a, b) = (&args[0], &args[1]);
                if !orderable(a) || !orderable(b) || !a.meets(b) || *a == Ty::Null {
                    return Err(fail(e, format!("{a} cannot be compared with {b}")));
                }
                Ok(Ty::Bool)
            }
            (op::ADD | op::SUBSTRACT | op::MULTIPLY | op::DIVIDE | op::MODULO, None) => {
                arity(2)?;
                self.arithmetic(e, name, &args[0], &args[1])
            }
            (op::NEGATE, None) => {
                arity(1)?;
                match &args[0] {
                    t if t.is_numeric() => Ok(t.clone()),
                    Ty::Duration | Ty::Dyn => Ok(args[0].clone()),
                    t => Err(fail(e, format!("cannot negate {t}"))),
                }
            }
            (op::INDEX, None) => {
                arity(2)?;
                match (&args[0], &args[1]) {
                    (Ty::List(element), Ty::Int | Ty::Uint | Ty::Dyn) => Ok((**element).clone()),
                    (Ty::Map(value), Ty::String | Ty::Dyn) => {
                        self.note_header(&call.args[0], &call.args[1]);
                        Ok((**value).clone())
                    }
                    (Ty::Dyn, _) => Ok(Ty::Dyn),
                    (Ty::Object(root), Ty::String) => {
                        let field = match &call.args[1].expr {
                            Expr::Literal(LiteralValue::String(s)) => Some(s.inner().to_owned()),
                            _ => None,
                        };
                        match field {
                            Some(field) => self.select(e, &args[0], &field),
                            None => Err(fail(
                                e,
                                format!("index `{}` with a literal field name", root.name()),
                            )),
                        }
                    }
                    (c, k) => Err(fail(e, format!("cannot index {c} with {k}"))),
                }
            }
            (op::IN, None) => {
                arity(2)?;
                match &args[1] {
                    Ty::List(element) if args[0].meets(element) => Ok(Ty::Bool),
                    Ty::Map(_) if args[0].meets(&Ty::String) => Ok(Ty::Bool),
                    Ty::Dyn => Ok(Ty::Bool),
                    Ty::List(element) => Err(fail(
                        e,
                        format!("{} is never in a list of {}", args[0], element.name()),
                    )),
                    other => Err(fail(e, format!("`in` needs a list or a map, not {other}"))),
                }
            }
            ("size", None) | ("size", Some(_)) => {
                let subject = match &target {
                    Some(t) if args.is_empty() => t.clone(),
                    None if args.len() == 1 => args[0].clone(),
                    _ => return Err(fail(e, "`size` takes one value")),
                };
                match subject {
                    Ty::String | Ty::Bytes | Ty::List(_) | Ty::Map(_) | Ty::Dyn => Ok(Ty::Int),
                    t => Err(fail(e, format!("{t} has no size"))),
                }
            }
            ("contains" | "startsWith" | "endsWith" | "matches", Some(t)) => {
                arity(1)?;
                if !matches!(t, Ty::String | Ty::Dyn) || !matches!(args[0], Ty::String | Ty::Dyn) {
                    return Err(fail(
                        e,
                        format!("`{name}` works on strings, not on {t} with {}", args[0]),
                    ));
                }
                Ok(Ty::Bool)
            }
            ("matches", None) => {
                arity(2)?;
                if !args.iter().all(|a| matches!(a, Ty::String | Ty::Dyn)) {
                    return Err(fail(e, "`matches` works on strings"));
                }
                Ok(Ty::Bool)
            }
            (accessor, Some(t)) if TIME_ACCESSORS.contains(&accessor) => {
                let on_duration = matches!(
                    accessor,
                    "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds"
                );
                let fits = match t {
                    Ty::Timestamp | Ty::Dyn => args.len() <= 1,
                    Ty::Duration => on_duration && args.is_empty(),
                    _ => false,
                };
                if !fits || !args.iter().all(|a| matches!(a, Ty::String | Ty::Dyn)) {
                    return Err(fail(
                        e,
                        format!("`{accessor}` works on a timestamp (with an optional time zone), not on {t}"),
                    ));
                }
                Ok(Ty::Int)
            }
            ("timestamp", None) => {
                arity(1)?;
                match (&args[0], &call.args[0].expr) {
                    (Ty::String, Expr::Literal(LiteralValue::String(s))) => {
                        chrono::DateTime::parse_from_rfc3339(s.inner()).map_err(|err| {
                            fail(
                                e,
                                format!("timestamp {:?} is not RFC 3339: {err}", s.inner()),
                            )
                        })?;
                        Ok(Ty::Timestamp)
                    }
                    (Ty::String | Ty::Int | Ty::Timestamp | Ty::Dyn, _) => Ok(Ty::Timestamp),
                    (t, _) => Err(fail(e, format!("`timestamp` takes a string, not {t}"))),
                }
            }
            ("duration", None) => {
                arity(1)?;
                match &args[0] {
                    Ty::String | Ty::Duration | Ty::Dyn => Ok(Ty::Duration),
                    t => Err(fail(e, format!("`duration` takes a string, not {t}"))),
                }
            }
            ("int" | "uint" | "double" | "string" | "bool" | "dyn", None) => {
                arity(1)?;
                Ok(match name {
                    "int" => Ty::Int,
                    "uint" => Ty::Uint,
                    "double" => Ty::Double,
                    "string" => Ty::String,
                    "bool" => Ty::Bool,
                    _ => Ty::Dyn,
                })
            }
            (other, Some(t)) => Err(fail(e, format!("unknown function `{other}` on {t}"))),
            (other, None) => Err(fail(e, format!("unknown function `{other}`"))),
        }
    }

    fn arithmetic(&self, e: &IdedExpr, op: &str, a: &Ty, b: &Ty) -> Checked {
        use cel::common::ast::operators as ops;
        let ty = match (op, a, b) {
            (_, Ty::Dyn, _) | (_, _, Ty::Dyn) => Ty::Dyn,
            (_, x, y) if x.is_numeric() && y.is_numeric() && x == y => x.clone(),
            (_, x, y) if x.is_numeric() && y.is_numeric() => Ty::Dyn,
            (ops::ADD, Ty::String, Ty::String) => Ty::String,
            (ops::ADD, Ty::Bytes, Ty::Bytes) => Ty::Bytes,
            (ops::ADD, Ty::List(x), Ty::List(y)) => {
                if x == y {
                    a.clone()
                } else {
                    Ty::List(Box::new(Ty::Dyn))
                }
            }
            (ops::ADD, Ty::Timestamp, Ty::Duration) | (ops::ADD, Ty::Duration, Ty::Timestamp) => {
                Ty::Timestamp
            }
            (ops::ADD | ops::SUBSTRACT, Ty::Duration, Ty::Duration) => Ty::Duration,
            (ops::SUBSTRACT, Ty::Timestamp, Ty::Timestamp) => Ty::Duration,
            (ops::SUBSTRACT, Ty::Timestamp, Ty::Duration) => Ty::Timestamp,
            _ => {
                let symbol = op.trim_matches('_');
                return Err(fail(e, format!("`{symbol}` does not apply to {a} and {b}")));
            }
        };
        Ok(ty)
    }

    /// Remembers `context.headers["name"]` read with a literal name.
    fn note_header(&mut self, container: &IdedExpr, key: &IdedExpr) {
        let Expr::Select(select) = &container.expr else {
            return;
        };
        let Expr::Ident(root) = &select.operand.expr else {
            return;
        };
        let shadowed = self.scopes.iter().any(|(n, _)| n == root);
        if root != "context" || select.field != "headers" || shadowed {
            return;
        }
        if let Expr::Literal(LiteralValue::String(name)) = &key.expr {
            let name = name.inner().to_owned();
            if !self.headers.contains(&name) {
                self.headers.push(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(source: &str) -> Result<Condition, ConditionError> {
        Condition::compile(&ConditionEnv::new(), source)
    }

    fn message(source: &str) -> String {
        match compile(source) {
            Ok(_) => panic!("{source:?} compiled"),
            Err(e) => e.to_string(),
        }
    }

    fn holds(source: &str, inputs: &Inputs<'_>) -> bool {
        let env = ConditionEnv::new();
        let condition =
            Condition::compile(&env, source).unwrap_or_else(|e| panic!("{source}: {e}"));
        condition.holds(&Scope::new(&env, inputs))
    }

    #[test]
    fn good_conditions_compile() {
        for source in [
            "resource.properties.ownerID == subject.id",
            "subject.claims.department in [\"eng\", \"ops\"]",
            "context.time.getHours(\"UTC\") >= 9 && context.time.getHours(\"UTC\") < 17",
            "context.time < timestamp(\"2030-01-01T00:00:00Z\")",
            "has(resource.properties.ownerID) && resource.properties.ownerID == subject.id",
            "subject.groups.exists(g, g.startsWith(\"team-\"))",
            "context.headers[\"x-tenant\"] == subject.claims.tenant",
            "size(subject.groups) > 0",
            "action.name == \"update\" || resource.type == \"todo\"",
            "subject.claims.level >= 3",
        ] {
            if let Err(e) = compile(source) {
                panic!("{source}: {e}");
            }
        }
    }

    #[test]
    fn bad_conditions_are_refused_with_a_reason() {
        let cases = [
            ("user.id == \"x\"", "unknown attribute `user`"),
            ("subject.name == \"x\"", "unknown attribute `subject.name`"),
            ("context.time > 5", "cannot be compared"),
            ("subject.id == 1", "never equal"),
            ("subject.id + 1 == 2", "does not apply"),
            ("subject.groups", "must be true or false"),
            (
                "resource.id.size() > 1 && frobnicate(1)",
                "unknown function `frobnicate`",
            ),
            ("resource.properties.ownerID ==", "syntax error"),
            ("subject.id in subject.id", "needs a list or a map"),
            ("timestamp(\"yesterday\") < context.time", "not RFC 3339"),
            ("subject.id.getHours() == 1", "works on a timestamp"),
            ("!subject.id", "needs true or false"),
            ("", "empty"),
        ];
        for (source, expected) in cases {
            let got = message(source);
            assert!(got.contains(expected), "{source:?}: {got}");
        }
    }

    #[test]
    fn a_check_error_says_where() {
        let got = message("subject.id == \"a\" && subjct.id == \"b\"");
        assert!(got.contains("column 22"), "{got}");
    }

    #[test]
    fn reads_are_recorded() {
        let condition = compile("subject.claims.x == 1 && context.time > timestamp(0)");
        let reads = condition.map(|c| c.reads()).unwrap_or_default();
        assert!(reads.claims && reads.time);
        let condition = compile("context.headers[\"x-tenant\"] == \"a\"");
        let headers = condition.map(|c| c.headers().to_vec()).unwrap_or_default();
        assert_eq!(headers, ["x-tenant"]);
    }

    #[test]
    fn conditions_read_action_properties() {
        let props: Map<String, Json> =
            serde_json::from_str(r#"{"soft": true}"#).unwrap_or_default();
        let inputs = Inputs {
            subject_id: "alice",
            action: Some("delete"),
            action_properties: Some(&props),
            ..Inputs::default()
        };
        assert!(holds("action.properties.soft == true", &inputs));
        assert!(!holds("action.properties.hard == true", &inputs));
        let none = Inputs {
            action: Some("delete"),
            ..Inputs::default()
        };
        assert!(!holds("action.properties.soft == true", &none));
    }

    #[test]
    fn conditions_evaluate_and_fail_closed() {
        let claims: Map<String, Json> =
            serde_json::from_str(r#"{"department": "eng", "level": 3, "tenant": "t1"}"#)
                .unwrap_or_default();
        let props: Map<String, Json> =
            serde_json::from_str(r#"{"ownerID": "alice", "tenant": "t1"}"#).unwrap_or_default();
        let inputs = Inputs {
            subject_id: "alice",
            groups: vec!["staff"],
            claims: Some(&claims),
            resource: Some("todo:7"),
            resource_properties: Some(&props),
            action: Some("update"),
            now: 1_767_607_200, // 2026-01-05T10:00:00Z
            ..Inputs::default()
        };
        assert!(holds("resource.properties.ownerID == subject.id", &inputs));
        assert!(holds(
            "subject.claims.tenant == resource.properties.tenant",
            &inputs
        ));
        assert!(holds(
            "subject.claims.department in [\"eng\", \"ops\"]",
            &inputs
        ));
        assert!(holds("subject.claims.level >= 3", &inputs));
        assert!(holds(
            "resource.type == \"todo\" && resource.id == \"7\"",
            &inputs
        ));
        assert!(holds("action.name == \"update\"", &inputs));
        assert!(holds("\"staff\" in subject.groups", &inputs));
        assert!(holds(
            "context.time.getHours(\"UTC\") >= 9 && context.time.getHours(\"UTC\") < 17",
            &inputs
        ));
        // Missing attributes, and errors, are false.
        assert!(!holds("resource.properties.missing == subject.id", &inputs));
        assert!(!holds("resource.properties.missing != subject.id", &inputs));
        assert!(!holds(
            "subject.claims.department == 1 || subject.claims.nope",
            &inputs
        ));
        assert!(!holds("context.headers[\"x-tenant\"] == \"t1\"", &inputs));
        assert!(!holds("subject.claims.level / 0 == 1", &inputs));
        assert!(!holds("dyn(subject.claims.department)", &inputs));
    }
}
