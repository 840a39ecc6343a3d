//! `sanhak worker`: a runner that serves one host's CPUs (and GPUs) over the
//! runner protocol (`runner/PROTOCOL.md`). It registers, long-polls for jobs
//! that fit its free capacity, and for each job: fetches the lab package by
//! content hash, trains in the sandbox, grades outside it, and reports, with
//! heartbeats and batched events while it runs. It survives the app
//! restarting: every call is retried until the app answers again.
//!
//! `sanhak demo` runs one in-process over loopback.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::StatusCode;
use sanhak_runner::protocol::{self, JobEvent, JobSpec, Phase, API_PREFIX};
use sanhak_runner::service::gpu::{self, GpuJob, GpuLease, GpuSetting};
use sanhak_runner::service::{
    Executor, GpuAssignment, GpuPool, GpuWatch, HostGpu, JobControl, JobEnd, LabCache, LabDirs,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::Secret;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Base URL of the app, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    pub token: Secret,
    pub name: String,
    pub cpu_slots: u32,
    /// The GPUs offered ([`gpu_setup`]); empty for a CPU-only runner.
    pub gpus: Vec<HostGpu>,
    pub labels: Vec<String>,
    /// Lab packages cached by content hash.
    pub cache_dir: PathBuf,
    pub executor: Executor,
}

/// Events sent per batch, and how long a batch waits to fill.
const EVENT_BATCH: usize = 200;
const EVENT_FLUSH: Duration = Duration::from_millis(200);
/// Wait between retries while the app is unreachable.
const RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
enum CallError {
    /// The app answered with this status (and message).
    #[error("the app answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    /// The app could not be reached (it may be restarting).
    #[error("the app is unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

impl Api {
    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<Option<R>, CallError> {
        let r = self
            .http
            .post(format!("{}{API_PREFIX}{path}", self.base))
            .bearer_auth(self.token.expose())
            .timeout(timeout)
            .json(body)
            .send()
            .await?;
        Self::decode(r).await
    }

    async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, CallError> {
        let r = self
            .http
            .get(format!("{}{API_PREFIX}{path}", self.base))
            .bearer_auth(self.token.expose())
            .timeout(Duration::from_secs(300))
            .send()
            .await?;
        let status = r.status();
        if !status.is_success() {
            let body = r.text().await.unwrap_or_default();
            return Err(CallError::Status { status, body });
        }
        Ok(r.bytes().await?.to_vec())
    }

    async fn decode<R: DeserializeOwned>(r: reqwest::Response) -> Result<Option<R>, CallError> {
        let status = r.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            let body = r.text().await.unwrap_or_default();
            return Err(CallError::Status { status, body });
        }
        Ok(Some(r.json().await?))
    }

