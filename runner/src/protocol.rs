//! The runner protocol: the JSON bodies a `sanhak worker` and the app exchange
//! over HTTP under [`API_PREFIX`]. `runner/PROTOCOL.md` describes the
//! exchange; these types are its single definition, used by both sides.

use serde::{Deserialize, Serialize};

/// Where the runner API lives on the app.
pub const API_PREFIX: &str = "/api/runner/v1";
/// Prefix of runner tokens (`sanhak runner add` prints one, once).
pub const TOKEN_PREFIX: &str = "shr_";

/// One GPU of a runner host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub memory_mb: u64,
}

/// `POST /register`: what a runner offers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Register {
    /// A name for people (the host name by default).
    pub name: String,
    /// The runner's `sanhak` version.
    pub version: String,
    pub gpus: Vec<Gpu>,
    pub cpu_slots: u32,
    /// e.g. `cuda`, `cpu-only`, `bwrap`.
    pub labels: Vec<String>,
}

/// The reply to [`Register`]: the timings the runner must keep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    pub runner_id: String,
    /// A lease lasts this long after each claim or heartbeat.
    pub lease_seconds: u64,
    /// Send a heartbeat at least this often.
    pub heartbeat_seconds: u64,
    /// The longest a claim waits for work before answering 204.
    pub max_wait_ms: u64,
}

/// `POST /claim`: the capacity that is free right now, and how long to wait.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claim {
    pub free_cpu_slots: u32,
    /// Free memory of each GPU, in MB (any order).
    pub free_gpu_memory_mb: Vec<u64>,
    /// Long-poll: wait up to this long for a job (capped by the server).
    pub wait_ms: u64,
}

/// What a job needs from a runner.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU slots (threads) for CPU jobs; GPU jobs also take one.
    pub cpu_slots: u32,
    /// GPUs the job needs (0 for a CPU job).
    pub gpu_count: u32,
    /// GPU memory it declares, per GPU, in MB. Several jobs share a GPU when
    /// their declarations fit; a job that exceeds its own fails alone.
    pub gpu_memory_mb: u64,
    /// Wall-clock limit of the whole job.
    pub wall_seconds: u64,
    /// Memory limit of the sandbox, in MB.
    pub memory_mb: u64,
}

/// Recipe (TOML) or code (a Rust source file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmissionKind {
    Recipe,
    Code,
}

impl SubmissionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubmissionKind::Recipe => "recipe",
            SubmissionKind::Code => "code",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "recipe" => Some(SubmissionKind::Recipe),
            "code" => Some(SubmissionKind::Code),
            _ => None,
        }
    }
}

/// The lab package a job runs against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabRef {
    pub id: String,
    pub version: String,
    /// Content hash of the whole package ([`LabPackage::hash`]).
    pub package_hash: String,
}

/// A claimed job: the reply to [`Claim`] when there is work.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub job_id: String,
    /// This claim's lease; every report about the job carries it.
    pub lease: String,
    /// 1 for the first try, 2 after a requeue, …
    pub attempt: u32,
    pub lab: LabRef,
    pub kind: SubmissionKind,
    /// The recipe TOML or the Rust source.
    pub content: String,
    pub content_hash: String,
    pub resources: Resources,
    /// Scale of the lab's step counts (1.0 in production; small in demos and tests).
    pub step_scale: f64,
}

/// Phase a running job reports in its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Grading,
}

/// `POST /jobs/{id}/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub lease: String,
    pub phase: Phase,
}

/// The reply to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The student or staff cancelled the job: stop it and report nothing more.
    pub cancel: bool,
}

/// One event from a job: a training event (`kind = "event"`, `data` is the
/// runner's JSON-lines event) or a log line (`kind = "log"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Numbered from 0 by the runner; the app ignores numbers it already has.
    pub seq: u64,
    pub at_ms: i64,
    pub kind: String,
    pub data: serde_json::Value,
}

/// `POST /jobs/{id}/events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventBatch {
    pub lease: String,
    pub events: Vec<JobEvent>,
}

/// What the job cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    pub gpu_seconds: f64,
}

/// A file the job produced, by content hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
}

/// How grading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Scored on the hidden split.
    Graded,
    /// The submission's output was refused: zero points, with the reason.
    Rejected,
    /// Not the submission's fault and not gradable: no points, no attempt used.
    NotGradable,
}

/// `POST /jobs/{id}/complete`: the grade.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Complete {
    pub lease: String,
    pub outcome: Outcome,
    /// Points (absent when not gradable).
    pub points: Option<f64>,
    pub max_points: f64,
    /// The metric on the whole hidden split (staff only).
    pub metric: Option<f64>,
    /// The metric on the public part (shown to the student and on the leaderboard).
    pub public_metric: Option<f64>,
    /// A one-line summary for the student.
    pub message: String,
    /// The grader's full report (feedback, per-class scores, curve).
    pub report: serde_json::Value,
    pub artifacts: Vec<Artifact>,
    pub usage: Usage,
}

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The submission crashed, ran out of time or memory, or produced nothing:
    /// the job fails and the attempt counts.
    Submission,
    /// The runner or the host failed: the job is retried elsewhere.
    Infrastructure,
}

/// `POST /jobs/{id}/fail`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fail {
    pub lease: String,
    pub fault: Fault,
    /// For the student (submission faults) or for operators (infrastructure).
    pub message: String,
    pub usage: Usage,
}

/// The reply to a complete or fail report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportReply {
    /// False for a duplicate of a report already recorded.
    pub accepted: bool,
    /// The job's state after the report.
    pub state: String,
}

/// One file of a lab package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabFile {
    /// Relative path with `/` separators.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    /// Hidden splits and the reference solution: for the trusted grader only,
    /// never placed in a sandbox.
    pub trusted: bool,
}

/// `GET /labs/{id}`: a lab package as a list of content-addressed files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabPackage {
    pub id: String,
    pub version: String,
    pub hash: String,
    pub files: Vec<LabFile>,
}

impl LabPackage {
    /// The package hash: SHA-256 over every file's path and content hash, in
    /// path order. Any change to any file changes it.
    pub fn hash_of(files: &[LabFile]) -> String {
        use sha2::{Digest as _, Sha256};
        let mut sorted: Vec<&LabFile> = files.iter().collect();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        let mut h = Sha256::new();
        for f in sorted {
            h.update(f.path.as_bytes());
            h.update([0]);
            h.update(f.sha256.as_bytes());
            h.update([b'\n']);
        }
        hex(&h.finalize())
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of bytes, as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, sha: &str) -> LabFile {
        LabFile {
            path: path.into(),
            sha256: sha.into(),
            bytes: 1,
            trusted: false,
        }
    }

    #[test]
    fn package_hash_depends_on_paths_and_contents_not_order() {
        let a = vec![file("a", "1"), file("b", "2")];
        let b = vec![file("b", "2"), file("a", "1")];
        assert_eq!(LabPackage::hash_of(&a), LabPackage::hash_of(&b));
        let c = vec![file("a", "1"), file("b", "3")];
        assert_ne!(LabPackage::hash_of(&a), LabPackage::hash_of(&c));
        let d = vec![file("a", "1"), file("c", "2")];
        assert_ne!(LabPackage::hash_of(&a), LabPackage::hash_of(&d));
    }

    #[test]
    fn submission_kind_round_trips() {
        for k in [SubmissionKind::Recipe, SubmissionKind::Code] {
            assert_eq!(SubmissionKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(SubmissionKind::parse("python"), None);
    }
}
