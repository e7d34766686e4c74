//! Path templates (`/documents/{id:uint}`, `{rest...}`) and resource
//! templates (`document:{id}`): compiled at load, matched per request.

use super::*;

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Capture(String, CaptureType),
    Rest(String),
}

impl Segment {
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 0,
            Segment::Capture(_, CaptureType::Any) => 2,
            Segment::Capture(_, _) => 1,
            Segment::Rest(_) => 3,
        }
    }
}

/// What one captured segment may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureType {
    /// Any non-empty run of unreserved characters.
    Any,
    /// An unsigned integer in canonical form: `0`, or digits without a
    /// leading zero, at most 20 of them (every `u64`).
    Uint,
    /// A UUID in canonical form: lower-case hex, 8-4-4-4-12.
    Uuid,
    /// An e-mail address: `local@domain`, the local part of unreserved
    /// characters and `+`, the domain lower-case DNS labels. The only
    /// capture that admits `@` and `+`; never `/`, `%` or `\`, so never an
    /// encoded separator, and never a dot-segment (it holds an `@`).
    Email,
}

impl CaptureType {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "uint" => Some(CaptureType::Uint),
            "uuid" => Some(CaptureType::Uuid),
            "email" => Some(CaptureType::Email),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CaptureType::Any => "",
            CaptureType::Uint => "uint",
            CaptureType::Uuid => "uuid",
            CaptureType::Email => "email",
        }
    }

    /// True when every byte of `value` is one this capture may hold:
    /// unreserved characters, and for an e-mail `@` and `+` too.
    pub(crate) fn admits_chars(self, value: &str) -> bool {
        match self {
            CaptureType::Email => value
                .bytes()
                .all(|b| is_unreserved(b) || b == b'@' || b == b'+'),
            _ => value.bytes().all(is_unreserved),
        }
    }

    /// True when `value` (already known to be unreserved) is canonical.
    pub fn accepts(self, value: &str) -> bool {
        let bytes = value.as_bytes();
        match self {
            CaptureType::Any => !value.is_empty(),
            CaptureType::Uint => {
                !bytes.is_empty()
                    && bytes.len() <= 20
                    && bytes.iter().all(u8::is_ascii_digit)
                    && (bytes[0] != b'0' || bytes.len() == 1)
                    && value.parse::<u64>().is_ok()
            }
            CaptureType::Uuid => {
                bytes.len() == 36
                    && bytes.iter().enumerate().all(|(i, &b)| match i {
                        8 | 13 | 18 | 23 => b == b'-',
                        _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
                    })
            }
            CaptureType::Email => is_email(value),
        }
    }
}

/// Longest e-mail address a capture takes (RFC 5321's path limit).
const EMAIL_MAX: usize = 254;

/// `local@domain` in the one spelling an `{name:email}` capture takes: a
/// local part of at most 64 unreserved characters or `+`, neither starting
/// nor ending with a dot nor holding two in a row; a domain of two or more
/// lower-case DNS labels. Quoted local parts, IP literals and upper-case
/// domains are refused: the resource has one key.
fn is_email(value: &str) -> bool {
    if value.len() > EMAIL_MAX {
        return false;
    }
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.bytes().all(|b| is_unreserved(b) || b == b'+');
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    local_ok && domain.contains('.') && domain.split('.').all(label_ok)
}

/// A compiled path template such as `/documents/{id}/comments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
}

/// Why a template or resource template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("path template must start with '/'")]
    NoLeadingSlash,
    #[error("path template has an empty segment")]
    EmptySegment,
    #[error("segment {0:?} may contain only unreserved characters (A-Z a-z 0-9 - . _ ~)")]
    BadLiteral(String),
    #[error("segment {0:?} is a dot-segment or ends in a dot")]
    DotLiteral(String),
    #[error("capture name {0:?} must be a non-empty identifier")]
    BadCaptureName(String),
    #[error("capture type {0:?} is unknown (use uint, uuid or email, or no type)")]
    BadCaptureType(String),
    #[error("a rest capture {{name...}} takes no type")]
    TypedRest,
    #[error("capture {0:?} appears twice")]
    DuplicateCapture(String),
    #[error("a rest capture {{name...}} must be the last segment")]
    RestNotLast,
    #[error("resource template refers to {0:?}, which the path does not capture")]
    UnknownCapture(String),
    #[error("resource template has an unclosed or stray brace")]
    BadBrace,
}