    /// Retries a call while the app is unreachable or failing (5xx), up to `patience`.
    async fn post_retrying<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        patience: Duration,
    ) -> Result<Option<R>, CallError> {
        let until = tokio::time::Instant::now() + patience;
        loop {
            match self.post(path, body, Duration::from_secs(30)).await {
                Err(CallError::Unreachable(e)) if tokio::time::Instant::now() < until => {
                    tracing::debug!(error = %e, path, "app unreachable; retrying");
                }
                Err(CallError::Status { status, .. })
                    if status.is_server_error() && tokio::time::Instant::now() < until => {}
                other => return other,
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Runs the worker until `shutdown` resolves (or the token is refused).
pub async fn run(
    config: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::select! {
        r = serve(config) => r,
        () = shutdown => Ok(()),
    }
}

async fn serve(config: WorkerConfig) -> anyhow::Result<()> {
    let api = Api {
        http: reqwest::Client::builder()
            .build()
            .context("building the HTTP client")?,
        base: config.server.trim_end_matches('/').to_owned(),
        token: config.token.clone(),
    };
    let executor = config.executor.clone();
    match tokio::task::spawn_blocking(move || executor.clean_work_root()).await? {
        Ok(0) => {}
        Ok(n) => tracing::warn!(folders = n, "removed work folders left by an earlier run"),
        Err(e) => tracing::warn!(error = %e, "could not clean the work folder root"),
    }
    let config = Arc::new(config);
    let free_cpu = Arc::new(AtomicU32::new(config.cpu_slots));
    let freed = Arc::new(tokio::sync::Notify::new());
    let gpus = GpuPool::new(config.gpus.clone());
    let watch = if config.gpus.is_empty() {
        None
    } else {
        let watch = Arc::new(GpuWatch::host());
        watch
            .clone()
            .spawn(gpu::WATCH_POLL)
            .context("starting the GPU memory watchdog")?;
        Some(watch)
    };
    let registration = protocol::Register {
        name: config.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        gpus: config.gpus.iter().map(|g| g.gpu.clone()).collect(),
        cpu_slots: config.cpu_slots,
        labels: config.labels.clone(),
    };
    'register: loop {
        let registered: protocol::Registered = match api
            .post("/register", &registration, Duration::from_secs(30))
            .await
        {
            Ok(Some(r)) => r,
            Ok(None) => anyhow::bail!("the app answered the registration with no body"),
            Err(CallError::Status { status, body })
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN =>
            {
                anyhow::bail!("the app refused this runner's token ({status}): {body}")
            }
            Err(e) => {
                tracing::warn!(error = %e, "registering; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        tracing::info!(runner = %registered.runner_id, server = %api.base, "worker registered");
        loop {
            let free = free_cpu.load(Ordering::SeqCst);
            if free == 0 {
                freed.notified().await;
                continue;
            }
            let claim = protocol::Claim {
                free_cpu_slots: free,
                // Declared memory not yet reserved, per GPU: the app only
                // hands out a GPU job that fits.
                free_gpu_memory_mb: gpus.free_memory_mb(),
                wait_ms: registered.max_wait_ms,
            };
            let timeout = Duration::from_millis(registered.max_wait_ms) + Duration::from_secs(10);
            match api.post::<_, JobSpec>("/claim", &claim, timeout).await {
                Ok(Some(job)) => {
                    let slots = job.resources.cpu_slots.min(free);
                    free_cpu.fetch_sub(slots, Ordering::SeqCst);
                    // Both come back when the task ends, even by a panic.
                    let cpu = SlotGuard {
                        free: free_cpu.clone(),
                        slots,
                        freed: freed.clone(),
                    };
                    let lease = gpus.reserve(job.resources.gpu_count, job.resources.gpu_memory_mb);
                    let (api, config, watch) = (api.clone(), config.clone(), watch.clone());
                    let heartbeat = Duration::from_secs(registered.heartbeat_seconds.max(1));
                    tokio::spawn(async move {
                        let _cpu = cpu;
                        let id = job.job_id.clone();
                        let result = match lease {
                            Some(lease) => {
                                run_job(&api, &config, job, heartbeat, &lease, watch.as_deref())
                                    .await
                            }
                            None => refuse_unfit(&api, &config, job).await,
                        };
                        if let Err(e) = result {
                            tracing::error!(job = %id, error = %e, "job ended without a report");
                        }
                    });
                }
                Ok(None) => {}
                Err(CallError::Status { status, body })
                    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN =>
                {
                    anyhow::bail!("the app refused this runner's token ({status}): {body}")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming; registering again");
                    tokio::time::sleep(RETRY).await;
                    continue 'register;
                }
            }
        }
    }
}

/// Fetches (or reuses) a lab package laid out for sandbox and grader.
async fn lab_dirs(api: &Api, config: &WorkerConfig, job: &JobSpec) -> anyhow::Result<LabDirs> {
    let cache = LabCache::new(&config.cache_dir);
    let bytes = api
        .get_bytes(&format!(
            "/labs/{}?hash={}",
            job.lab.id, job.lab.package_hash
        ))
        .await
        .context("fetching the lab package listing")?;
    let package: protocol::LabPackage =
        serde_json::from_slice(&bytes).context("reading the lab package listing")?;
    if package.hash != job.lab.package_hash {
        anyhow::bail!(
            "lab {} changed on the app since the job was submitted (package {} now, {} then)",
            job.lab.id,
            package.hash,
            job.lab.package_hash
        );
    }
    cache.check(&package)?;
    if let Some(dirs) = cache.ready(&package) {
        return Ok(dirs);
    }
    for file in cache.missing(&package) {
        let bytes = api
            .get_bytes(&format!("/labs/{}/files/{}", job.lab.id, file.sha256))
            .await
            .with_context(|| format!("fetching {}", file.path))?;
        cache.put_blob(file, &bytes)?;
    }
    let dirs = tokio::task::spawn_blocking(move || cache.materialize(&package)).await??;
    Ok(dirs)
}

/// CPU slots a job holds; given back (and the claim loop woken) on drop.
struct SlotGuard {
    free: Arc<AtomicU32>,
    slots: u32,
    freed: Arc<tokio::sync::Notify>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.free.fetch_add(self.slots, Ordering::SeqCst);
        // notify_one keeps a permit if the loop is not waiting yet.
        self.freed.notify_one();
    }
}

/// A claimed job whose GPUs this runner cannot give (it offered the memory,
/// so this only happens if the app and the runner disagree): handed back as
/// an infrastructure fault, so it runs elsewhere.
async fn refuse_unfit(api: &Api, config: &WorkerConfig, job: JobSpec) -> anyhow::Result<()> {
    let r = &job.resources;
    let message = format!(
        "runner {} has no {} GPU(s) with {} MB free for this job",
        config.name, r.gpu_count, r.gpu_memory_mb
    );
    tracing::warn!(job = %job.job_id, %message, "refusing a claimed job");
    let fail = protocol::Fail {
        lease: job.lease.clone(),
        fault: protocol::Fault::Infrastructure,
        message,
        usage: protocol::Usage::default(),
    };
    api.post_retrying::<_, protocol::ReportReply>(
        &format!("/jobs/{}/fail", job.job_id),
        &fail,
        Duration::from_secs(600),
    )
    .await?;
    Ok(())
}

async fn run_job(
    api: &Api,
    config: &Arc<WorkerConfig>,
    job: JobSpec,
    heartbeat_every: Duration,
    gpu_lease: &GpuLease,
    watch: Option<&GpuWatch>,
) -> anyhow::Result<()> {
    let job_path = format!("/jobs/{}", job.job_id);
    let lease = job.lease.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let assigned = gpu_lease.gpus();
    if !assigned.is_empty() {
        let indices: Vec<u32> = assigned.iter().map(|g| g.gpu.index).collect();
        tracing::info!(job = %job.job_id, gpus = ?indices, memory_mb = gpu_lease.memory_mb(),
            "GPU memory reserved");
    }
    let watched = (!assigned.is_empty()).then(|| {
        Arc::new(GpuJob::new(
            &job.job_id,
            gpu_lease.memory_mb(),
            assigned.len() as u32,
            stop.clone(),
        ))
    });
    if let (Some(w), Some(j)) = (watch, &watched) {
        w.register(j);
    }
    let assignment = GpuAssignment {
        gpus: assigned,
        watch: watched,
    };
    let (phase_tx, mut phase_rx) = mpsc::unbounded_channel::<Phase>();
    let (event_tx, mut event_rx) = mpsc::unbounded_channel::<JobEvent>();

    // Heartbeats: at once on each phase change, and every `heartbeat_every`.
    let hb = {
        let (api, path, lease, stop) = (api.clone(), job_path.clone(), lease.clone(), stop.clone());
        tokio::spawn(async move {
            let mut phase = Phase::Running;
            let mut tick = tokio::time::interval(heartbeat_every);
            loop {
                tokio::select! {
                    p = phase_rx.recv() => match p { Some(p) => phase = p, None => return },
                    _ = tick.tick() => {}
                }
                let body = protocol::Heartbeat {
                    lease: lease.clone(),
                    phase,
                };
                match api
                    .post::<_, protocol::HeartbeatReply>(
                        &format!("{path}/heartbeat"),
                        &body,
                        Duration::from_secs(10),
                    )
                    .await
                {
                    Ok(Some(reply)) if reply.cancel => {
                        tracing::info!(job = %path, "cancelled by the app");
                        stop.store(true, Ordering::SeqCst);
                        return;
                    }
                    Ok(_) => {}
                    Err(CallError::Status { status, .. }) if status == StatusCode::CONFLICT => {
                        tracing::warn!(job = %path, "lease lost; stopping the job");
                        stop.store(true, Ordering::SeqCst);
                        return;
                    }
                    // Unreachable: the app may be restarting; the lease covers a few misses.
                    Err(e) => tracing::warn!(job = %path, error = %e, "heartbeat failed"),
                }
            }
        })
    };

    // Events: batched and posted in order.
    let events = {
        let (api, path, lease, stop) = (api.clone(), job_path.clone(), lease.clone(), stop.clone());
        tokio::spawn(async move {
            let mut open = true;
            while open {
                let mut batch = Vec::new();
                match event_rx.recv().await {
                    Some(e) => batch.push(e),
                    None => break,
                }
                let until = tokio::time::Instant::now() + EVENT_FLUSH;
                while batch.len() < EVENT_BATCH {
                    match tokio::time::timeout_at(until, event_rx.recv()).await {
                        Ok(Some(e)) => batch.push(e),
                        Ok(None) => {
                            open = false;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let body = protocol::EventBatch {
                    lease: lease.clone(),
                    events: batch,
                };
                match api
                    .post_retrying::<_, serde_json::Value>(
                        &format!("{path}/events"),
                        &body,
                        Duration::from_secs(60),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(CallError::Status { status, .. }) if status == StatusCode::CONFLICT => {
                        stop.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => tracing::warn!(job = %path, error = %e, "dropping an event batch"),
                }
            }
        })
    };

    let end = match lab_dirs(api, config, &job).await {
        Ok(dirs) => {
            let executor = config.executor.clone();
            let stop_flag = stop.clone();
            let job_for_run = job.clone();
            let assignment = assignment.clone();
            tokio::task::spawn_blocking(move || {
                let mut on_event = |e: JobEvent| {
                    let _ = event_tx.send(e);
                };
                let mut on_phase = |p: Phase| {
                    let _ = phase_tx.send(p);
                };
                let mut ctl = JobControl {
                    on_event: &mut on_event,
                    on_phase: &mut on_phase,
                    stop: &stop_flag,
                    gpu: &assignment,
                };
                executor.run(&job_for_run, &dirs, &mut ctl)
            })
            .await
            .context("the job's thread panicked")?
        }
        Err(e) => {
            drop(event_tx);
            drop(phase_tx);
            JobEnd::Fail(protocol::Fail {
                lease: String::new(),
                fault: protocol::Fault::Infrastructure,
                message: format!("{e:#}"),
                usage: protocol::Usage::default(),
            })
        }
    };
    // Every event reaches the app before the result does.
    let _ = events.await;
    hb.abort();
    let patience = Duration::from_secs(600);
    let reply: Result<Option<protocol::ReportReply>, CallError> = match end {
        JobEnd::Cancelled => return Ok(()),
        JobEnd::Complete(mut c) => {
            c.lease = lease;
            api.post_retrying(&format!("{job_path}/complete"), &*c, patience)
                .await
        }
        JobEnd::Fail(mut f) => {
            f.lease = lease;
            api.post_retrying(&format!("{job_path}/fail"), &f, patience)
                .await
        }
    };
    match reply {
        Ok(Some(r)) if !r.accepted => {
            tracing::info!(job = %job.job_id, state = %r.state, "the app already had this job's result")
        }
        Ok(_) => tracing::info!(job = %job.job_id, "reported"),
        Err(CallError::Status { status, .. }) if status == StatusCode::CONFLICT => {
            tracing::warn!(job = %job.job_id, "the lease expired before the report: the job runs again elsewhere")
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The GPUs a worker offers (`--gpus`) and the CUDA library folders its
/// training sandboxes get (`--gpu-lib-dir`, else found from this process and
/// `LD_LIBRARY_PATH`). Logs where the GPUs came from, or why there are none.
/// A build without the `cuda` feature offers no GPUs and binds no libraries.
pub fn gpu_setup(setting: &GpuSetting, lib_dirs: &[PathBuf]) -> (Vec<HostGpu>, Vec<PathBuf>) {
    let inventory = gpu::inventory(setting, gpu::CUDA_BUILT, &|| {
        gpu::nvidia_smi(&gpu::INVENTORY_QUERY)
    });
    if inventory.gpus.is_empty() {
        tracing::info!(why = %inventory.note, "offering no GPUs");
    } else {
        for g in &inventory.gpus {
            tracing::info!(index = g.gpu.index, name = %g.gpu.name, memory_mb = g.gpu.memory_mb,
                uuid = g.uuid.as_deref().unwrap_or("-"), source = %inventory.note, "offering a GPU");
        }
    }
    let libs = match (gpu::CUDA_BUILT, lib_dirs.is_empty()) {
        (false, _) => Vec::new(),
        (true, false) => lib_dirs.to_vec(),
        (true, true) => gpu::default_library_dirs(),
    };
    if gpu::CUDA_BUILT && libs.is_empty() {
        tracing::warn!(
            "no CUDA library folder found for the sandboxes: set LD_LIBRARY_PATH as the GPU hosts \
             guide says, or pass --gpu-lib-dir"
        );
    } else if !libs.is_empty() {
        tracing::info!(folders = ?libs, "CUDA libraries bound read-only into training sandboxes");
    }
    (inventory.gpus, libs)
}

/// The executor of this host: this binary as the trainer, jobs under
/// `<data_dir>/jobs`, shared models from `<data_dir>/models`, and (in a
/// `cuda` build, whose trainer links them) the CUDA library folders bound
/// into its sandboxes.
pub fn default_executor(config: &crate::config::Config) -> anyhow::Result<Executor> {
    let trainer = std::env::current_exe().context("locating the sanhak binary")?;
    let mut executor = Executor::new(
        trainer,
        Some(config.data_dir.join("models")),
        std::path::absolute(config.data_dir.join("jobs")).context("resolving the jobs folder")?,
        std::path::absolute(config.data_dir.join("rlibs")).context("resolving the rlib cache")?,
    );
    if gpu::CUDA_BUILT {
        executor.library_dirs = gpu::default_library_dirs();
    }
    Ok(executor)
}

/// This host's name (for runner registrations).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "runner".to_owned())
}

/// Overrides for an in-process worker (tests and benchmarks).
#[derive(Debug, Clone, Default)]
pub struct InProcess {
    /// The binary run in the sandbox as the trainer (default: this one).
    pub trainer: Option<PathBuf>,
    /// Where code labs' prebuilt rlibs are cached (default: `<data_dir>/rlibs`).
    pub rlib_cache: Option<PathBuf>,
}

/// Name of the in-process runner of `sanhak demo`.
pub const IN_PROCESS_RUNNER: &str = "in-process";

/// Starts a worker inside this process, talking to the app at `addr` over
/// loopback with a fresh runner token (older in-process tokens are revoked).
pub async fn spawn_in_process(
    state: &crate::state::AppState,
    addr: std::net::SocketAddr,
    options: InProcess,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use crate::db::runners;
    runners::revoke(&state.db, IN_PROCESS_RUNNER).await?;
    let (_, token) = runners::create(&state.db, IN_PROCESS_RUNNER, None).await?;
    let mut executor = default_executor(&state.config)?;
    if let Some(trainer) = options.trainer {
        executor.trainer = trainer;
    }
    if let Some(cache) = options.rlib_cache {
        executor.rlib_cache = cache;
    }
    let config = WorkerConfig {
        server: format!("http://{addr}"),
        token: Secret::new(token),
        name: IN_PROCESS_RUNNER.to_owned(),
        cpu_slots: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        gpus: Vec::new(),
        labels: vec!["cpu-only".to_owned()],
        cache_dir: state.config.data_dir.join("lab-cache"),
        executor,
    };
    Ok(tokio::spawn(async move {
        if let Err(e) = run(config, std::future::pending()).await {
            tracing::error!(error = %e, "the in-process worker stopped");
        }
    }))
}
