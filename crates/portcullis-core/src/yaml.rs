//! All YAML parsing in Portcullis happens here.
//!
//! `serde_yaml` is deprecated upstream; keeping every call to it in this one
//! module means swapping the parser touches nothing else. Besides parsing,
//! the module finds the line of a node by its path (`grants[3].role`), so
//! that errors found after parsing (an unknown role, say) still point at a
//! line. That locator reads block-style YAML, which is what policy files use,
//! and flow style (`{ a: 1 }`, `[x, y]`), which is what JSON is: a
//! generator's JSON case file points at the right case, whether the whole
//! document or only one value is written in flow style.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::diagnostic::Diagnostic;

/// True for text with no content: only blank lines, `#` comments and
/// `---` document markers.
pub fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---"
    })
}

/// Parses one YAML document, the text of `file`, into `T`. An empty
/// document is `T::default()`. A syntax or shape error names `file` and,
/// when the parser knows it, the line.
pub fn parse<T: DeserializeOwned + Default>(file: &Path, text: &str) -> Result<T, Diagnostic> {
    if is_blank(text) {
        return Ok(T::default());
    }
    serde_yaml::from_str(text).map_err(|e| Diagnostic {
        file: file.to_path_buf(),
        line: e.location().map(|l| l.line()),
        message: strip_location(&e.to_string()),
    })
}

/// serde_yaml appends " at line L column C" to its messages; the caller
/// prints the line itself, in `file:line:` form.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// One step of a path into a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Finds the line of a node of a block-style YAML document by its path.
pub struct LineIndex<'t> {
    lines: Vec<&'t str>,
}

/// A node's extent: its first line, the column its content starts at, and
/// the line after its last.
#[derive(Debug, Clone, Copy)]
struct Block {
    line: usize,
    col: usize,
    end: usize,
    /// Where the node is a flow collection: the line and column of its
    /// opening `{` or `[`.
    flow: Option<(usize, usize)>,
}

impl<'t> LineIndex<'t> {
    pub fn new(text: &'t str) -> Self {
        Self {
            lines: text.lines().collect(),
        }
    }

    /// The 1-based line of the node at `path`, or of the deepest ancestor
    /// found; line 1 when nothing is.
    pub fn line_of(&self, path: &[Step<'_>]) -> usize {
        let mut block = Block {
            line: 0,
            col: 0,
            end: self.lines.len(),
            flow: self.flow_root(),
        };
        let mut found = None;
        for (k, step) in path.iter().enumerate() {
            if let Some((line, col)) = block.flow {
                let mut cursor = Cursor {
                    lines: &self.lines,
                    line,
                    col,
                };
                flow_find(&mut cursor, &path[k..], &mut found);
                break;
            }
            let next = match *step {
                Step::Key(key) => self.find_key(block, key),
                Step::Index(index) => self.find_item(block, index),
            };
            match next {
                Some((line, child)) => {
                    found = Some(line);
                    block = child;
                }
                None => break,
            }
        }
        found.map_or(1, |line| line + 1)
    }

    /// The opening of a document written in flow style (JSON): its first
    /// content starts with `{` or `[`.
    fn flow_root(&self) -> Option<(usize, usize)> {
        let (line, indent) = (0..self.lines.len()).find_map(|l| self.indent(l).map(|i| (l, i)))?;
        let first = self.lines.get(line)?.as_bytes().get(indent)?;
        matches!(first, b'{' | b'[').then_some((line, indent))
    }

    /// The indentation of a line that holds content, or `None` for blank and
    /// comment lines.
    fn indent(&self, line: usize) -> Option<usize> {
        let text = self.lines.get(line)?;
        let trimmed = text.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return None;
        }
        Some(text.len() - trimmed.len())
    }

