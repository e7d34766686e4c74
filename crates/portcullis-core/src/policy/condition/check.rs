//! The type checker the `cel` crate lacks: run at load over the parsed
//! expression, it refuses unknown roots, fields and functions and operands
//! of types that can never meet, and records what a condition reads.

use super::*;

/// A static type, as far as the checker knows it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Ty {
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
pub(super) enum Root {
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

pub(super) struct CheckError {
    pub(super) message: String,
    pub(super) id: u64,
}

pub(super) struct Checker {
    /// Variables bound by comprehensions (`exists(x, ...)`), innermost last.
    pub(super) scopes: Vec<(String, Ty)>,
    pub(super) reads: Reads,
    pub(super) headers: Vec<String>,
    /// Claims read by a literal name (`subject.claims.email`,
    /// `subject.claims["email"]`).
    pub(super) claim_names: Vec<String>,
    /// Times `subject.claims` is read at all, and by a literal name: when
    /// they differ, some read names no claim (the whole map, a computed
    /// key) and every claim may be read.
    pub(super) claims_reads: usize,
    pub(super) claims_named: usize,
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
    pub(super) fn infer(&mut self, e: &IdedExpr) -> Checked {
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
                if self.is_claims(&select.operand) {
                    self.note_claim(&select.field);
                }
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
                        self.claims_reads += 1;
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
                        if self.is_claims(&call.args[0]) {
                            if let Expr::Literal(LiteralValue::String(name)) = &call.args[1].expr {
                                self.note_claim(name.inner());
                            }
                        }
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

    /// `subject.claims`, with `subject` not a comprehension's variable.
    fn is_claims(&self, e: &IdedExpr) -> bool {
        let Expr::Select(select) = &e.expr else {
            return false;
        };
        let Expr::Ident(root) = &select.operand.expr else {
            return false;
        };
        root == "subject"
            && select.field == "claims"
            && !select.test
            && !self.scopes.iter().any(|(n, _)| n == root)
    }

    /// Remembers a claim read by a literal name.
    fn note_claim(&mut self, name: &str) {
        self.claims_named += 1;
        if !self.claim_names.iter().any(|n| n == name) {
            self.claim_names.push(name.to_owned());
        }
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
