//! All YAML parsing in Portcullis happens here.
//!
//! `serde_yaml` is deprecated upstream; keeping every call to it in this one
//! module means swapping the parser touches nothing else. Besides parsing,
//! the module finds the line of a node by its path (`grants[3].role`), so
//! that errors found after parsing (an unknown role, say) still point at a
//! line. That locator reads block-style YAML, which is what policy files use;
//! for flow style it falls back to the nearest enclosing node it can find.

use serde::de::DeserializeOwned;

/// A syntax or shape error, with its 1-based line when the parser knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub line: Option<usize>,
    pub message: String,
}

/// True for text with no content: only blank lines, `#` comments and
/// `---` document markers.
pub fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---"
    })
}

/// Parses one YAML document into `T`. An empty document is `T::default()`.
pub fn parse<T: DeserializeOwned + Default>(text: &str) -> Result<T, YamlError> {
    if is_blank(text) {
        return Ok(T::default());
    }
    serde_yaml::from_str(text).map_err(|e| YamlError {
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
        };
        let mut found = None;
        for step in path {
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
        let value = content[content.find(':').unwrap_or(0) + 1..].trim();
        if !(value.is_empty() || value.starts_with('#')) {
            // An inline value: nothing below it to descend into.
            let here = Block {
                line,
                col: usize::MAX,
                end: line + 1,
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
                }
            }
            _ => Block {
                line,
                col,
                end: line + 1,
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
        Some((
            line,
            Block {
                line,
                col: col + 1 + inner,
                end,
            },
        ))
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

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Small {
        #[serde(default)]
        names: Vec<String>,
    }

    #[test]
    fn parse_reports_the_line() {
        let err = parse::<Small>("names:\n  - a\n  - [b\n").err();
        assert!(err.as_ref().and_then(|e| e.line).is_some(), "{err:?}");
        assert_eq!(parse::<Small>("# nothing\n"), Ok(Small::default()));
        let err = parse::<Small>("# a comment\nnmes: []\n").err();
        assert_eq!(err.as_ref().and_then(|e| e.line), Some(2), "{err:?}");
    }
}
