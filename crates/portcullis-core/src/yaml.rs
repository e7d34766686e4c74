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

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

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
///
/// What it reads on the way is kept: the node each path prefix leads to,
/// the members of each block and the item starts of each flow sequence.
/// Asking for the line of every item of a long sequence (the lint's
/// origins of 200k grants) then reads the document once, not once per
/// item.
pub struct LineIndex<'t> {
    lines: Vec<&'t str>,
    /// The deepest line found and the block reached for each path prefix
    /// followed in block style.
    prefixes: RefCell<HashMap<Vec<OwnedStep>, Reached>>,
    /// Each block's member lines and which of them are sequence items.
    members: RefCell<HashMap<(usize, usize, usize), Rc<Members<'t>>>>,
    /// Where each item of a flow sequence starts, by the sequence's `[`.
    flow_items: RefCell<HashMap<Position, Rc<[Position]>>>,
}

/// A line and a column, 0-based.
type Position = (usize, usize);

/// Where following a path prefix got: the deepest line found, and the
/// block there.
#[derive(Clone, Copy)]
struct Reached {
    found: Option<usize>,
    block: Block,
}

/// A path step that owns its key, to remember a prefix by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum OwnedStep {
    Key(String),
    Index(usize),
}

impl From<&Step<'_>> for OwnedStep {
    fn from(step: &Step<'_>) -> Self {
        match *step {
            Step::Key(key) => OwnedStep::Key(key.to_owned()),
            Step::Index(index) => OwnedStep::Index(index),
        }
    }
}

/// The lines whose content starts exactly at a block's column, and the
/// ones among them that start a sequence item.
struct Members<'t> {
    all: Vec<(usize, &'t str)>,
    items: Vec<usize>,
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
    flow: Option<Position>,
}

impl<'t> LineIndex<'t> {
    pub fn new(text: &'t str) -> Self {
        Self {
            lines: text.lines().collect(),
            prefixes: RefCell::default(),
            members: RefCell::default(),
            flow_items: RefCell::default(),
        }
    }

