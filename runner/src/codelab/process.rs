//! Running an untrusted submission binary: a wall-clock limit, capped
//! output, and stdout read as JSON-lines events that are only ever displayed.
//!
//! This is the unsandboxed path, for the lab author's own code on their
//! machine (`sanhak lab check` where bwrap is missing); student code runs in
//! the sandbox ([`super::sandboxed`]), which reports through the same
//! [`ProcessOutcome`]: a child that cannot hang the grader or flood its
//! memory, and an outcome that says clearly whether the program finished,
//! failed, crashed or ran out of time.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::train::events::Event;

/// Longest stdout line kept (longer lines are cut and ignored as events).
pub const MAX_LINE_BYTES: u64 = 64 * 1024;
/// Stdout lines kept at most (the rest is read and dropped).
pub const MAX_EVENTS: usize = 100_000;
/// Bytes of stderr kept (the tail).
pub const STDERR_TAIL_BYTES: usize = 4096;

/// How a child process ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ExitKind {
    /// Exit status 0.
    Success,
    /// A non-zero exit status.
    Failed { code: i32 },
    /// Killed by a signal (a crash: abort, segfault, out of memory).
    Crashed { signal: Option<i32> },
    /// Ran past its wall-clock limit and was killed.
    TimedOut { limit_s: u64 },
    /// Stopped by the sandbox at another limit (memory, processes, output,
    /// disk); `reason` says which, for students.
    Stopped { reason: String },
}

/// What a finished child left behind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessOutcome {
    pub exit: ExitKind,
    /// Events parsed from stdout (display only).
    pub events: Vec<Event>,
    /// Stdout lines that were not events.
    pub other_lines: usize,
    /// The last bytes of stderr, lossily decoded.
    pub stderr_tail: String,
    pub wall_s: f64,
    /// Peak resident memory of the process (VmHWM, sampled while it ran), in MiB.
    pub peak_rss_mib: Option<f64>,
}

impl ProcessOutcome {
    /// A one-line description of a failure for students, with stderr's last line.
    pub fn describe_failure(&self) -> String {
        let last = self
            .stderr_tail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default();
        match &self.exit {
            ExitKind::Success => "the program finished".into(),
            ExitKind::Failed { code } => format!("your program exited with status {code}{last}"),
            ExitKind::Crashed { signal } => match signal {
                Some(s) => format!("your program crashed (signal {s}){last}"),
                None => format!("your program crashed{last}"),
            },
            ExitKind::TimedOut { limit_s } => {
                format!("your program ran past its time limit of {limit_s} s and was stopped")
            }
            ExitKind::Stopped { reason } => format!("your program {reason}{last}"),
        }
    }
}

/// How long to wait for the pipes to close after the program ended.
const DRAIN: Duration = Duration::from_secs(2);

/// Kill the process group `pgid` (the program and anything it started).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The peak resident memory (VmHWM) of a running process, in MiB.
fn vm_hwm_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn exit_kind(status: ExitStatus) -> ExitKind {
    use std::os::unix::process::ExitStatusExt;
    match status.code() {
        Some(0) => ExitKind::Success,
        Some(code) => ExitKind::Failed { code },
        None => ExitKind::Crashed {
            signal: status.signal(),
        },
    }
}

/// Run `program args…` with a wall-clock limit. The program gets an empty
/// environment (nothing of the grader's leaks to it) except
/// `RAYON_NUM_THREADS = threads`, which fixes candle's thread count and with
/// it the order of floating-point sums, so grades do not depend on the
/// machine's core count. `on_event` sees each event as it arrives. `Err` only
/// for infrastructure failures (the program could not be started);
/// everything the program does is in the outcome.
pub fn run_with_limit(
    program: &Path,
    args: &[String],
    limit: Duration,
    threads: u32,
    on_event: &mut dyn FnMut(&Event),
) -> std::io::Result<ProcessOutcome> {
    let t0 = Instant::now();
    use std::os::unix::process::CommandExt;
    // Its own process group, so that anything it starts is stopped with it.
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("RAYON_NUM_THREADS", threads.max(1).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("no stderr pipe"))?;
    let (tx, rx) = mpsc::channel::<Option<Event>>();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut kept = 0usize;
        loop {
            let mut line = Vec::new();
            let n = match (&mut reader)
                .take(MAX_LINE_BYTES)
                .read_until(b'\n', &mut line)
            {
                Ok(n) => n,
                Err(_) => break,
            };
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                // An over-long line: drop the rest of it.
                let mut sink = Vec::new();
                if reader.read_until(b'\n', &mut sink).is_err() {
                    break;
                }
                let _ = tx.send(None);
                continue;
            }
            if kept >= MAX_EVENTS {
                continue;
            }
            kept += 1;
            let ev = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| Event::from_json_line(l).ok());
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    let (err_tx, err_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > STDERR_TAIL_BYTES {
                        tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                    }
                }
            }
        }
        let _ = err_tx.send(String::from_utf8_lossy(&tail).into_owned());
    });
    let mut events = Vec::new();
    let mut other_lines = 0;
    let mut take = |msg: Option<Event>, events: &mut Vec<Event>| match msg {
        Some(e) => {
            on_event(&e);
            events.push(e);
        }
        None => other_lines += 1,
    };
    let pid = child.id();
    let mut peak: Option<f64> = None;
    let exit = loop {
        if let Some(m) = vm_hwm_mib(pid) {
            peak = Some(peak.map_or(m, |p| p.max(m)));
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(msg) => take(msg, &mut events),
            Err(mpsc::RecvTimeoutError::Timeout) | Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if let Some(status) = child.try_wait()? {
            break exit_kind(status);
        }
        if t0.elapsed() > limit {
            kill_group(pid);
            let _ = child.kill();
            let _ = child.wait();
            break ExitKind::TimedOut {
                limit_s: limit.as_secs(),
            };
        }
    };
    // Whatever the program left running goes with it; then the pipes close.
    kill_group(pid);
    let drain_until = Instant::now() + DRAIN;
    while let Ok(msg) = rx.recv_timeout(drain_until.saturating_duration_since(Instant::now())) {
        take(msg, &mut events);
    }
    let stderr_tail = err_rx
        .recv_timeout(drain_until.saturating_duration_since(Instant::now()))
        .unwrap_or_default();
    Ok(ProcessOutcome {
        exit,
        events,
        other_lines,
        stderr_tail,
        wall_s: t0.elapsed().as_secs_f64(),
        peak_rss_mib: peak,
    })
}
