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
//! make the condition false.
//!
//! Most conditions never reach the `cel` interpreter: at load, the checked
//! expression is also compiled into a small tree ([`fast`]) that reads the
//! decision's attributes where the engine holds them, for the shapes most
//! rules take (`resource.properties.owner == subject.id`). Where it cannot
//! be certain to answer as `cel` would, `cel` answers. Its values are built
//! once per decision, and only when `cel` evaluates a condition
//! ([`Scope`]), so a policy whose conditions all take the fast path never
//! builds them.
//!
//! Compiling is here; [`check`] is the type checker, [`fast`] the fast
//! path, [`scope`] the values a decision's conditions see.

mod check;
mod fast;
mod scope;
#[cfg(test)]
mod tests;

use check::{Checker, Ty};
pub use scope::{Inputs, Scope};

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use cel::common::value::Val;
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Env, Program, Value};
use serde_json::{Map, Value as Json};

/// Longest condition accepted, in bytes: conditions are rules, not programs.
pub(crate) const MAX_CONDITION_LEN: usize = 4096;

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
    pub(crate) fn union(self, other: Reads) -> Reads {
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
    /// The fast path, when the whole expression compiles to it.
    fast: Option<fast::Fast>,
    reads: Reads,
    /// Header names the condition reads with a literal key
    /// (`context.headers["x-tenant"]`), for the loader to check that some
    /// route names them.
    headers: Vec<String>,
    /// The claims the condition reads, when each read names one; `None`
    /// when it may read any (the whole map, a computed key).
    claim_names: Option<Vec<String>>,
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
            claim_names: Vec::new(),
            claims_reads: 0,
            claims_named: 0,
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
        let fast = fast::compile(program.expression());
        Ok(Self {
            source: source.to_owned(),
            fast,
            program,
            reads: checker.reads,
            claim_names: (checker.claims_named >= checker.claims_reads)
                .then_some(checker.claim_names),
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

    /// The claims the condition reads, when every read names one (empty
    /// when it reads none); `None` when it may read any.
    pub fn claim_names(&self) -> Option<&[String]> {
        self.claim_names.as_deref()
    }

    /// Header names read with a literal key.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// True only when the condition evaluates to `true` in `scope`. A
    /// missing attribute, an error or a panic in the interpreter is false.
    pub fn holds(&self, scope: &Scope<'_>) -> bool {
        if let Some(fast) = &self.fast {
            match fast.eval(&scope.inputs) {
                Ok(value) => return matches!(value, fast::V::Bool(true)),
                Err(fast::Stop::Error) => return false,
                Err(fast::Stop::Unsure) => {}
            }
        }
        self.holds_in_cel(scope)
    }

    /// [`Condition::holds`] by the `cel` interpreter alone.
    fn holds_in_cel(&self, scope: &Scope<'_>) -> bool {
        let Some(context) = scope.context() else {
            return false;
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.program.execute(context)));
        matches!(result, Ok(Ok(Value::Bool(true))))
    }
}

impl Condition {
    /// Whether the fast path answers for `scope`, without `cel`.
    #[cfg(test)]
    fn fast_answers(&self, scope: &Scope<'_>) -> bool {
        self.fast
            .as_ref()
            .is_some_and(|fast| !matches!(fast.eval(&scope.inputs), Err(fast::Stop::Unsure)))
    }
}

/// The column (1-based, in characters) of byte `offset` in `source`.
fn column_of(source: &str, offset: usize) -> usize {
    let before = source.get(..offset.min(source.len())).unwrap_or(source);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    before[line_start..].chars().count() + 1
}
