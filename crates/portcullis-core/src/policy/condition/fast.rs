//! The fast path of conditions: the checked CEL expression compiled at load
//! into a small tree over the decision's [`Inputs`] as they are, for the
//! shapes most rules take (attributes, literals, `==`, `!=`, `in`, `&&`,
//! `||`, `!`, `has`, integer comparisons). Nothing is copied into the `cel`
//! crate's values: an attribute is read where the engine holds it.
//!
//! Its answers are the `cel` crate's: where it is not certain to agree (a
//! comparison of values of different types, a list or map compared whole,
//! a function, a comprehension, `context.time`), it says so ([`Stop::Unsure`])
//! and the condition is evaluated by `cel` instead. A condition it cannot
//! compile at all is always evaluated by `cel`. The error semantics of
//! `&&` and `||` (an error on one side absorbed by a decisive other side)
//! are `cel`'s; `tests` compares both on a corpus.

use super::*;
use cel::common::ast::operators as op;
use std::borrow::Cow;

/// A compiled condition, or part of one.
#[derive(Debug)]
pub(super) enum Fast {
    Bool(bool),
    Str(Box<str>),
    Int(i64),
    UInt(u64),
    Null,
    /// A list literal of literals.
    List(Vec<Fast>),
    Attr(Attr),
    /// `x.f` or `x["f"]` on a map.
    Field(Box<Fast>, Box<str>),
    /// `has(x.f)` on a map.
    Has(Box<Fast>, Box<str>),
    And(Box<Fast>, Box<Fast>),
    Or(Box<Fast>, Box<Fast>),
    Not(Box<Fast>),
    Eq(Box<Fast>, Box<Fast>),
    Ne(Box<Fast>, Box<Fast>),
    In(Box<Fast>, Box<Fast>),
    /// `<`, `<=`, `>`, `>=`: holds when the ordering of left to right is
    /// one of those given.
    Cmp(Box<Fast>, Box<Fast>, &'static [std::cmp::Ordering]),
}

/// An attribute of the decision (`context.time` is left to `cel`).
#[derive(Debug, Clone, Copy)]
pub(super) enum Attr {
    SubjectId,
    SubjectGroups,
    SubjectClaims,
    SubjectProperties,
    ResourceType,
    ResourceId,
    ResourceProperties,
    ActionName,
    ActionProperties,
    ContextHeaders,
    ContextExtensions,
    ContextProperties,
}

impl Attr {
    fn of(root: &str, field: &str) -> Option<Attr> {
        Some(match (root, field) {
            ("subject", "id") => Attr::SubjectId,
            ("subject", "groups") => Attr::SubjectGroups,
            ("subject", "claims") => Attr::SubjectClaims,
            ("subject", "properties") => Attr::SubjectProperties,
            ("resource", "type") => Attr::ResourceType,
            ("resource", "id") => Attr::ResourceId,
            ("resource", "properties") => Attr::ResourceProperties,
            ("action", "name") => Attr::ActionName,
            ("action", "properties") => Attr::ActionProperties,
            ("context", "headers") => Attr::ContextHeaders,
            ("context", "extensions") => Attr::ContextExtensions,
            ("context", "properties") => Attr::ContextProperties,
            _ => return None,
        })
    }
}

/// Why evaluation stopped short of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// `cel` errs here too: the condition does not hold (unless an `&&`
    /// or `||` absorbs it, as in `cel`).
    Error,
    /// Not certain to agree with `cel`: ask it.
    Unsure,
}

