//! A strict TOML reader that keeps going after a problem, so `check-config` can report every
//! problem with its file, line and key instead of stopping at serde's first error.

use std::cell::RefCell;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};

use toml_edit::{Item, TableLike, Value};

/// One configuration problem, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, 0 when the problem is not tied to a line (e.g. an environment variable).
    pub line: usize,
    /// Dotted key path, e.g. `mqtt.receive_maximum` or `rule[2].severity`.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file.display(),
                self.line,
                self.key,
                self.message
            )
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Collects problems for one file.
#[derive(Debug)]
pub struct Ctx<'s> {
    file: PathBuf,
    src: &'s str,
    problems: RefCell<Vec<Problem>>,
}

impl<'s> Ctx<'s> {
    /// A context for `src`, read from `file`.
    pub fn new(file: &Path, src: &'s str) -> Self {
        Self {
            file: file.to_owned(),
            src,
            problems: RefCell::new(Vec::new()),
        }
    }

    /// The 1-based line of a byte offset.
    pub fn line_of(&self, span: Option<Range<usize>>) -> usize {
        span.map(|s| {
            self.src[..s.start.min(self.src.len())]
                .matches('\n')
                .count()
                + 1
        })
        .unwrap_or(0)
    }

    /// Records a problem.
    pub fn problem(&self, line: usize, key: impl Into<String>, message: impl Into<String>) {
        self.problems.borrow_mut().push(Problem {
            file: self.file.clone(),
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    /// The problems found so far.
    pub fn into_problems(self) -> Vec<Problem> {
        self.problems.into_inner()
    }
}

/// A table being read: every key read is marked, and [`Section::finish`] reports the rest
/// as unknown (the configuration is strict: a typo must not silently fall back to a default).
pub struct Section<'a, 's> {
    ctx: &'a Ctx<'s>,
    table: &'a dyn TableLike,
    path: String,
    line: usize,
    used: Vec<&'static str>,
}

impl<'a, 's> Section<'a, 's> {
    /// Reads `table`, named `path` in messages.
    pub fn new(ctx: &'a Ctx<'s>, table: &'a dyn TableLike, path: String, line: usize) -> Self {
        Self {
            ctx,
            table,
            path,
            line,
            used: Vec::new(),
        }
    }

    /// The context problems go to.
    pub fn ctx(&self) -> &'a Ctx<'s> {
        self.ctx
    }

    /// The line the table starts on.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The dotted path of `key` in this table.
    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn item(&mut self, key: &'static str) -> Option<(&'a Item, usize)> {
        self.used.push(key);
        let (k, item) = self.table.get_key_value(key)?;
        let line = self.ctx.line_of(k.span().or_else(|| item.span()));
        Some((item, line))
    }

    /// Records a problem at `key` of this table.
    pub fn problem(&self, line: usize, key: &str, message: impl Into<String>) {
        self.ctx.problem(line, self.key_path(key), message);
    }

    /// A string value.
    pub fn string(&mut self, key: &'static str) -> Option<(String, usize)> {
        let (item, line) = self.item(key)?;
        match item.as_str() {
            Some(s) => Some((s.to_owned(), line)),
            None => {
                self.problem(
                    line,
                    key,
                    format!("expected a string, found {}", type_name(item)),
                );
                None
            }
        }
    }

    /// A string that must be one of `allowed`.
    pub fn choice(&mut self, key: &'static str, allowed: &[&str]) -> Option<String> {
        let (s, line) = self.string(key)?;
        if allowed.contains(&s.as_str()) {
            Some(s)
        } else {
            self.problem(
                line,
                key,
                format!("{s:?} is not one of {}", allowed.join(", ")),
            );
            None
        }
    }

    /// An integer within `range`.
    pub fn int(&mut self, key: &'static str, range: RangeInclusive<i64>) -> Option<i64> {
        let (item, line) = self.item(key)?;
        match item.as_integer() {
            Some(n) if range.contains(&n) => Some(n),
            Some(n) => {
                self.problem(
                    line,
                    key,
                    format!("{n} is outside {}..={}", range.start(), range.end()),
                );
                None
            }
            None => {
                self.problem(
                    line,
                    key,
                    format!("expected an integer, found {}", type_name(item)),
                );
                None
            }
        }
    }

    /// A boolean.
    pub fn bool(&mut self, key: &'static str) -> Option<bool> {
        let (item, line) = self.item(key)?;
        match item.as_bool() {
            Some(b) => Some(b),
            None => {
                self.problem(
                    line,
                    key,
                    format!("expected true or false, found {}", type_name(item)),
                );
                None
            }
        }
    }

    /// Any value, for callers that validate it themselves (e.g. a rule condition's `value`).
    pub fn value(&mut self, key: &'static str) -> Option<(&'a Value, usize)> {
        let (item, line) = self.item(key)?;
        match item.as_value() {
            Some(v) => Some((v, line)),
            None => {
                self.problem(
                    line,
                    key,
                    format!("expected a value, found {}", type_name(item)),
                );
                None
            }
        }
    }

    /// A sub-table (`[a.b]` or an inline table).
    pub fn table(&mut self, key: &'static str) -> Option<Section<'a, 's>> {
        let (item, line) = self.item(key)?;
        match item.as_table_like() {
            Some(t) => Some(Section::new(self.ctx, t, self.key_path(key), line)),
            None => {
                self.problem(
                    line,
                    key,
                    format!("expected a table, found {}", type_name(item)),
                );
                None
            }
        }
    }

    /// An array of tables (`[[key]]` or an inline array of inline tables).
    pub fn tables(&mut self, key: &'static str) -> Vec<Section<'a, 's>> {
        let Some((item, line)) = self.item(key) else {
            return Vec::new();
        };
        let path = self.key_path(key);
        let mut out = Vec::new();
        if let Some(arr) = item.as_array_of_tables() {
            for (i, t) in arr.iter().enumerate() {
                let l = self.ctx.line_of(t.span()).max(line);
                out.push(Section::new(self.ctx, t, format!("{path}[{i}]"), l));
            }
        } else if let Some(arr) = item.as_array() {
            for (i, v) in arr.iter().enumerate() {
                let l = self.ctx.line_of(v.span()).max(line);
                match v.as_inline_table() {
                    Some(t) => out.push(Section::new(self.ctx, t, format!("{path}[{i}]"), l)),
                    None => self.ctx.problem(
                        l,
                        format!("{path}[{i}]"),
                        format!("expected a table, found {}", v.type_name()),
                    ),
                }
            }
        } else {
            self.problem(
                line,
                key,
                format!("expected an array of tables, found {}", type_name(item)),
            );
        }
        out
    }

    /// Reports every key that was not read as unknown.
    pub fn finish(self) {
        for (k, item) in self.table.iter() {
            if !self.used.contains(&k) {
                let line = self.ctx.line_of(
                    self.table
                        .key(k)
                        .and_then(|k| k.span())
                        .or_else(|| item.span()),
                );
                self.problem(line, k, "unknown key");
            }
        }
    }
}

fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) => v.type_name(),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}
