//! A small reader over the spanned TOML tree that records every problem it meets.
//!
//! Each getter returns `None` both when a key is absent and when its value is wrong; in
//! the second case it has already recorded an error with the value's position. Callers
//! keep their default and go on, so one pass finds every mistake in the file.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::ConfigError;

/// A string from the file and where it is.
pub type Positioned = (String, Range<usize>);

pub struct Ctx<'a> {
    text: &'a str,
    file: PathBuf,
    /// Byte offset and message of each problem; positions are worked out at the end,
    /// in one pass over the text.
    errors: Vec<(usize, String)>,
    /// What workers will lack when they start (see [`Config::unmet`](super::Config)).
    unmet: Vec<(usize, String)>,
}

/// Errors reported at most; the rest are counted.
pub const MAX_REPORTED: usize = 100;

impl<'a> Ctx<'a> {
    pub fn new(text: &'a str, file: &Path) -> Self {
        Ctx {
            text,
            file: file.to_path_buf(),
            errors: Vec::new(),
            unmet: Vec::new(),
        }
    }

    /// Parse the TOML syntax; record every syntax error. `None` if there was any.
    pub fn parse_document(&mut self) -> Option<Spanned<DeTable<'a>>> {
        let (table, errors) = DeTable::parse_recoverable(self.text);
        let had_errors = !errors.is_empty();
        for e in errors {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().to_string();
            self.error(span, format!("TOML syntax error: {msg}"));
        }
        (!had_errors).then_some(table)
    }

    pub fn error(&mut self, span: Range<usize>, message: String) {
        self.errors.push((span.start, message));
    }

    /// Not an error of the file, but something workers will lack: the daemon starts and
    /// parks those workers; `check-config` reports it as an error.
    pub fn unmet(&mut self, span: Range<usize>, message: String) {
        self.unmet.push((span.start, message));
    }

    pub fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// The first [`MAX_REPORTED`] errors in file order, and how many there are in all.
    /// Their lines and columns (in characters, 1-based) come from one pass over the text.
    /// And the unmet requirements, positioned the same way.
    pub fn into_errors(mut self) -> (Vec<ConfigError>, usize, Vec<ConfigError>) {
        let total = self.errors.len();
        let errors = std::mem::take(&mut self.errors);
        let unmet = std::mem::take(&mut self.unmet);
        (self.positioned(errors), total, self.positioned(unmet))
    }

    fn positioned(&self, mut list: Vec<(usize, String)>) -> Vec<ConfigError> {
        list.sort_by_key(|(offset, _)| *offset);
        list.truncate(MAX_REPORTED);
        let mut out = Vec::with_capacity(list.len());
        let (mut line, mut column, mut at) = (1, 1, 0);
        for (offset, message) in list {
            let offset = offset.min(self.text.len());
            // Offsets come from the parser and fall on character boundaries.
            for c in self.text.get(at..offset).unwrap_or("").chars() {
                if c == '\n' {
                    line += 1;
                    column = 1;
                } else {
                    column += 1;
                }
            }
            at = at.max(offset);
            out.push(ConfigError {
                file: self.file.clone(),
                line,
                column,
                message,
            });
        }
        out
    }
}

/// One TOML table being read, with the dotted name used in messages.
pub struct Section<'t, 'i> {
    table: &'t DeTable<'i>,
    span: Range<usize>,
    name: String,
}

