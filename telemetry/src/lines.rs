//! Log lines: one line on stderr for each event the layer's filter lets through, as text or
//! JSON, carrying the hop it was logged in.
//!
//! A line logged in a [`crate::Hop`] (on the thread running the hop's work) ends with the
//! hop's `trace_id`, and its `event_id` and `consumer` where it has them. Spans play no part:
//! the layer takes no span, and formats no span field (`tracing-subscriber`'s `fmt` layer
//! formats every field of every span as the span is made, whether a line is logged in it or
//! not; BENCHMARKS.md, "Telemetry").
//!
//! - Text: `2026-12-07T10:00:00.123456Z  INFO target: message key=value trace_id=…`, the level
//!   coloured when the layer is told to colour.
//! - JSON: `{"timestamp":…,"level":"INFO","fields":{"message":…},"target":…,"span":{"trace_id":…}}`,
//!   the shape of `tracing-subscriber`'s JSON lines, whose `level` and `timestamp` keys Lambda's
//!   JSON log format reads
//!   (<https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs-advanced.html>);
//!   `span` only inside a hop.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::context::{HopContext, with_current};
use crate::subscriber::LogFormat;

/// The fields of the hop an event is logged in, in the order a line writes them.
fn hop_fields(hop: Option<&HopContext>) -> Vec<(&'static str, String)> {
    let Some(hop) = hop else {
        return Vec::new();
    };
    let mut fields = vec![("trace_id", hop.trace_id.to_string())];
    if let Some(event_id) = &hop.event_id {
        fields.push(("event_id", event_id.to_string()));
    }
    if let Some(consumer) = hop.consumer {
        fields.push(("consumer", consumer.to_owned()));
    }
    fields
}

/// Where lines go: stderr, or (tests) a buffer.
#[derive(Debug, Clone, Default)]
enum Sink {
    #[default]
    Stderr,
    #[cfg_attr(not(test), allow(dead_code))]
    Buffer(Arc<Mutex<Vec<u8>>>),
}

/// The layer that writes log lines (see the module docs). Give it a filter: it writes a line
/// for every event it is given.
#[derive(Debug, Clone)]
pub struct Lines {
    format: LogFormat,
    colour: bool,
    sink: Sink,
}

impl Lines {
    /// Lines on stderr in `format`; text lines colour their level when `colour`.
    pub fn new(format: LogFormat, colour: bool) -> Self {
        Self {
            format,
            colour,
            sink: Sink::Stderr,
        }
    }

    fn write(&self, line: &[u8]) {
        match &self.sink {
            Sink::Stderr => {
                // One write a line, as `tracing-subscriber` does; a line that cannot be
                // written has nowhere else to go.
                let _ = std::io::stderr().lock().write_all(line);
            }
            Sink::Buffer(buffer) => {
                if let Ok(mut buffer) = buffer.lock() {
                    buffer.extend_from_slice(line);
                }
            }
        }
    }

    fn text(&self, event: &Event<'_>, hop: &[(&str, String)]) -> String {
        let metadata = event.metadata();
        let mut line = String::with_capacity(160);
        line.push_str(&timestamp());
        line.push(' ');
        let level = metadata.level();
        if self.colour {
            let _ = write!(line, "\x1b[{}m{level:>5}\x1b[0m", colour_code(*level));
        } else {
            let _ = write!(line, "{level:>5}");
        }
        let _ = write!(line, " {}:", metadata.target());
        event.record(&mut TextFields(&mut line));
        for (name, value) in hop {
            let _ = write!(line, " {name}={value}");
        }
        line.push('\n');
        line
    }

    fn json(event: &Event<'_>, hop: &[(&str, String)]) -> String {
        let metadata = event.metadata();
        let mut fields = JsonFields(Map::new());
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(timestamp()));
        line.insert("level".into(), Value::String(metadata.level().to_string()));
        line.insert("fields".into(), Value::Object(fields.0));
        line.insert("target".into(), Value::String(metadata.target().to_owned()));
        let span: Map<String, Value> = hop
            .iter()
            .map(|(name, value)| ((*name).to_owned(), Value::String(value.clone())))
            .collect();
        if !span.is_empty() {
            line.insert("span".into(), Value::Object(span));
        }
        let mut line = Value::Object(line).to_string();
        line.push('\n');
        line
    }
}

