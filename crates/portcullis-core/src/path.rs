//! The one place where a request path becomes something routes can match.
//!
//! Envoy normalizes paths when it is configured to, but Portcullis must stay
//! safe when it is not, so this module assumes nothing about what arrives.
//! The rules, in order:
//!
//! 1. The query (`?…`) and fragment (`#…`) are cut off; routes match paths only.
//! 2. The path must be origin-form: it starts with `/`, is at most
//!    [`MAX_PATH_LEN`] bytes and has at most [`MAX_SEGMENTS`] segments.
//! 3. Raw bytes outside printable ASCII, and the backslash, are rejected.
//! 4. Percent-escapes are checked: a malformed one is rejected; one that
//!    encodes an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded, so
//!    `/%64ocuments` and `/documents` are the same path; `%2F` and `%5C`
//!    (encoded slashes), `%00` and other encoded control characters are
//!    rejected; any other escape is kept, with its hex digits upper-cased.
//! 5. Dot-segments are rejected, not resolved: a segment that is `.` or `..`,
//!    or that ends in a dot (`2.`, which some servers read as `2`), after
//!    decoding. Resolving them would authorize one path while the upstream
//!    might serve another.
//! 6. Empty segments (`//`, a trailing `/`) are rejected for the same reason;
//!    only the root path `/` has none.
//!
//! What comes out is a [`NormalPath`]: segments an upstream that decodes
//! unreserved escapes will read exactly as Portcullis read them.

use std::fmt;

/// Longest path accepted, in bytes, before the query is cut off.
pub(crate) const MAX_PATH_LEN: usize = 4096;
/// Most segments a path may have.
pub(crate) const MAX_SEGMENTS: usize = 64;

/// A path that passed every rule above, held as its segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    text: String,
    /// Byte ranges of each segment within `text` (which starts with `/`).
    segments: Vec<(usize, usize)>,
}

impl NormalPath {
    /// The normalized path, starting with `/`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The segments between slashes; empty for the root path.
    pub fn segments(&self) -> impl ExactSizeIterator<Item = &str> + Clone + '_ {
        self.segments.iter().map(|&(a, b)| &self.text[a..b])
    }

    /// The path from the start of segment `index` to its end, without the
    /// leading slash: what a rest capture holds.
    pub fn tail(&self, index: usize) -> Option<&str> {
        let &(start, _) = self.segments.get(index)?;
        Some(&self.text[start..])
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// True for the root path `/`.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The same path in ASCII lower case (segment bounds do not move).
    pub fn to_ascii_lowercase(&self) -> Self {
        Self {
            text: self.text.to_ascii_lowercase(),
            segments: self.segments.clone(),
        }
    }
}

impl fmt::Display for NormalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a path was refused. Each is a deny with HTTP 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path does not start with '/'")]
    NotOriginForm,
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("path has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    #[error("path contains a control, non-ASCII or space byte")]
    ForbiddenByte,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains a malformed percent-escape")]
    BadEscape,
    #[error("path contains an encoded slash or backslash")]
    EncodedSlash,
    #[error("path contains an encoded control character")]
    EncodedControl,
    #[error("path contains a dot-segment or a segment ending in a dot")]
    DotSegment,
    #[error("path contains an empty segment")]
    EmptySegment,
}

/// Normalizes a raw `:path` (query and fragment included) by the rules in
/// the module documentation.
pub fn normalize(raw: &str) -> Result<NormalPath, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }

    let mut text = String::with_capacity(path.len());
    let mut segments = Vec::new();
    if path == "/" {
        text.push('/');
        return Ok(NormalPath { text, segments });
    }

    for raw_segment in path[1..].split('/') {
        if segments.len() == MAX_SEGMENTS {
            return Err(PathError::TooManySegments);
        }
        text.push('/');
        let start = text.len();
        decode_segment(raw_segment, &mut text)?;
        let segment = &text[start..];
        if segment.is_empty() {
            return Err(PathError::EmptySegment);
        }
        if segment.ends_with('.') {
            return Err(PathError::DotSegment);
        }
        segments.push((start, text.len()));
    }
    Ok(NormalPath { text, segments })
}