    /// The content of `line` from column `col`, for lines that hold content.
    fn content(&self, line: usize, col: usize) -> Option<&'t str> {
        self.indent(line)?;
        self.lines.get(line).and_then(|t| t.get(col..))
    }

    /// Lines of `block` whose content starts exactly at the block's column.
    fn members(&self, block: Block) -> impl Iterator<Item = (usize, &'t str)> + '_ {
        (block.line..block.end).filter_map(move |line| {
            let col = if line == block.line {
                block.col
            } else {
                let indent = self.indent(line)?;
                if indent != block.col {
                    return None;
                }
                indent
            };
            self.content(line, col).map(|c| (line, c))
        })
    }

    fn find_key(&self, block: Block, key: &str) -> Option<(usize, Block)> {
        let (line, content) = self.members(block).find(|(_, content)| {
            let rest = content
                .strip_prefix(key)
                .or_else(|| strip_quoted(content, key));
            rest.is_some_and(|r| r == ":" || r.starts_with(": ") || r.starts_with(":\t"))
        })?;
        let col = if line == block.line {
            block.col
        } else {
            self.indent(line)?
        };
        let after_colon = &content[content.find(':').unwrap_or(0) + 1..];
        let value = after_colon.trim();
        if !(value.is_empty() || value.starts_with('#')) {
            // An inline value: nothing below it in block style; a flow
            // collection (which may span lines) is read by the flow locator.
            let start = col + (content.len() - after_colon.trim_start().len());
            let flow = (value.starts_with('{') || value.starts_with('['))
                .then_some((line, start.min(self.lines[line].len())));
            let here = Block {
                line,
                col: usize::MAX,
                end: line + 1,
                flow,
            };
            return Some((line, here));
        }
        Some((line, self.child_block(line, col, block.end)))
    }

    /// The block nested under `line` (whose content starts at `col`). A
    /// sequence may sit at the same indentation as its key.
    fn child_block(&self, line: usize, col: usize, end: usize) -> Block {
        let first = (line + 1..end).find_map(|l| self.indent(l).map(|i| (l, i)));
        match first {
            Some((first_line, indent))
                if indent > col
                    || (indent == col
                        && self
                            .content(first_line, indent)
                            .is_some_and(|c| c == "-" || c.starts_with("- "))) =>
            {
                let stop = (first_line + 1..end)
                    .find(|&l| {
                        self.indent(l).is_some_and(|i| {
                            i < indent
                                || (i == indent
                                    && indent == col
                                    && !self
                                        .content(l, i)
                                        .is_some_and(|c| c == "-" || c.starts_with("- ")))
                        })
                    })
                    .unwrap_or(end);
                Block {
                    line: first_line,
                    col: indent,
                    end: stop,
                    flow: None,
                }
            }
            _ => Block {
                line,
                col,
                end: line + 1,
                flow: None,
            },
        }
    }

    fn find_item(&self, block: Block, index: usize) -> Option<(usize, Block)> {
        let items: Vec<usize> = self
            .members(block)
            .filter(|(_, c)| *c == "-" || c.starts_with("- "))
            .map(|(line, _)| line)
            .collect();
        let line = *items.get(index)?;
        let end = items.get(index + 1).copied().unwrap_or(block.end);
        let col = if line == block.line {
            block.col
        } else {
            self.indent(line)?
        };
        let content = self.content(line, col)?;
        let inner = content[1..].len() - content[1..].trim_start().len();
        if content[1..].trim().is_empty() {
            let child = self.child_block(line, col, end);
            return Some((line, child));
        }
        let start = col + 1 + inner;
        let flow = matches!(
            content[1..].trim_start().as_bytes().first(),
            Some(b'{' | b'[')
        )
        .then_some((line, start));
        Some((
            line,
            Block {
                line,
                col: start,
                end,
                flow,
            },
        ))
    }
}

/// A position in a document, read byte by byte across lines (every byte
/// the flow syntax cares about is ASCII, so UTF-8 text is never split).
struct Cursor<'a, 't> {
    lines: &'a [&'t str],
    line: usize,
    col: usize,
}

impl Cursor<'_, '_> {
    /// The byte here; `\n` at the end of a line, `None` after the last.
    fn peek(&self) -> Option<u8> {
        let text = self.lines.get(self.line)?;
        Some(text.as_bytes().get(self.col).copied().unwrap_or(b'\n'))
    }

    fn bump(&mut self) {
        match self.lines.get(self.line) {
            Some(text) if self.col < text.len() => self.col += 1,
            Some(_) => {
                self.line += 1;
                self.col = 0;
            }
            None => {}
        }
    }