/// A value as the fast path sees it, borrowed from the inputs or the tree.
#[derive(Debug, Clone, Copy)]
pub(super) enum V<'v> {
    Bool(bool),
    Null,
    Str(&'v str),
    Int(i64),
    UInt(u64),
    /// A double: only `cel` compares them (NaN, -0.0, across types).
    Double,
    Groups(&'v [&'v str]),
    /// A JSON array.
    Array(&'v [Json]),
    /// A JSON object (none given: empty).
    Object(Option<&'v Map<String, Json>>),
    /// Headers or extensions (none given: empty).
    Strings(Option<&'v BTreeMap<Cow<'v, str>, Cow<'v, str>>>),
    /// `resource.properties`: the route's captures over the caller's.
    ResourceProperties,
    /// A list literal.
    List(&'v [Fast]),
}

type Eval<'v> = Result<V<'v>, Stop>;

/// The JSON value as `cel` sees it (see `scope::from_json`).
fn json(value: &Json) -> V<'_> {
    match value {
        Json::Null => V::Null,
        Json::Bool(b) => V::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => V::Int(i),
            (None, Some(u), _) => V::UInt(u),
            (None, None, Some(_)) => V::Double,
            (None, None, None) => V::Null,
        },
        Json::String(s) => V::Str(s),
        Json::Array(items) => V::Array(items),
        Json::Object(fields) => V::Object(Some(fields)),
    }
}

/// Compiles the checked expression `e`; `None` for what only `cel` runs.
pub(super) fn compile(e: &IdedExpr) -> Option<Fast> {
    let boxed = |e: &IdedExpr| compile(e).map(Box::new);
    match &e.expr {
        Expr::Literal(literal) => literal_of(literal),
        Expr::Select(select) => {
            let field: Box<str> = select.field.as_str().into();
            if let Expr::Ident(root) = &select.operand.expr {
                // `has(subject.id)` asks about a root: left to cel.
                return (!select.test)
                    .then(|| Attr::of(root, &select.field))
                    .flatten()
                    .map(Fast::Attr);
            }
            let operand = boxed(&select.operand)?;
            Some(if select.test {
                Fast::Has(operand, field)
            } else {
                Fast::Field(operand, field)
            })
        }
        Expr::List(list) if list.optional_indices.is_empty() => {
            let items = list
                .elements
                .iter()
                .map(|item| match &item.expr {
                    Expr::Literal(literal) => literal_of(literal),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Fast::List(items))
        }
        Expr::Call(call) if call.target.is_none() => {
            use std::cmp::Ordering::{Equal, Greater, Less};
            let args = &call.args;
            let two = |make: fn(Box<Fast>, Box<Fast>) -> Fast| -> Option<Fast> {
                match args.as_slice() {
                    [a, b] => Some(make(boxed(a)?, boxed(b)?)),
                    _ => None,
                }
            };
            let cmp = |holds: &'static [std::cmp::Ordering]| -> Option<Fast> {
                match args.as_slice() {
                    [a, b] => Some(Fast::Cmp(boxed(a)?, boxed(b)?, holds)),
                    _ => None,
                }
            };
            match call.func_name.as_str() {
                op::LOGICAL_AND => two(Fast::And),
                op::LOGICAL_OR => two(Fast::Or),
                op::EQUALS => two(Fast::Eq),
                op::NOT_EQUALS => two(Fast::Ne),
                op::IN => two(Fast::In),
                op::LESS => cmp(&[Less]),
                op::LESS_EQUALS => cmp(&[Less, Equal]),
                op::GREATER => cmp(&[Greater]),
                op::GREATER_EQUALS => cmp(&[Greater, Equal]),
                op::LOGICAL_NOT => match args.as_slice() {
                    [a] => Some(Fast::Not(boxed(a)?)),
                    _ => None,
                },
                op::INDEX => match args.as_slice() {
                    [container, key] => {
                        let Expr::Literal(LiteralValue::String(key)) = &key.expr else {
                            return None;
                        };
                        let key = key.inner();
                        if let Expr::Ident(root) = &container.expr {
                            return Attr::of(root, key).map(Fast::Attr);
                        }
                        Some(Fast::Field(boxed(container)?, key.into()))
                    }
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}

fn literal_of(literal: &LiteralValue) -> Option<Fast> {
    Some(match literal {
        LiteralValue::Boolean(b) => Fast::Bool(*b.inner()),
        LiteralValue::String(s) => Fast::Str(s.inner().into()),
        LiteralValue::Int(i) => Fast::Int(*i.inner()),
        LiteralValue::UInt(u) => Fast::UInt(*u.inner()),
        LiteralValue::Null => Fast::Null,
        // Doubles (NaN, -0.0) and bytes: left to cel.
        LiteralValue::Double(_) | LiteralValue::Bytes(_) => return None,
    })
}

impl Fast {
    /// The value of this expression for `inputs`.
    pub(super) fn eval<'v>(&'v self, inputs: &'v Inputs<'v>) -> Eval<'v> {
        match self {
            Fast::Bool(b) => Ok(V::Bool(*b)),
            Fast::Str(s) => Ok(V::Str(s)),
            Fast::Int(i) => Ok(V::Int(*i)),
            Fast::UInt(u) => Ok(V::UInt(*u)),
            Fast::Null => Ok(V::Null),
            Fast::List(items) => Ok(V::List(items)),
            Fast::Attr(attr) => attribute(*attr, inputs),
            Fast::Field(operand, field) => {
                field_of(operand.eval(inputs)?, field, inputs)?.ok_or(Stop::Error)
            }
            Fast::Has(operand, field) => Ok(V::Bool(
                field_of(operand.eval(inputs)?, field, inputs)?.is_some(),
            )),
            Fast::And(a, b) => {
                // cel: false && x is false; an error (or a non-bool) on the
                // left is absorbed by a false on the right; an error on the
                // right is the answer.
                let left = boolean(a.eval(inputs))?;
                if left == Some(false) {
                    return Ok(V::Bool(false));
                }
                match (left, b.eval(inputs)?) {
                    (Some(true), V::Bool(right)) => Ok(V::Bool(right)),
                    (None, V::Bool(false)) => Ok(V::Bool(false)),
                    _ => Err(Stop::Error),
                }
            }
            Fast::Or(a, b) => {
                let left = boolean(a.eval(inputs))?;
                if left == Some(true) {
                    return Ok(V::Bool(true));
                }
                match (left, b.eval(inputs)?) {
                    (Some(false), V::Bool(right)) => Ok(V::Bool(right)),
                    (None, V::Bool(true)) => Ok(V::Bool(true)),
                    _ => Err(Stop::Error),
                }
            }
            Fast::Not(a) => match a.eval(inputs)? {
                V::Bool(b) => Ok(V::Bool(!b)),
                _ => Err(Stop::Error),
            },
            Fast::Eq(a, b) => {
                let left = a.eval(inputs)?;
                Ok(V::Bool(equal(left, b.eval(inputs)?)?))
            }
            Fast::Ne(a, b) => {
                let left = a.eval(inputs)?;
                Ok(V::Bool(!equal(left, b.eval(inputs)?)?))
            }
            Fast::In(a, b) => {
                let left = a.eval(inputs)?;
                Ok(V::Bool(contains(b.eval(inputs)?, left, inputs)?))
            }
            Fast::Cmp(a, b, holds) => {
                let left = a.eval(inputs)?;
                let ordering = match (left, b.eval(inputs)?) {
                    (V::Int(x), V::Int(y)) => x.cmp(&y),
                    (V::UInt(x), V::UInt(y)) => x.cmp(&y),
                    _ => return Err(Stop::Unsure),
                };
                Ok(V::Bool(holds.contains(&ordering)))
            }
        }
    }
}

/// An operand of `&&` or `||` as cel weighs it: `Some` bool, or `None` for
/// an error or a value that is not a bool. Unsure stays unsure.
fn boolean(value: Eval<'_>) -> Result<Option<bool>, Stop> {
    match value {
        Ok(V::Bool(b)) => Ok(Some(b)),
        Ok(_) | Err(Stop::Error) => Ok(None),
        Err(Stop::Unsure) => Err(Stop::Unsure),
    }
}

/// The attribute, as `scope::build_context` would have built it: what is
/// absent there is an error here.
fn attribute<'v>(attr: Attr, i: &'v Inputs<'v>) -> Eval<'v> {
    let (ty, id) = match i.resource {
        Some(rendered) => match rendered.split_once(':') {
            Some((ty, id)) => (Some(ty), (!id.is_empty()).then_some(id)),
            None => (Some(rendered), None),
        },
        None => (None, None),
    };
    let present = |value: Option<&'v str>| value.map(V::Str).ok_or(Stop::Error);
    match attr {
        Attr::SubjectId => present((!i.subject_id.is_empty()).then_some(i.subject_id)),
        Attr::SubjectGroups => Ok(V::Groups(&i.groups)),
        Attr::SubjectClaims => Ok(V::Object(i.claims)),
        Attr::SubjectProperties => Ok(V::Object(i.subject_properties)),
        Attr::ResourceType => present(ty),
        Attr::ResourceId => present(id),
        Attr::ResourceProperties => Ok(V::ResourceProperties),
        Attr::ActionName => present(i.action),
        Attr::ActionProperties => Ok(V::Object(i.action_properties)),
        Attr::ContextHeaders => Ok(V::Strings(i.headers)),
        Attr::ContextExtensions => Ok(V::Strings(i.extensions)),
        Attr::ContextProperties => Ok(V::Object(i.context_properties)),
    }
}

/// `field` of a map: `Ok(None)` when it has none; unsure on anything but
/// a map.
fn field_of<'v>(container: V<'v>, field: &str, i: &'v Inputs<'v>) -> Result<Option<V<'v>>, Stop> {
    Ok(match container {
        V::Object(map) => map.and_then(|m| m.get(field)).map(json),
        V::Strings(map) => map.and_then(|m| m.get(field)).map(|s| V::Str(s)),
        V::ResourceProperties => match i.captures.iter().rev().find(|(name, _)| *name == field) {
            // A capture overrides a property of the same name.
            Some((_, value)) => Some(V::Str(value)),
            None => i.resource_properties.and_then(|m| m.get(field)).map(json),
        },
        _ => return Err(Stop::Unsure),
    })
}

/// `a == b` where both are of one scalar type; unsure otherwise (cel's
/// rules across numeric types, null and containers are left to it).
fn equal(a: V<'_>, b: V<'_>) -> Result<bool, Stop> {
    match (a, b) {
        (V::Str(x), V::Str(y)) => Ok(x == y),
        (V::Bool(x), V::Bool(y)) => Ok(x == y),
        (V::Int(x), V::Int(y)) => Ok(x == y),
        (V::UInt(x), V::UInt(y)) => Ok(x == y),
        (V::Null, V::Null) => Ok(true),
        _ => Err(Stop::Unsure),
    }
}

/// `needle in container` for a string needle: membership in a list of
/// strings, or a key of a map; unsure otherwise.
fn contains<'v>(container: V<'v>, needle: V<'v>, i: &'v Inputs<'v>) -> Result<bool, Stop> {
    let V::Str(needle) = needle else {
        return Err(Stop::Unsure);
    };
    match container {
        V::Groups(groups) => Ok(groups.contains(&needle)),
        V::List(items) => {
            let mut found = false;
            for item in items {
                match item {
                    Fast::Str(s) => found |= &**s == needle,
                    _ => return Err(Stop::Unsure),
                }
            }
            Ok(found)
        }
        V::Array(items) => {
            let mut found = false;
            for item in items {
                match item {
                    Json::String(s) => found |= s == needle,
                    _ => return Err(Stop::Unsure),
                }
            }
            Ok(found)
        }
        V::Object(_) | V::Strings(_) | V::ResourceProperties => {
            Ok(field_of(container, needle, i)?.is_some())
        }
        _ => Err(Stop::Unsure),
    }
}