    /// The 1-based line of the node at `path`, or of the deepest ancestor
    /// found; line 1 when nothing is.
    pub fn line_of(&self, path: &[Step<'_>]) -> usize {
        // Start from the longest prefix already followed (the path without
        // its last step, when a caller asks about each item in turn).
        let owned: Vec<OwnedStep> = path.iter().map(OwnedStep::from).collect();
        let (mut k, mut found, mut block) = (1..path.len())
            .rev()
            .find_map(|k| {
                let known = self.prefixes.borrow().get(&owned[..k]).copied();
                known.map(|Reached { found, block }| (k, found, block))
            })
            .unwrap_or((
                0,
                None,
                Block {
                    line: 0,
                    col: 0,
                    end: self.lines.len(),
                    flow: self.flow_root(),
                },
            ));
        while let Some(step) = path.get(k) {
            if let Some((line, col)) = block.flow {
                let mut cursor = Cursor {
                    lines: &self.lines,
                    line,
                    col,
                };
                self.flow_find(&mut cursor, &path[k..], &mut found);
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
            k += 1;
            if k < path.len() {
                self.prefixes
                    .borrow_mut()
                    .insert(owned[..k].to_vec(), Reached { found, block });
            }
        }
        found.map_or(1, |line| line + 1)
    }

    /// The members of `block`, read once.
    fn members_of(&self, block: Block) -> Rc<Members<'t>> {
        let key = (block.line, block.col, block.end);
        if let Some(known) = self.members.borrow().get(&key) {
            return known.clone();
        }
        let all: Vec<(usize, &'t str)> = self.members(block).collect();
        let items = all
            .iter()
            .filter(|(_, c)| *c == "-" || c.starts_with("- "))
            .map(|(line, _)| *line)
            .collect();
        let read = Rc::new(Members { all, items });
        self.members.borrow_mut().insert(key, read.clone());
        read
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
        let members = self.members_of(block);
        let (line, content) = members.all.iter().copied().find(|(_, content)| {
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
        let members = self.members_of(block);
        let line = *members.items.get(index)?;
        let end = members.items.get(index + 1).copied().unwrap_or(block.end);
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

impl LineIndex<'_> {
    /// Follows `path` through the flow collection at `cursor`, recording in
    /// `found` the 0-based line of each step it finds.
    fn flow_find(&self, cursor: &mut Cursor<'_, '_>, path: &[Step<'_>], found: &mut Option<usize>) {
        cursor.skip_blank();
        let Some((step, rest)) = path.split_first() else {
            return;
        };
        match (cursor.peek(), *step) {
            (Some(b'['), Step::Index(wanted)) => {
                let items = self.flow_items_at(cursor);
                if let Some(&(line, col)) = items.get(wanted) {
                    *found = Some(line);
                    cursor.line = line;
                    cursor.col = col;
                    self.flow_find(cursor, rest, found);
                }
            }
            _ => {
                if let Some(()) = flow_key(cursor, *step, found) {
                    self.flow_find(cursor, rest, found);
                }
            }
        }
    }

    /// Where each item of the flow sequence whose `[` is at `cursor`
    /// starts, read once.
    fn flow_items_at(&self, cursor: &Cursor<'_, '_>) -> Rc<[Position]> {
        let key = (cursor.line, cursor.col);
        if let Some(known) = self.flow_items.borrow().get(&key) {
            return known.clone();
        }
        let mut cursor = Cursor {
            lines: cursor.lines,
            line: cursor.line,
            col: cursor.col,
        };
        cursor.bump();
        let mut starts = Vec::new();
        loop {
            cursor.skip_blank();
            match cursor.peek() {
                None | Some(b']') => break,
                Some(b',') => {
                    cursor.bump();
                    continue;
                }
                _ => {}
            }
            let at = (cursor.line, cursor.col);
            starts.push(at);
            cursor.skip_value();
            if (cursor.line, cursor.col) == at {
                break;
            }
        }
        let starts: Rc<[Position]> = starts.into();
        self.flow_items.borrow_mut().insert(key, starts.clone());
        starts
    }
}

/// Steps through a flow mapping at `cursor` to the value of `step`'s key,
/// recording the key's line in `found`; `None` when `step` is not a key
/// of a mapping here.
fn flow_key(cursor: &mut Cursor<'_, '_>, step: Step<'_>, found: &mut Option<usize>) -> Option<()> {
    let (Some(b'{'), Step::Key(wanted)) = (cursor.peek(), step) else {
        return None;
    };
    cursor.bump();
    loop {
        cursor.skip_blank();
        match cursor.peek() {
            None | Some(b'}') => return None,
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
            return Some(());
        }
        cursor.skip_value();
        if (cursor.line, cursor.col) == (line, col) {
            // Not a mapping entry (the document does not parse): stop
            // rather than loop.
            return None;
        }
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

    /// What is kept between questions answers every later one as a fresh
    /// index would: each item of a long sequence, in block and in flow
    /// style, asked in order, backwards and by a field below it.
    #[test]
    fn every_item_of_a_long_sequence_in_any_order() {
        const ITEMS: usize = 2_000;
        let mut block = String::from("roles:\n  viewer: {}\ngrants:\n");
        let mut flow = String::from("{\"grants\": [\n");
        for i in 0..ITEMS {
            block.push_str(&format!("  - subject: user{i}\n    role: viewer\n"));
            let comma = if i + 1 < ITEMS { "," } else { "" };
            flow.push_str(&format!(
                "  {{\"subject\": \"user{i}\",\n   \"role\": \"viewer\"}}{comma}\n"
            ));
        }
        flow.push_str("]}\n");
        // Block: item i starts on line 4 + 2i, its role on the next line;
        // flow: item i on line 2 + 2i, its role on the next line too.
        for (text, first) in [(&block, 4), (&flow, 2)] {
            let kept = LineIndex::new(text);
            let mut order: Vec<usize> = (0..ITEMS).collect();
            order.extend((0..ITEMS).rev());
            for i in order {
                let item = [Key("grants"), Index(i)];
                assert_eq!(kept.line_of(&item), first + 2 * i, "item {i}");
            }
            for i in [0, 1, ITEMS / 2, ITEMS - 1] {
                let role = [Key("grants"), Index(i), Key("role")];
                assert_eq!(kept.line_of(&role), first + 2 * i + 1, "role {i}");
                assert_eq!(LineIndex::new(text).line_of(&role), first + 2 * i + 1);
            }
            // Past the end: the sequence's own line, as a fresh index says.
            let past = [Key("grants"), Index(ITEMS)];
            assert_eq!(kept.line_of(&past), LineIndex::new(text).line_of(&past));
        }
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