    /// Skips blanks, line ends and `#` comments.
    fn skip_blank(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' | b'\r' | b'\n' => self.bump(),
                b'#' if self.col == 0 || self.after_blank() => {
                    self.line += 1;
                    self.col = 0;
                }
                _ => return,
            }
        }
    }

    fn after_blank(&self) -> bool {
        self.lines
            .get(self.line)
            .and_then(|t| t.as_bytes().get(self.col.wrapping_sub(1)))
            .is_some_and(|b| *b == b' ' || *b == b'\t')
    }

    /// Reads a quoted scalar (the cursor on its quote), unescaping `\"`,
    /// `\\` and `''` enough to compare keys.
    fn quoted(&mut self) -> String {
        let Some(quote) = self.peek() else {
            return String::new();
        };
        self.bump();
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            self.bump();
            match b {
                b'\\' if quote == b'"' => {
                    if let Some(next) = self.peek() {
                        out.push(next);
                        self.bump();
                    }
                }
                b'\'' if quote == b'\'' && self.peek() == Some(b'\'') => {
                    out.push(b'\'');
                    self.bump();
                }
                b if b == quote => break,
                b'\n' => out.push(b' '),
                b => out.push(b),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads a mapping key: quoted, or plain up to `: `, `,` or `}`.
    fn key(&mut self) -> String {
        if matches!(self.peek(), Some(b'"' | b'\'')) {
            return self.quoted();
        }
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            if b == b',' || b == b'}' || b == b'\n' {
                break;
            }
            if b == b':' {
                let next = self
                    .lines
                    .get(self.line)
                    .and_then(|t| t.as_bytes().get(self.col + 1).copied());
                if next.is_none_or(|n| matches!(n, b' ' | b'\t' | b',' | b'[' | b']' | b'{' | b'}'))
                {
                    break;
                }
            }
            out.push(b);
            self.bump();
        }
        String::from_utf8_lossy(&out).trim().to_owned()
    }

    /// Skips one value: a nested collection, a quoted or a plain scalar.
    fn skip_value(&mut self) {
        self.skip_blank();
        let mut depth = 0usize;
        while let Some(b) = self.peek() {
            match b {
                b'"' | b'\'' => {
                    self.quoted();
                    if depth == 0 {
                        return;
                    }
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => return,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.bump();
                        return;
                    }
                }
                b',' if depth == 0 => return,
                b'#' if self.after_blank() => {
                    self.line += 1;
                    self.col = 0;
                    continue;
                }
                _ => {}
            }
            self.bump();
        }
    }
}

