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

    /// Whether a problem was recorded at `key` or under it (to skip follow-on messages).
    pub fn has_problem_at(&self, key: &str) -> bool {
        self.problems.borrow().iter().any(|p| {
            p.key == key
                || p.key
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
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

    /// The raw item at `key`, without marking it read.
    pub fn peek(&self, key: &str) -> Option<&'a Item> {
        self.table.get(key)
    }

    /// Records a problem about this table as a whole.
    pub fn problem_here(&self, message: impl Into<String>) {
        self.ctx.problem(self.line, self.path.clone(), message);
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

    /// A number; integers are accepted too.
    pub fn number(&mut self, key: &'static str) -> Option<(f64, usize)> {
        let (item, line) = self.item(key)?;
        match (item.as_float(), item.as_integer()) {
            (Some(f), _) if f.is_finite() => Some((f, line)),
            (_, Some(i)) => Some((i as f64, line)),
            _ => {
                self.problem(
                    line,
                    key,
                    format!("expected a number, found {}", type_name(item)),
                );
                None
            }
        }
    }

    /// A non-empty list of scalars (strings, numbers, booleans), each as text: for values
    /// compared with what a device sent, where `1` and `"1"` mean the same.
    pub fn text_list(&mut self, key: &'static str) -> Option<(Vec<String>, usize)> {
        let (item, line) = self.item(key)?;
        let Some(arr) = item.as_array() else {
            self.problem(
                line,
                key,
                format!("expected a list, found {}", type_name(item)),
            );
            return None;
        };
        let mut out = Vec::new();
        for v in arr.iter() {
            match scalar_text(v) {
                Some(t) => out.push(t),
                None => {
                    self.problem(
                        line,
                        key,
                        format!(
                            "list items must be strings or numbers, found {}",
                            v.type_name()
                        ),
                    );
                    return None;
                }
            }
        }
        if out.is_empty() {
            self.problem(line, key, "the list is empty");
            return None;
        }
        Some((out, line))
    }

    /// The entries of a sub-table whose keys are data rather than settings (a profile's
    /// `fields`, a value `map`), each with its line.
    pub fn entries(&mut self, key: &'static str) -> Option<Vec<Entry<'a>>> {
        let (item, line) = self.item(key)?;
        let Some(t) = item.as_table_like() else {
            self.problem(
                line,
                key,
                format!("expected a table, found {}", type_name(item)),
            );
            return None;
        };
        let path = self.key_path(key);
        Some(
            t.iter()
                .map(|(k, v)| Entry {
                    key: k.to_owned(),
                    path: format!("{path}.{k}"),
                    line: self
                        .ctx
                        .line_of(t.key(k).and_then(|k| k.span()).or_else(|| v.span()))
                        .max(line),
                    item: v,
                })
                .collect(),
        )
    }

    /// One table or an array of tables (`when = {…}` or `when = [{…}, {…}]`).
    pub fn table_or_tables(&mut self, key: &'static str) -> Vec<Section<'a, 's>> {
        match self.table.get(key) {
            Some(item) if item.is_table_like() => self.table(key).into_iter().collect(),
            Some(_) => self.tables(key),
            None => Vec::new(),
        }
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

/// An entry of a table with data keys: its key, dotted path, line and value.
pub struct Entry<'a> {
    /// The key as written.
    pub key: String,
    /// Dotted path for messages.
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// The value.
    pub item: &'a Item,
}

impl<'a> Entry<'a> {
    /// The entry as a section, when it is a table.
    pub fn section<'s>(&self, ctx: &'a Ctx<'s>) -> Option<Section<'a, 's>> {
        self.item
            .as_table_like()
            .map(|t| Section::new(ctx, t, self.path.clone(), self.line))
    }
}

/// A scalar as text: strings as they are, numbers and booleans as written.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.value().clone()),
        Value::Integer(i) => Some(i.value().to_string()),
        Value::Float(f) => Some(f.value().to_string()),
        Value::Boolean(b) => Some(b.value().to_string()),
        _ => None,
    }
}

/// A TOML value as JSON (dates become strings).
pub fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::String(s) => serde_json::Value::String(s.value().clone()),
        Value::Integer(i) => serde_json::Value::from(*i.value()),
        Value::Float(f) => serde_json::Number::from_f64(*f.value())
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::Boolean(b) => serde_json::Value::Bool(*b.value()),
        Value::Datetime(d) => serde_json::Value::String(d.value().to_string()),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(to_json).collect()),
        Value::InlineTable(t) => {
            serde_json::Value::Object(t.iter().map(|(k, v)| (k.to_owned(), to_json(v))).collect())
        }
    }
}
