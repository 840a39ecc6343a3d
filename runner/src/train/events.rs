//! Training events, streamed as JSON lines.
//!
//! A training program reports through an [`EventSink`]. In a sandboxed child
//! the sink is a [`JsonLinesSink`] on stdout; the runner service parses each
//! line back with [`Event::from_json_line`] and forwards it to the app.

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

/// One event of a run. Serialised with a `"event"` tag, one JSON object a line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run started.
    Started {
        program: String,
        seed: u64,
        total_steps: u64,
        trainable_params: u64,
    },
    /// One optimizer step.
    Step {
        step: u64,
        loss: f64,
        lr: f64,
        /// Global gradient norm before clipping.
        grad_norm: f64,
        elapsed_s: f64,
    },
    /// An evaluation on the validation split.
    Eval {
        step: u64,
        metrics: BTreeMap<String, f64>,
        elapsed_s: f64,
    },
    /// Early stopping ended the run.
    EarlyStop {
        step: u64,
        best_step: u64,
        best_metric: f64,
    },
    /// A checkpoint was written (path relative to the output folder).
    Checkpoint { path: String, bytes: u64 },
    /// A free-form message.
    Log { message: String },
    /// The run ended.
    Finished { steps: u64, elapsed_s: f64 },
}

impl Event {
    /// One JSON line (without the newline).
    pub fn to_json_line(&self) -> String {
        // Serialising this enum cannot fail: all keys are strings and all
        // values plain numbers or strings. Non-finite floats become null.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"event\":\"log\",\"message\":\"unserialisable event: {e}\"}}")
        })
    }

    /// Parse one line written by [`JsonLinesSink`].
    pub fn from_json_line(line: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(line.trim_end())
    }
}

/// Where a program's events go.
pub trait EventSink {
    fn emit(&mut self, event: Event);
}

/// Discards events.
#[derive(Debug, Default)]
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&mut self, _event: Event) {}
}

/// Keeps events in memory.
#[derive(Debug, Default)]
pub struct VecSink {
    pub events: Vec<Event>,
}

impl EventSink for VecSink {
    fn emit(&mut self, event: Event) {
        self.events.push(event);
    }
}

/// Writes one JSON object per line and flushes after each, so a parent
/// process sees events as they happen. Write errors are logged, not fatal:
/// a closed pipe must not kill training.
pub struct JsonLinesSink<W: Write> {
    out: W,
    failed: bool,
}

impl<W: Write> JsonLinesSink<W> {
    pub fn new(out: W) -> Self {
        Self { out, failed: false }
    }
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> EventSink for JsonLinesSink<W> {
    fn emit(&mut self, event: Event) {
        if self.failed {
            return;
        }
        let line = event.to_json_line();
        if let Err(e) = writeln!(self.out, "{line}").and_then(|_| self.out.flush()) {
            tracing::warn!(error = %e, "event sink closed; further events are dropped");
            self.failed = true;
        }
    }
}

/// Sends each event to two sinks.
pub struct TeeSink<'a> {
    pub first: &'a mut dyn EventSink,
    pub second: &'a mut dyn EventSink,
}

impl EventSink for TeeSink<'_> {
    fn emit(&mut self, event: Event) {
        self.first.emit(event.clone());
        self.second.emit(event);
    }
}

/// Calls a closure for each event (progress bars, channels).
pub struct FnSink<F: FnMut(&Event)>(pub F);

impl<F: FnMut(&Event)> EventSink for FnSink<F> {
    fn emit(&mut self, event: Event) {
        (self.0)(&event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_round_trip() {
        let mut sink = JsonLinesSink::new(Vec::new());
        let events = vec![
            Event::Started {
                program: "image-classifier".into(),
                seed: 7,
                total_steps: 10,
                trainable_params: 123,
            },
            Event::Step {
                step: 1,
                loss: 1.5,
                lr: 1e-3,
                grad_norm: 2.0,
                elapsed_s: 0.1,
            },
            Event::Eval {
                step: 1,
                metrics: BTreeMap::from([("accuracy".to_string(), 0.5)]),
                elapsed_s: 0.2,
            },
            Event::Finished {
                steps: 1,
                elapsed_s: 0.3,
            },
        ];
        for e in &events {
            sink.emit(e.clone());
        }
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[1].starts_with("{\"event\":\"step\""), "{}", lines[1]);
        let back: Vec<Event> = lines
            .iter()
            .map(|l| Event::from_json_line(l).unwrap())
            .collect();
        assert_eq!(back, events);
    }
}