/// Follows `path` through the flow collection at `cursor`, recording in
/// `found` the 0-based line of each step it finds.
fn flow_find(cursor: &mut Cursor<'_, '_>, path: &[Step<'_>], found: &mut Option<usize>) {
    cursor.skip_blank();
    let Some((step, rest)) = path.split_first() else {
        return;
    };
    match (cursor.peek(), *step) {
        (Some(b'{'), Step::Key(wanted)) => {
            cursor.bump();
            loop {
                cursor.skip_blank();
                match cursor.peek() {
                    None | Some(b'}') => return,
                    Some(b',') => {
                        cursor.bump();
                        continue;
                    }
                    _ => {}
                }
                let (line, col) = (cursor.line, cursor.col);
                let key = cursor.key();
                cursor.skip_blank();
                if cursor.peek() == Some(b':') {
                    cursor.bump();
                }
                if key == wanted {
                    *found = Some(line);
                    return flow_find(cursor, rest, found);
                }
                cursor.skip_value();
                if (cursor.line, cursor.col) == (line, col) {
                    // Not a mapping entry (the document does not parse):
                    // stop rather than loop.
                    return;
                }
            }
        }
        (Some(b'['), Step::Index(wanted)) => {
            cursor.bump();
            let mut index = 0;
            loop {
                cursor.skip_blank();
                match cursor.peek() {
                    None | Some(b']') => return,
                    Some(b',') => {
                        cursor.bump();
                        continue;
                    }
                    _ => {}
                }
                if index == wanted {
                    *found = Some(cursor.line);
                    return flow_find(cursor, rest, found);
                }
                let at = (cursor.line, cursor.col);
                cursor.skip_value();
                if (cursor.line, cursor.col) == at {
                    return;
                }
                index += 1;
            }
        }
        _ => {}
    }
}

fn strip_quoted<'c>(content: &'c str, key: &str) -> Option<&'c str> {
    ['"', '\''].iter().find_map(|q| {
        content
            .strip_prefix(*q)?
            .strip_prefix(key)?
            .strip_prefix(*q)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Step::{Index, Key};

    const DOC: &str = "\
# comment
issuers:
  - name: a
    key:
      secret_env: X
applications:
- name: docs
  routes:
    - name: r0
      path: /x

    - name: r1
      action: wirte
roles:
  viewer:
    actions: [read]
  'editor':
    includes: [viewer]
";

    #[test]
    fn finds_keys_and_items() {
        let index = LineIndex::new(DOC);
        assert_eq!(index.line_of(&[Key("issuers")]), 2);
        assert_eq!(index.line_of(&[Key("issuers"), Index(0)]), 3);
        assert_eq!(index.line_of(&[Key("issuers"), Index(0), Key("name")]), 3);
        assert_eq!(
            index.line_of(&[Key("issuers"), Index(0), Key("key"), Key("secret_env")]),
            5
        );
        assert_eq!(index.line_of(&[Key("applications"), Index(0)]), 7);
        assert_eq!(
            index.line_of(&[Key("applications"), Index(0), Key("routes"), Index(1)]),
            12
        );
        assert_eq!(
            index.line_of(&[
                Key("applications"),
                Index(0),
                Key("routes"),
                Index(1),
                Key("action")
            ]),
            13
        );
        assert_eq!(index.line_of(&[Key("roles"), Key("editor")]), 17);
        assert_eq!(
            index.line_of(&[Key("roles"), Key("editor"), Key("includes")]),
            18
        );
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        let index = LineIndex::new(DOC);
        assert_eq!(
            index.line_of(&[Key("roles"), Key("viewer"), Key("nope")]),
            15
        );
        assert_eq!(index.line_of(&[Key("missing")]), 1);
        assert_eq!(index.line_of(&[Key("issuers"), Index(7)]), 2);
    }

    #[test]
    fn finds_nodes_of_a_json_document() {
        let json = r#"{
  "policies": "..",
  "cases": [
    {"name": "one", "request": {"method": "GET", "path": "/a,b}"}},
    {
      "name": "two, with \"quotes\" and a ] bracket",
      "expect": {"decision": "allow"}
    },

    {"name": "three", "as": {"subject": "x", "groups": ["a", "b"]},
     "expect": {"decision": "deny"}}
  ]
}
"#;
        let index = LineIndex::new(json);
        assert_eq!(index.line_of(&[Key("policies")]), 2);
        assert_eq!(index.line_of(&[Key("cases")]), 3);
        assert_eq!(index.line_of(&[Key("cases"), Index(0)]), 4);
        assert_eq!(index.line_of(&[Key("cases"), Index(1)]), 5);
        assert_eq!(index.line_of(&[Key("cases"), Index(1), Key("expect")]), 7);
        assert_eq!(index.line_of(&[Key("cases"), Index(2)]), 10);
        assert_eq!(index.line_of(&[Key("cases"), Index(2), Key("expect")]), 11);
        assert_eq!(
            index.line_of(&[Key("cases"), Index(2), Key("as"), Key("groups"), Index(1)]),
            10
        );
        // Not there: the deepest ancestor found.
        assert_eq!(index.line_of(&[Key("cases"), Index(9)]), 3);
    }

    #[test]
    fn malformed_flow_text_ends_the_search() {
        for text in [
            "{ ] }",
            "[ } ]",
            "{ a: [ } ",
            "{\"a\": \"",
            "cases: [ {",
            "- {",
        ] {
            let index = LineIndex::new(text);
            let line = index.line_of(&[Key("cases"), Index(3), Key("a"), Index(0)]);
            assert!(line >= 1, "{text}");
            assert!(index.line_of(&[Key("a"), Key("b")]) >= 1, "{text}");
        }
    }

    #[test]
    fn finds_nodes_of_flow_values_in_a_block_document() {
        let text = "\
cases: [
  { name: a, expect: { decision: allow } },
  # a comment, with a ] bracket
  { name: b,
    expect: { decision: deny } },
]
roles:
  - { name: r,
      actions: [read] }
";
        let index = LineIndex::new(text);
        assert_eq!(index.line_of(&[Key("cases"), Index(0)]), 2);
        assert_eq!(index.line_of(&[Key("cases"), Index(1)]), 4);
        assert_eq!(index.line_of(&[Key("cases"), Index(1), Key("expect")]), 5);
        assert_eq!(index.line_of(&[Key("roles"), Index(0), Key("actions")]), 9);
    }

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Small {
        #[serde(default)]
        names: Vec<String>,
    }

    #[test]
    fn parse_reports_the_file_and_line() {
        let file = Path::new("p/small.yaml");
        let err = parse::<Small>(file, "names:\n  - a\n  - [b\n").err();
        assert!(err.as_ref().and_then(|e| e.line).is_some(), "{err:?}");
        assert_eq!(parse::<Small>(file, "# nothing\n"), Ok(Small::default()));
        let err = parse::<Small>(file, "# a comment\nnmes: []\n").err();
        assert_eq!(err.as_ref().and_then(|e| e.line), Some(2), "{err:?}");
        assert_eq!(
            err.map(|e| e.to_string()),
            Some("p/small.yaml:2: unknown field `nmes`, expected `names`".to_owned())
        );
    }
}
