//! Typed configuration: command-line flags and `SANHAK_*` environment variables
//! first, then an optional `sanhak.toml`, then defaults that make `sanhak demo`
//! work on a fresh machine.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rand::RngCore as _;
use serde::Deserialize;

/// A secret value: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Settings shared by every subcommand. Each can be given as a flag, as the
/// environment variable named in `--help`, or in `sanhak.toml`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Settings {
    /// Configuration file (TOML). Missing is fine unless set explicitly.
    #[arg(long, env = "SANHAK_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Database URL: `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`.
    /// Default: `sqlite://<data-dir>/sanhak.db`.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Folder for the SQLite database, the generated session key and caches. Default: `./data`.
    #[arg(long, env = "SANHAK_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on. Default: `127.0.0.1:8080`.
    #[arg(long, env = "SANHAK_BIND", global = true)]
    pub bind: Option<SocketAddr>,
    /// Public base URL used in invitation links. Default: `http://<bind>`.
    #[arg(long, env = "SANHAK_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,
    /// Secret (at least 64 characters) that signs session cookies. Default: generated once and stored in `<data-dir>/session.key`.
    #[arg(
        long,
        env = "SANHAK_SESSION_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub session_secret: Option<String>,
    /// Mark cookies `Secure` (set this when serving behind TLS). Default: false.
    #[arg(long, env = "SANHAK_SECURE_COOKIES", global = true)]
    pub secure_cookies: Option<bool>,
    /// Trust the first address in `X-Forwarded-For` (set this behind a load balancer). Default: false.
    #[arg(long, env = "SANHAK_TRUST_PROXY", global = true)]
    pub trust_proxy: Option<bool>,
    /// Log filter in `tracing` EnvFilter syntax. Default: `info`.
    #[arg(long, env = "SANHAK_LOG", global = true)]
    pub log: Option<String>,
    /// Folder of lab packages. Default: `./labs`.
    #[arg(long, env = "SANHAK_LABS_DIR", global = true)]
    pub labs_dir: Option<PathBuf>,
    /// Seconds a runner's lease on a job lasts without a heartbeat; an expired
    /// lease puts the job back on the queue. Default: 30.
    #[arg(long, env = "SANHAK_LEASE_SECONDS", global = true)]
    pub lease_seconds: Option<u64>,
    /// Tries of a job whose runner vanishes before it is marked not gradable. Default: 3.
    #[arg(long, env = "SANHAK_MAX_ATTEMPTS", global = true)]
    pub max_attempts: Option<u32>,
    /// Jobs one student may have running at once in one course. Default: 1.
    #[arg(long, env = "SANHAK_MAX_RUNNING_PER_STUDENT", global = true)]
    pub max_running_per_student: Option<u32>,
    /// Jobs of a lab due within this many hours run first. Default: 6.
    #[arg(long, env = "SANHAK_DEADLINE_PRIORITY_HOURS", global = true)]
    pub deadline_priority_hours: Option<u32>,
    /// Scale of every lab's training steps (1.0 grades as the lab says; the
    /// demo uses less so a run takes seconds). Default: 1.0.
    #[arg(long, env = "SANHAK_JOB_STEP_SCALE", global = true)]
    pub job_step_scale: Option<f64>,
    /// GPU-seconds a CPU-only job is charged to its GPU budget per CPU-second
    /// it uses (GPU jobs are charged their measured GPU-seconds). 0 makes CPU
    /// jobs free. Default: 0.02 (50 CPU-seconds cost one GPU-second).
    #[arg(long, env = "SANHAK_CPU_CHARGE_RATE", global = true)]
    pub cpu_charge_rate: Option<f64>,
}

/// The optional `sanhak.toml`; every key mirrors a flag.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    database_url: Option<String>,
    data_dir: Option<PathBuf>,
    bind: Option<SocketAddr>,
    public_url: Option<String>,
    session_secret: Option<String>,
    secure_cookies: Option<bool>,
    trust_proxy: Option<bool>,
    log: Option<String>,
    labs_dir: Option<PathBuf>,
    lease_seconds: Option<u64>,
    max_attempts: Option<u32>,
    max_running_per_student: Option<u32>,
    deadline_priority_hours: Option<u32>,
    job_step_scale: Option<f64>,
    cpu_charge_rate: Option<f64>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: Secret,
    pub data_dir: PathBuf,
    pub bind: SocketAddr,
    pub public_url: String,
    pub session_secret: Secret,
    pub secure_cookies: bool,
    pub trust_proxy: bool,
    pub log: String,
    pub labs_dir: PathBuf,
    pub queue: QueueSettings,
}

/// Folders and log filter (see [`Settings::paths`]).
#[derive(Debug, Clone)]
pub struct Paths {
    pub data_dir: PathBuf,
    pub labs_dir: PathBuf,
    pub log: String,
}

/// The job queue's policy.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub lease_seconds: u64,
    pub max_attempts: u32,
    pub max_running_per_student: u32,
    pub deadline_priority_hours: u32,
    pub step_scale: f64,
    /// GPU-seconds charged per CPU-second of a CPU-only job.
    pub cpu_charge_rate: f64,
}

const DEFAULT_CONFIG_FILE: &str = "sanhak.toml";
const SESSION_KEY_FILE: &str = "session.key";
const MIN_SECRET_LEN: usize = 64;

