//! Log records as owned data: made where something is logged, written by the sink.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// A field's value, as it was recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    /// A string field (`NAME = "x"`); text output quotes it.
    Str(String),
    /// A value recorded through its `Display` or `Debug` (`NAME = %x`), as it reads.
    Shown(String),
}

/// One of steward's own log events.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: SystemTime,
    pub level: Level,
    pub target: &'static str,
    pub message: String,
    pub fields: Vec<(&'static str, Value)>,
}

impl Entry {
    /// A warning the sink writes about itself.
    pub fn note(message: String) -> Entry {
        Entry {
            time: SystemTime::now(),
            level: Level::WARN,
            target: "steward::logging",
            message,
            fields: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Who wrote a line.
#[derive(Debug, Clone)]
pub struct Origin {
    pub pool: Arc<str>,
    pub instance: u32,
    pub pid: i32,
    /// The job the worker is running, when it holds exactly one (0 otherwise).
    pub job: Arc<AtomicI64>,
    /// How its pool's lines are read.
    pub rules: super::structured::SharedRules,
}

/// One line of a worker's output.
#[derive(Debug)]
pub struct WorkerLine {
    pub time: SystemTime,
    /// journald's priority, 0–7.
    pub priority: u8,
    pub pool: Arc<str>,
    pub instance: u32,
    pub pid: i32,
    pub stream: Stream,
    /// The job it belongs to (0: none, or several).
    pub job: i64,
    pub text: String,
    /// `APP_…` fields of a structured line.
    pub fields: Vec<(String, String)>,
    /// Queued from the sink's reserve for error lines, not from its room.
    pub reserve: bool,
}

impl WorkerLine {
    /// The level shown in text and JSON output.
    pub fn level(&self) -> Level {
        match self.priority {
            0..=3 => Level::ERROR,
            4 => Level::WARN,
            5 | 6 => Level::INFO,
            _ => Level::DEBUG,
        }
    }

    /// Bytes of text it carries.
    pub fn size(&self) -> usize {
        self.fields
            .iter()
            .fold(self.text.len(), |n, (k, v)| n + k.len() + v.len() + 2)
    }
}

/// The tracing layer that turns steward's events into [`Entry`]s for the sink.
pub struct ToSink {
    pub sink: &'static super::sink::Sink,
}

impl<S: Subscriber> Layer<S> for ToSink {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        self.sink.own(capture(event));
    }
}

/// An event as an [`Entry`].
pub fn capture(event: &Event<'_>) -> Entry {
    let meta = event.metadata();
    let mut v = Fields {
        message: String::new(),
        fields: Vec::new(),
    };
    event.record(&mut v);
    Entry {
        time: SystemTime::now(),
        level: *meta.level(),
        target: meta.target(),
        message: v.message,
        fields: v.fields,
    }
}

struct Fields {
    message: String,
    fields: Vec<(&'static str, Value)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields
                .push((field.name(), Value::Str(value.to_string())));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name(), Value::I64(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name(), Value::U64(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name(), Value::F64(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name(), Value::Bool(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let mut s = String::new();
            let _ = write!(s, "{value:?}");
            self.fields.push((field.name(), Value::Shown(s)));
        }
    }
}
