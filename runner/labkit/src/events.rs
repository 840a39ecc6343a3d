//! Progress events, one JSON object a line on stdout.
//!
//! The runner forwards these lines to the browser as a live loss curve. They
//! are for display only: the grader never trusts anything a submission
//! prints. The format is the one Sanhak's own training programs use (an
//! `"event"` tag in snake case).
//!
//! ```
//! use labkit::events::{Event, Reporter};
//!
//! let mut reporter = Reporter::new(Vec::new());
//! reporter.emit(&Event::Step { step: 1, loss: 0.69, lr: 1e-3, grad_norm: 0.5, elapsed_s: 0.01 });
//! let text = String::from_utf8(reporter.into_inner()).unwrap();
//! assert!(text.starts_with(r#"{"event":"step","step":1,"loss":0.69"#));
//! assert!(text.ends_with('\n'));
//! ```

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

/// One event of a run.
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
        /// Global gradient norm of the trainable variables.
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
    /// One JSON line, without the newline.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"event\":\"log\",\"message\":\"unserialisable event: {e}\"}}")
        })
    }
}

/// Writes events as JSON lines and flushes after each, so the runner sees
/// them as they happen. A closed output is not fatal: later events are dropped.
#[derive(Debug)]
pub struct Reporter<W: Write> {
    out: W,
    failed: bool,
}

impl Reporter<std::io::Stdout> {
    /// A reporter on standard output.
    pub fn stdout() -> Self {
        Reporter::new(std::io::stdout())
    }
}

impl<W: Write> Reporter<W> {
    pub fn new(out: W) -> Self {
        Self { out, failed: false }
    }

    /// Write one event.
    pub fn emit(&mut self, event: &Event) {
        if self.failed {
            return;
        }
        let line = event.to_json_line();
        if writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .is_err()
        {
            self.failed = true;
        }
    }

    /// A [`Event::Log`] message.
    pub fn log(&mut self, message: impl Into<String>) {
        self.emit(&Event::Log {
            message: message.into(),
        });
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}