/// Now, as RFC 3339 in UTC with microseconds.
fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The ANSI colour of a level.
fn colour_code(level: Level) -> u8 {
    match level {
        Level::ERROR => 31,
        Level::WARN => 33,
        Level::INFO => 32,
        Level::DEBUG => 34,
        Level::TRACE => 35,
    }
}

/// An event's fields on a text line: the message, then ` name=value` (strings quoted).
struct TextFields<'a>(&'a mut String);

impl Visit for TextFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = if field.name() == "message" {
            write!(self.0, " {value:?}")
        } else {
            write!(self.0, " {}={value:?}", field.name())
        };
    }
}

/// An event's fields as a JSON object: numbers and booleans as themselves, the rest as text.
struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

impl<S: Subscriber> Layer<S> for Lines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let hop = with_current(hop_fields);
        let line = match self.format {
            LogFormat::Text => self.text(event, &hop),
            LogFormat::Json => Self::json(event, &hop),
        };
        self.write(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// The lines `body` logs through [`Lines`] in `format`, uncoloured.
    fn lines(format: LogFormat, colour: bool, body: impl FnOnce()) -> Vec<String> {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let layer = Lines {
            format,
            colour,
            sink: Sink::Buffer(Arc::clone(&buffer)),
        };
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), body);
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    /// A line in a consumer's hop, inside the bus's (a hop made inside another, in the same
    /// trace, takes what it lacks from it); a line outside any hop.
    fn log_in_hops() {
        const INCOMING: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let outer = crate::Hop::start(tracing::Span::none(), Some(INCOMING)).with_event_id("e-1");
        outer.in_scope(|| {
            let inner = crate::Hop::start(tracing::Span::none(), None).with_consumer("book-added");
            let _in = inner.enter();
            tracing::warn!(attempt = 2, name = "Dune", "activity recorded");
        });
        tracing::info!("outside");
    }

    #[test]
    fn text_lines_carry_the_nearest_hop_fields() {
        let lines = lines(LogFormat::Text, false, log_in_hops);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let (stamp, rest) = lines[0].split_once(' ').unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
            "{stamp}"
        );
        assert_eq!(
            rest,
            " WARN telemetry::lines::tests: activity recorded attempt=2 name=\"Dune\" \
             trace_id=0af7651916cd43dd8448eb211c80319c event_id=e-1 consumer=book-added"
        );
        assert!(
            lines[1].ends_with("  INFO telemetry::lines::tests: outside"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn json_lines_carry_the_nearest_hop_fields() {
        let lines = lines(LogFormat::Json, false, log_in_hops);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let line: Value = serde_json::from_str(&lines[0]).unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(line["timestamp"].as_str().unwrap()).is_ok());
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["target"], "telemetry::lines::tests");
        assert_eq!(
            line["fields"],
            serde_json::json!({"message": "activity recorded", "attempt": 2, "name": "Dune"})
        );
        assert_eq!(
            line["span"],
            serde_json::json!({
                "trace_id": "0af7651916cd43dd8448eb211c80319c",
                "event_id": "e-1",
                "consumer": "book-added",
            })
        );
        let outside: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(outside["fields"]["message"], "outside");
        assert!(outside.get("span").is_none(), "{outside}");
    }

    #[test]
    fn text_lines_colour_the_level_only_when_told() {
        let coloured = lines(LogFormat::Text, true, || tracing::error!("boom"));
        assert!(coloured[0].contains("\x1b[31mERROR\x1b[0m"), "{coloured:?}");
        let plain = lines(LogFormat::Text, false, || tracing::error!("boom"));
        assert!(!plain[0].contains('\x1b'), "{plain:?}");
    }
}