/// Appends one segment to `out`, decoding unreserved escapes.
fn decode_segment(segment: &str, out: &mut String) -> Result<(), PathError> {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadEscape);
                };
                let decoded = hi << 4 | lo;
                match decoded {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    0x00..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                    d if is_unreserved(d) => out.push(char::from(d)),
                    d => {
                        out.push('%');
                        out.push(char::from(HEX_UPPER[usize::from(d >> 4)]));
                        out.push(char::from(HEX_UPPER[usize::from(d & 0xf)]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0x21..=0x7e => {
                out.push(char::from(b));
                i += 1;
            }
            _ => return Err(PathError::ForbiddenByte),
        }
    }
    Ok(())
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 unreserved characters: the only ones a route literal or a
/// captured value may contain.
pub fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        match normalize(raw) {
            Ok(p) => p.to_string(),
            Err(e) => panic!("{raw:?} was refused: {e}"),
        }
    }

    #[test]
    fn plain_paths_pass_unchanged() {
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/documents"), "/documents");
        assert_eq!(ok("/documents/1/comments"), "/documents/1/comments");
        assert_eq!(normalize("/a/b/c").map(|p| p.len()), Ok(3));
    }

    #[test]
    fn query_and_fragment_are_cut() {
        assert_eq!(ok("/documents/1?x=/../2"), "/documents/1");
        assert_eq!(ok("/documents/1#/../2"), "/documents/1");
        assert_eq!(ok("/documents?"), "/documents");
    }

    #[test]
    fn unreserved_escapes_are_decoded() {
        assert_eq!(ok("/%64ocuments/%31"), "/documents/1");
        assert_eq!(ok("/a%7Eb/%2d"), "/a~b/-");
    }

    #[test]
    fn other_escapes_are_kept_uppercase() {
        assert_eq!(ok("/a%20b"), "/a%20b");
        assert_eq!(ok("/a%3a"), "/a%3A");
        assert_eq!(ok("/a%252e"), "/a%252e");
    }

    #[test]
    fn tricks_are_refused() {
        use PathError::*;
        let cases: &[(&str, PathError)] = &[
            ("", Empty),
            ("documents/1", NotOriginForm),
            ("http://evil/documents/1", NotOriginForm),
            ("*", NotOriginForm),
            ("/documents/1/../2", DotSegment),
            ("/documents/./1", DotSegment),
            ("/documents/1/..", DotSegment),
            ("/documents/1/%2e%2e/2", DotSegment),
            ("/documents/1/%2E%2e/2", DotSegment),
            ("/documents/1/.%2e/2", DotSegment),
            ("/documents/%2e/1", DotSegment),
            ("/documents/2.", DotSegment),
            ("/documents/2%2e", DotSegment),
            ("/documents/1%2F..%2F2", EncodedSlash),
            ("/documents/1%2f2", EncodedSlash),
            ("/documents/1%5C2", EncodedSlash),
            ("/documents/1%5c..%5c2", EncodedSlash),
            ("/documents/1\\..\\2", Backslash),
            ("/documents/1%00", EncodedControl),
            ("/documents/1%0a", EncodedControl),
            ("/documents/1%7f", EncodedControl),
            ("/documents/1\u{0}", ForbiddenByte),
            ("/documents/1\n", ForbiddenByte),
            ("/documents/1 2", ForbiddenByte),
            ("/documents/\u{e9}", ForbiddenByte),
            ("//documents/2", EmptySegment),
            ("/documents//2", EmptySegment),
            ("/documents/", EmptySegment),
            ("/documents/%", BadEscape),
            ("/documents/%2", BadEscape),
            ("/documents/%zz", BadEscape),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw), Err(*want), "{raw:?}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(normalize(&long), Err(PathError::TooLong));
        let deep = "/a".repeat(MAX_SEGMENTS + 1);
        assert_eq!(normalize(&deep), Err(PathError::TooManySegments));
        let deepest = "/a".repeat(MAX_SEGMENTS);
        assert_eq!(normalize(&deepest).map(|p| p.len()), Ok(MAX_SEGMENTS));
    }
}