fn type_name(v: &DeValue) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'t, 'i> Section<'t, 'i> {
    pub fn root(doc: &'t Spanned<DeTable<'i>>) -> Self {
        Section {
            table: doc.get_ref(),
            span: doc.span(),
            name: String::new(),
        }
    }

    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    fn where_(&self) -> String {
        if self.name.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in [{}]", self.name)
        }
    }

    fn full(&self, key: &str) -> String {
        if self.name.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.name)
        }
    }

    /// Keys of this table with their positions, in file order.
    pub fn keys(&self) -> Vec<(String, Range<usize>)> {
        let mut keys: Vec<_> = self
            .table
            .iter()
            .map(|(k, _)| (k.get_ref().to_string(), k.span()))
            .collect();
        keys.sort_by_key(|(_, s)| s.start);
        keys
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn get(&self, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    fn wrong_type(&self, ctx: &mut Ctx, key: &str, v: &Spanned<DeValue>, expected: &str) {
        ctx.error(
            v.span(),
            format!(
                "`{}` must be {expected}, found {}",
                self.full(key),
                type_name(v.get_ref())
            ),
        );
    }

    /// Report keys that are not in `known`.
    pub fn finish(self, ctx: &mut Ctx, known: &[&str]) {
        for (key, span) in self.keys() {
            if !known.contains(&key.as_str()) {
                ctx.error(
                    span,
                    format!(
                        "unknown key `{key}` {}; known keys: {}",
                        self.where_(),
                        known.join(", ")
                    ),
                );
            }
        }
    }

    pub fn table(&self, ctx: &mut Ctx, key: &str) -> Option<Section<'t, 'i>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Section {
                table: t,
                span: v.span(),
                name: self.full(key),
            }),
            _ => {
                self.wrong_type(ctx, key, v, "a table");
                None
            }
        }
    }

    pub fn string(&self, ctx: &mut Ctx, key: &str) -> Option<(String, Range<usize>)> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.to_string(), v.span())),
            _ => {
                self.wrong_type(ctx, key, v, "a string");
                None
            }
        }
    }

    pub fn string_list(&self, ctx: &mut Ctx, key: &str) -> Option<(Vec<String>, Range<usize>)> {
        let (items, span) = self.string_list_spanned(ctx, key)?;
        Some((items.into_iter().map(|(s, _)| s).collect(), span))
    }

    /// An array of strings, each with its position, and the array's position.
    pub fn string_list_spanned(
        &self,
        ctx: &mut Ctx,
        key: &str,
    ) -> Option<(Vec<Positioned>, Range<usize>)> {
        let v = self.get(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(ctx, key, v, "an array of strings, e.g. [\"a\", \"b\"]");
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push((s.to_string(), item.span())),
                other => {
                    ok = false;
                    ctx.error(
                        item.span(),
                        format!(
                            "`{}` must hold only strings, found {}",
                            self.full(key),
                            type_name(other)
                        ),
                    );
                }
            }
        }
        ok.then_some((out, v.span()))
    }

    /// A table of strings: each key and value with its position, in file order.
    pub fn string_map_spanned(
        &self,
        ctx: &mut Ctx,
        key: &str,
    ) -> Option<Vec<(Positioned, Positioned)>> {
        let v = self.get(key)?;
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type(ctx, key, v, "a table of strings, e.g. { NAME = \"value\" }");
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (k, item) in t.iter() {
            match item.get_ref() {
                DeValue::String(s) => {
                    out.push((
                        (k.get_ref().to_string(), k.span()),
                        (s.to_string(), item.span()),
                    ));
                }
                other => {
                    ok = false;
                    ctx.error(
                        item.span(),
                        format!(
                            "`{}.{}` must be a string, found {} (quote numbers: \"8080\")",
                            self.full(key),
                            k.get_ref(),
                            type_name(other)
                        ),
                    );
                }
            }
        }
        out.sort_by_key(|((_, span), _)| span.start);
        ok.then_some(out)
    }

    pub fn int_list(&self, ctx: &mut Ctx, key: &str, min: i64, max: i64) -> Option<Vec<i64>> {
        let v = self.get(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(ctx, key, v, "an array of integers, e.g. [2, 3]");
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items.iter() {
            let n = match item.get_ref() {
                DeValue::Integer(i) => {
                    i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
                }
                _ => None,
            };
            match n {
                Some(n) if (min..=max).contains(&n) => out.push(n),
                _ => {
                    ok = false;
                    ctx.error(
                        item.span(),
                        format!(
                            "`{}` must hold integers between {min} and {max}",
                            self.full(key)
                        ),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    /// A boolean and where it is.
    pub fn boolean_spanned(&self, ctx: &mut Ctx, key: &str) -> Option<(bool, Range<usize>)> {
        let span = self.get(key)?.span();
        self.boolean(ctx, key).map(|b| (b, span))
    }

    pub fn boolean(&self, ctx: &mut Ctx, key: &str) -> Option<bool> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(ctx, key, v, "true or false");
                None
            }
        }
    }

    pub fn integer(&self, ctx: &mut Ctx, key: &str, min: i64, max: i64) -> Option<i64> {
        let v = self.get(key)?;
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong_type(ctx, key, v, "an integer");
            return None;
        };
        let digits: String = i.as_str().chars().filter(|c| *c != '_').collect();
        match i64::from_str_radix(&digits, i.radix()) {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                ctx.error(
                    v.span(),
                    format!(
                        "`{}` must be between {min} and {max}, got {}",
                        self.full(key),
                        i.as_str()
                    ),
                );
                None
            }
        }
    }

    pub fn float(&self, ctx: &mut Ctx, key: &str, min: f64, max: f64) -> Option<f64> {
        let v = self.get(key)?;
        let n = match v.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
                .ok()
                .map(|n| n as f64),
            _ => {
                self.wrong_type(ctx, key, v, "a number");
                return None;
            }
        };
        match n {
            Some(n) if n >= min && n <= max => Some(n),
            _ => {
                ctx.error(
                    v.span(),
                    format!("`{}` must be between {min} and {max}", self.full(key)),
                );
                None
            }
        }
    }

    pub fn duration(&self, ctx: &mut Ctx, key: &str) -> Option<Duration> {
        let v = self.get(key)?;
        let DeValue::String(s) = v.get_ref() else {
            self.wrong_type(
                ctx,
                key,
                v,
                "a duration string such as \"30s\", \"5m\" or \"1h 30m\"",
            );
            return None;
        };
        match super::parse_duration(s) {
            Ok(d) => match crate::time::bounded(d) {
                Ok(d) => Some(d),
                Err(e) => {
                    ctx.error(v.span(), format!("`{} = \"{s}\"` {e}", self.full(key)));
                    None
                }
            },
            Err(e) => {
                ctx.error(
                    v.span(),
                    format!(
                        "`{} = \"{s}\"` is not a duration ({e}): write e.g. \"30s\", \"5m\", \"1h 30m\" or \"250ms\"",
                        self.full(key)
                    ),
                );
                None
            }
        }
    }

    pub fn path_spanned(
        &self,
        ctx: &mut Ctx,
        key: &str,
        base: &Path,
    ) -> Option<(PathBuf, Range<usize>)> {
        let (s, span) = self.string(ctx, key)?;
        if s.is_empty() {
            ctx.error(span, format!("`{}` is empty: give a path", self.full(key)));
            return None;
        }
        if s.contains('\0') {
            ctx.error(
                span,
                format!(
                    "`{}` contains a NUL byte, which no path can hold",
                    self.full(key)
                ),
            );
            return None;
        }
        Some((normalize(&base.join(s)), span))
    }

    pub fn path(&self, ctx: &mut Ctx, key: &str, base: &Path) -> Option<PathBuf> {
        self.path_spanned(ctx, key, base).map(|(p, _)| p)
    }
}

/// Remove `.` and `..` components lexically, so that paths read well in messages.
pub fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}