impl Settings {
    /// The folders and log filter only, with no side effects (nothing is
    /// created): what `sanhak lab …` needs, also inside a sandbox.
    pub fn paths(&self) -> anyhow::Result<Paths> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                read_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => FileSettings::default(),
        };
        Ok(Paths {
            data_dir: pick(self.data_dir.clone(), file.data_dir)
                .unwrap_or_else(|| PathBuf::from("data")),
            labs_dir: pick(self.labs_dir.clone(), file.labs_dir)
                .unwrap_or_else(|| PathBuf::from("labs")),
            log: pick(self.log.clone(), file.log).unwrap_or_else(|| "info".to_owned()),
        })
    }

    /// Resolves flags, environment, file and defaults into a [`Config`],
    /// creating the data folder and the stored session key when needed.
    pub fn resolve(&self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                read_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => FileSettings::default(),
        };
        let data_dir =
            pick(self.data_dir.clone(), file.data_dir).unwrap_or_else(|| PathBuf::from("data"));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating data folder {}", data_dir.display()))?;
        let database_url = pick(self.database_url.clone(), file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}/sanhak.db", data_dir.display()));
        let bind = pick(self.bind, file.bind).unwrap_or_else(|| ([127, 0, 0, 1], 8080).into());
        let public_url = pick(self.public_url.clone(), file.public_url)
            .unwrap_or_else(|| format!("http://{bind}"))
            .trim_end_matches('/')
            .to_owned();
        let session_secret = match pick(self.session_secret.clone(), file.session_secret) {
            Some(s) if s.len() >= MIN_SECRET_LEN => s,
            Some(_) => {
                anyhow::bail!("session_secret must be at least {MIN_SECRET_LEN} characters long")
            }
            None => stored_secret(&data_dir.join(SESSION_KEY_FILE))?,
        };
        Ok(Config {
            database_url: Secret::new(database_url),
            data_dir,
            bind,
            public_url,
            session_secret: Secret::new(session_secret),
            secure_cookies: pick(self.secure_cookies, file.secure_cookies).unwrap_or(false),
            trust_proxy: pick(self.trust_proxy, file.trust_proxy).unwrap_or(false),
            log: pick(self.log.clone(), file.log).unwrap_or_else(|| "info".to_owned()),
            labs_dir: pick(self.labs_dir.clone(), file.labs_dir)
                .unwrap_or_else(|| PathBuf::from("labs")),
            queue: QueueSettings {
                lease_seconds: pick(self.lease_seconds, file.lease_seconds)
                    .unwrap_or(30)
                    .max(1),
                max_attempts: pick(self.max_attempts, file.max_attempts)
                    .unwrap_or(3)
                    .max(1),
                max_running_per_student: pick(
                    self.max_running_per_student,
                    file.max_running_per_student,
                )
                .unwrap_or(1)
                .max(1),
                deadline_priority_hours: pick(
                    self.deadline_priority_hours,
                    file.deadline_priority_hours,
                )
                .unwrap_or(6),
                step_scale: match pick(self.job_step_scale, file.job_step_scale) {
                    Some(s) if s.is_finite() && s > 0.0 && s <= 1.0 => s,
                    Some(_) => anyhow::bail!("job_step_scale must be in (0, 1]"),
                    None => 1.0,
                },
                cpu_charge_rate: match pick(self.cpu_charge_rate, file.cpu_charge_rate) {
                    Some(r) if r.is_finite() && (0.0..=1000.0).contains(&r) => r,
                    Some(_) => anyhow::bail!("cpu_charge_rate must be from 0 to 1000"),
                    None => crate::db::jobs::DEFAULT_CPU_RATE,
                },
            },
        })
    }
}

fn pick<T>(first: Option<T>, second: Option<T>) -> Option<T> {
    first.or(second)
}

fn read_file(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading configuration file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in configuration file {}", path.display()))
}

/// Reads the session key stored in the data folder, generating it on first use.
fn stored_secret(path: &Path) -> anyhow::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim().to_owned();
        if existing.len() >= MIN_SECRET_LEN {
            return Ok(existing);
        }
    }
    let mut bytes = [0u8; 64];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    write_private(path, &secret).with_context(|| format!("storing {}", path.display()))?;
    Ok(secret)
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            data_dir: Some(dir.path().to_path_buf()),
            database_url: Some("postgres://admin:hunter2@db/sanhak".into()),
            ..Settings::default()
        };
        let config = settings.resolve().unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains(config.session_secret.expose()), "{shown}");
    }

    #[test]
    fn session_secret_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            data_dir: Some(dir.path().to_path_buf()),
            ..Settings::default()
        };
        let first = settings.resolve().unwrap().session_secret;
        let second = settings.resolve().unwrap().session_secret;
        assert_eq!(first, second);
        assert!(first.expose().len() >= MIN_SECRET_LEN);
    }

    #[test]
    fn short_configured_secret_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            data_dir: Some(dir.path().to_path_buf()),
            session_secret: Some("short".into()),
            ..Settings::default()
        };
        let err = settings.resolve().unwrap_err().to_string();
        assert!(err.contains("at least 64"), "{err}");
    }
}