impl PathTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let rest = template
            .strip_prefix('/')
            .ok_or(TemplateError::NoLeadingSlash)?;
        let mut segments: Vec<Segment> = Vec::new();
        if rest.is_empty() {
            return Ok(Self { segments });
        }
        for raw in rest.split('/') {
            if matches!(segments.last(), Some(Segment::Rest(_))) {
                return Err(TemplateError::RestNotLast);
            }
            let segment =
                if let Some(inner) = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                    let (inner, is_rest) = match inner.strip_suffix("...") {
                        Some(name) => (name, true),
                        None => (inner, false),
                    };
                    let (name, kind) = match inner.split_once(':') {
                        Some((name, kind)) => (
                            name,
                            CaptureType::parse(kind)
                                .ok_or_else(|| TemplateError::BadCaptureType(kind.to_owned()))?,
                        ),
                        None => (inner, CaptureType::Any),
                    };
                    if is_rest && kind != CaptureType::Any {
                        return Err(TemplateError::TypedRest);
                    }
                    if !is_identifier(name) {
                        return Err(TemplateError::BadCaptureName(name.to_owned()));
                    }
                    let taken = segments.iter().any(
                        |s| matches!(s, Segment::Capture(n, _) | Segment::Rest(n) if n == name),
                    );
                    if taken {
                        return Err(TemplateError::DuplicateCapture(name.to_owned()));
                    }
                    if is_rest {
                        Segment::Rest(name.to_owned())
                    } else {
                        Segment::Capture(name.to_owned(), kind)
                    }
                } else {
                    if raw.is_empty() {
                        return Err(TemplateError::EmptySegment);
                    }
                    if !raw.bytes().all(is_unreserved) {
                        return Err(TemplateError::BadLiteral(raw.to_owned()));
                    }
                    if raw.ends_with('.') {
                        return Err(TemplateError::DotLiteral(raw.to_owned()));
                    }
                    Segment::Literal(raw.to_owned())
                };
            segments.push(segment);
        }
        Ok(Self { segments })
    }

    /// Captured values in template order, or `None` when `path` does not match.
    pub fn matches<'p>(&self, path: &'p NormalPath) -> Option<Vec<&'p str>> {
        let mut captures = Vec::new();
        let mut parts = path.segments();
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Literal(literal) => {
                    if parts.next()? != literal {
                        return None;
                    }
                }
                Segment::Capture(_, kind) => {
                    let value = parts.next()?;
                    if !kind.admits_chars(value) || !kind.accepts(value) {
                        return None;
                    }
                    captures.push(value);
                }
                Segment::Rest(_) => {
                    let tail = path.tail(i)?;
                    if !parts.all(|p| p.bytes().all(is_unreserved)) {
                        return None;
                    }
                    captures.push(tail);
                    return Some(captures);
                }
            }
        }
        parts.next().is_none().then_some(captures)
    }

    /// How far `path` gets through the template: the number of leading
    /// segments that match, and why the next one does not (`None` when the
    /// whole path matches). For explanations only; [`Self::matches`] is
    /// what decides.
    pub(crate) fn mismatch(&self, path: &NormalPath) -> (usize, Option<Mismatch>) {
        let parts: Vec<&str> = path.segments().collect();
        for (i, segment) in self.segments.iter().enumerate() {
            let Some(&value) = parts.get(i) else {
                let rest = PathTemplate {
                    segments: self.segments[i..].to_vec(),
                };
                return (
                    i,
                    Some(Mismatch::TooShort {
                        missing: rest.to_string(),
                    }),
                );
            };
            match segment {
                Segment::Literal(literal) if literal != value => {
                    return (
                        i,
                        Some(Mismatch::Literal {
                            segment: i + 1,
                            value: value.to_owned(),
                            expected: literal.clone(),
                        }),
                    );
                }
                Segment::Literal(_) => {}
                Segment::Capture(name, kind) => {
                    let chars = reserved_chars(value, *kind);
                    if !chars.is_empty() {
                        return (
                            i,
                            Some(Mismatch::Reserved {
                                segment: i + 1,
                                value: value.to_owned(),
                                chars,
                            }),
                        );
                    }
                    if !kind.accepts(value) {
                        let capture = Segment::Capture(name.clone(), *kind);
                        return (
                            i,
                            Some(Mismatch::Type {
                                segment: i + 1,
                                value: value.to_owned(),
                                capture: PathTemplate {
                                    segments: vec![capture],
                                }
                                .to_string()
                                .trim_start_matches('/')
                                .to_owned(),
                            }),
                        );
                    }
                }
                Segment::Rest(_) => {
                    for (j, part) in parts.iter().enumerate().skip(i) {
                        let value = *part;
                        let chars = reserved_chars(value, CaptureType::Any);
                        if !chars.is_empty() {
                            return (
                                j,
                                Some(Mismatch::Reserved {
                                    segment: j + 1,
                                    value: value.to_owned(),
                                    chars,
                                }),
                            );
                        }
                    }
                    return (parts.len(), None);
                }
            }
        }
        if parts.len() > self.segments.len() {
            let extra = self.segments.len();
            return (
                extra,
                Some(Mismatch::TooLong {
                    segment: extra + 1,
                    value: parts[extra].to_owned(),
                }),
            );
        }
        (parts.len(), None)
    }

    /// The template with its literals in lower case, for an application
    /// whose upstream ignores case (its paths are lower-cased before matching).
    pub(crate) fn with_lowercase_literals(mut self) -> Self {
        for segment in &mut self.segments {
            if let Segment::Literal(literal) = segment {
                literal.make_ascii_lowercase();
            }
        }
        self
    }

    /// The segments, in order (for the lint's analysis of what a template
    /// matches).
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Names of the captures, in the order [`Self::matches`] returns values.
    pub(crate) fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Capture(n, _) | Segment::Rest(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Most specific first; equal when neither is more specific.
    pub(crate) fn specificity(&self, other: &Self) -> Ordering {
        let ours = self.segments.iter().map(Segment::rank);
        let theirs = other.segments.iter().map(Segment::rank);
        ours.cmp(theirs)
            .then(other.segments.len().cmp(&self.segments.len()))
    }

    /// The template with capture names erased: two routes with the same
    /// shape match exactly the same paths.
    pub fn shape(&self) -> String {
        let mut out = String::new();
        for s in &self.segments {
            out.push('/');
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Capture(_, CaptureType::Any) => out.push_str("{}"),
                Segment::Capture(_, kind) => {
                    out.push_str("{:");
                    out.push_str(kind.name());
                    out.push('}');
                }
                Segment::Rest(_) => out.push_str("{...}"),
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for s in &self.segments {
            match s {
                Segment::Literal(l) => write!(f, "/{l}")?,
                Segment::Capture(n, CaptureType::Any) => write!(f, "/{{{n}}}")?,
                Segment::Capture(n, kind) => write!(f, "/{{{n}:{}}}", kind.name())?,
                Segment::Rest(n) => write!(f, "/{{{n}...}}")?,
            }
        }
        Ok(())
    }
}

/// Each character of `value` that a capture of type `kind` does not
/// admit, once, in order.
fn reserved_chars(value: &str, kind: CaptureType) -> String {
    let mut seen = String::new();
    for c in value.chars() {
        let admitted = c.is_ascii() && kind.admits_chars(c.encode_utf8(&mut [0; 4]));
        if !admitted && !seen.contains(c) {
            seen.push(c);
        }
    }
    seen
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A resource name with placeholders, such as `document:{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceTemplate {
    parts: Vec<ResourcePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ResourcePart {
    Text(String),
    /// Index into the path template's captures.
    Capture(usize),
}

impl ResourceTemplate {
    /// Compiles `template` against the captures of `path`.
    pub fn parse(template: &str, path: &PathTemplate) -> Result<Self, TemplateError> {
        let names: Vec<&str> = path.capture_names().collect();
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(TemplateError::BadBrace);
            }
            if open > 0 {
                parts.push(ResourcePart::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or(TemplateError::BadBrace)?;
            let name = &after[..close];
            let index = names
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| TemplateError::UnknownCapture(name.to_owned()))?;
            parts.push(ResourcePart::Capture(index));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(ResourcePart::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// For a template of a literal prefix and one capture
    /// (`document:{id}`): the prefix, and the capture's index among the
    /// path's captures.
    pub(crate) fn prefix_and_capture(&self) -> Option<(&str, usize)> {
        match self.parts.as_slice() {
            [ResourcePart::Text(prefix), ResourcePart::Capture(i)] => Some((prefix, *i)),
            _ => None,
        }
    }

    /// The resource type the template always produces: the text before the
    /// first `:` of a leading literal; `None` when a capture comes first.
    pub(crate) fn resource_type(&self) -> Option<&str> {
        match self.parts.first() {
            Some(ResourcePart::Text(text)) => text.split_once(':').map(|(t, _)| t).or(
                // A literal resource without a colon is its own type.
                (self.parts.len() == 1).then_some(text.as_str()),
            ),
            _ => None,
        }
    }

    pub fn render(&self, captures: &[&str]) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                ResourcePart::Text(t) => out.push_str(t),
                ResourcePart::Capture(i) => out.push_str(captures.get(*i).copied().unwrap_or("")),
            }
        }
        out
    }
}
