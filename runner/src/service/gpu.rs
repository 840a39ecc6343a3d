//! The GPUs of a runner host: what is there ([`inventory`]), how jobs are
//! packed onto them ([`GpuPool`]), what a job's sandbox gets
//! ([`GpuAssignment`]) and the memory watchdog that stops a job using more
//! GPU memory than its lab declares ([`GpuWatch`]).
//!
//! Jobs share a GPU when their declared memory fits (best fit: the GPU with
//! the least free memory that still fits). Several sandboxes on one GPU are
//! separate CUDA contexts that the GPU time-slices; nothing in CUDA caps one
//! context's allocations, so the watchdog polls `nvidia-smi` and kills the
//! job that exceeds its declaration, and only that job.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sanhak_sandbox::SandboxSpec;

use crate::protocol::Gpu;

/// Whether this binary was built with the `cuda` feature. A worker built
/// without it offers no GPUs: its trainer could not use them.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// The `nvidia-smi` arguments of the inventory query.
pub const INVENTORY_QUERY: [&str; 2] = [
    "--query-gpu=index,uuid,name,memory.total",
    "--format=csv,noheader,nounits",
];

/// The `nvidia-smi` arguments of the per-process memory query.
pub const COMPUTE_APPS_QUERY: [&str; 2] = [
    "--query-compute-apps=pid,used_memory",
    "--format=csv,noheader,nounits",
];

/// How often the watchdog polls `nvidia-smi` while GPU jobs run.
pub const WATCH_POLL: Duration = Duration::from_secs(1);

/// One GPU of this host, as the worker uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGpu {
    /// Index (as `nvidia-smi` numbers GPUs: PCI bus order, `/dev/nvidiaN`),
    /// name and total memory, as registered with the app.
    pub gpu: Gpu,
    /// `GPU-…` UUID from `nvidia-smi`, when known: `CUDA_VISIBLE_DEVICES`
    /// then names the GPU whatever order CUDA enumerates devices in.
    pub uuid: Option<String>,
}

/// Parses `nvidia-smi --query-gpu=index,uuid,name,memory.total
/// --format=csv,noheader,nounits` (the `uuid` column may be absent). Returns
/// the GPUs and a note for each line that could not be used (memory `[N/A]`,
/// e.g. a GPU in MIG mode, or garbage). Names may contain commas.
pub fn parse_inventory(text: &str) -> (Vec<HostGpu>, Vec<String>) {
    let mut gpus: Vec<HostGpu> = Vec::new();
    let mut problems = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed = (|| {
            if fields.len() < 3 {
                return Err("expected index, name and memory".to_owned());
            }
            let index: u32 = fields[0]
                .parse()
                .map_err(|_| format!("index {:?} is not a number", fields[0]))?;
            let last = fields[fields.len() - 1];
            let memory_mb: u64 = last
                .parse()
                .map_err(|_| format!("memory {last:?} is not a number of MiB"))?;
            let mut middle = &fields[1..fields.len() - 1];
            let uuid = match middle.first() {
                Some(u) if u.starts_with("GPU-") || u.starts_with("MIG-") => {
                    let uuid = (*u).to_owned();
                    middle = &middle[1..];
                    Some(uuid)
                }
                _ => None,
            };
            let name = middle.join(",").trim().to_owned();
            if name.is_empty() || memory_mb == 0 {
                return Err("empty name or no memory".to_owned());
            }
            if gpus.iter().any(|g| g.gpu.index == index) {
                return Err(format!("GPU {index} is listed twice"));
            }
            Ok(HostGpu {
                gpu: Gpu {
                    index,
                    name,
                    memory_mb,
                },
                uuid,
            })
        })();
        match parsed {
            Ok(g) => gpus.push(g),
            Err(why) => problems.push(format!("{line:?}: {why}")),
        }
    }
    gpus.sort_by_key(|g| g.gpu.index);
    (gpus, problems)
}

/// The `--gpus` setting of `sanhak worker`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GpuSetting {
    /// Ask `nvidia-smi` (no GPUs when it is missing or fails).
    #[default]
    Auto,
    /// Offer no GPUs: a CPU-only runner.
    None,
    /// Exactly these GPUs (`INDEX:NAME:MB`, comma-separated), for hosts where
    /// `nvidia-smi` should not be trusted or only some GPUs are Sanhak's.
    List(Vec<Gpu>),
}

impl std::str::FromStr for GpuSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "" | "auto" => return Ok(GpuSetting::Auto),
            "none" => return Ok(GpuSetting::None),
            _ => {}
        }
        let mut gpus: Vec<Gpu> = Vec::new();
        for item in s.split(',').map(str::trim) {
            let bad = |why: &str| {
                format!("--gpus: {item:?} {why} (expected `auto`, `none` or INDEX:NAME:MB,…, e.g. 0:H200:143771)")
            };
            let (index, rest) = item.split_once(':').ok_or_else(|| bad("has no `:`"))?;
            let (name, mb) = rest.rsplit_once(':').ok_or_else(|| bad("has no memory"))?;
            let index: u32 = index.trim().parse().map_err(|_| bad("has no GPU index"))?;
            let memory_mb: u64 = mb
                .trim()
                .parse()
                .ok()
                .filter(|&m| m > 0)
                .ok_or_else(|| bad("has no memory in MB"))?;
            let name = name.trim();
            if name.is_empty() {
                return Err(bad("has no name"));
            }
            if gpus.iter().any(|g| g.index == index) {
                return Err(bad("repeats a GPU index"));
            }
            gpus.push(Gpu {
                index,
                name: name.to_owned(),
                memory_mb,
            });
        }
        Ok(GpuSetting::List(gpus))
    }
}

/// What a worker offers, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub gpus: Vec<HostGpu>,
    /// One line for the log: where the list came from, or why it is empty.
    pub note: String,
}

/// Runs `nvidia-smi` with these arguments and returns its stdout.
pub fn nvidia_smi(args: &[&str]) -> Result<String, String> {
    let out = Command::new("nvidia-smi")
        .args(args)
        .output()
        .map_err(|e| format!("nvidia-smi could not be run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nvidia-smi {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The GPUs this worker offers. `query` runs the inventory query (normally
/// [`nvidia_smi`] with [`INVENTORY_QUERY`]); `cuda_built` is [`CUDA_BUILT`].
pub fn inventory(
    setting: &GpuSetting,
    cuda_built: bool,
    query: &dyn Fn() -> Result<String, String>,
) -> Inventory {
    let none = |note: String| Inventory {
        gpus: Vec::new(),
        note,
    };
    if *setting == GpuSetting::None {
        return none("--gpus none: a CPU-only runner".into());
    }
    if !cuda_built {
        return none(
            "this sanhak was built without the `cuda` feature, so its trainer cannot use a GPU: \
             offering no GPUs (build with `--features cuda`, see the GPU hosts guide)"
                .into(),
        );
    }
    match setting {
        GpuSetting::None => none(String::new()),
        GpuSetting::List(list) => Inventory {
            gpus: list
                .iter()
                .map(|g| HostGpu {
                    gpu: g.clone(),
                    uuid: None,
                })
                .collect(),
            note: "GPUs from --gpus".into(),
        },
        GpuSetting::Auto => match query() {
            Err(e) => none(format!("no GPUs: {e}")),
            Ok(text) => {
                let (gpus, problems) = parse_inventory(&text);
                let mut note = format!("{} GPU(s) from nvidia-smi", gpus.len());
                for p in problems {
                    note.push_str(&format!("; skipped {p}"));
                }
                Inventory { gpus, note }
            }
        },
    }
}

/// Shared libraries a CUDA build of the trainer needs inside the sandbox.
const CUDA_LIBRARY_PREFIXES: [&str; 7] = [
    "libcuda.so",
    "libcudart.so",
    "libcublas.so",
    "libcublasLt.so",
    "libcurand.so",
    "libnvrtc.so",
    "libnvidia-",
];

fn is_cuda_library(file_name: &str) -> bool {
    CUDA_LIBRARY_PREFIXES
        .iter()
        .any(|p| file_name.starts_with(p))
}

/// The folders of the CUDA libraries mapped into a process, from its
/// `/proc/<pid>/maps`, in the order first seen.
pub fn library_dirs_from_maps(maps: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode pathname
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let path = Path::new(path);
        let cuda = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_cuda_library);
        if let (true, Some(dir)) = (cuda, path.parent()) {
            if path.is_absolute() && !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_path_buf());
            }
        }
    }
    dirs
}

/// The default CUDA library folders for GPU sandboxes: those this process
/// loaded its CUDA libraries from (a `cuda` build links them at start, from
/// `LD_LIBRARY_PATH` as the GPU hosts guide sets it), then any other folder
/// on `LD_LIBRARY_PATH` that holds one. Empty in a build without CUDA.
pub fn default_library_dirs() -> Vec<PathBuf> {
    let mut dirs = std::fs::read_to_string("/proc/self/maps")
        .map(|m| library_dirs_from_maps(&m))
        .unwrap_or_default();
    if let Some(path) = std::env::var_os("LD_LIBRARY_PATH") {
        for dir in std::env::split_paths(&path) {
            let holds_one = std::fs::read_dir(&dir).is_ok_and(|entries| {
                entries
                    .filter_map(Result::ok)
                    .any(|e| e.file_name().to_str().is_some_and(is_cuda_library))
            });
            if dir.is_absolute() && holds_one && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// Per-GPU bookkeeping of declared memory. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct GpuPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    gpus: Vec<HostGpu>,
    /// Free declared memory per GPU, in MB (same order as `gpus`).
    free: Mutex<Vec<u64>>,
}

impl GpuPool {
    pub fn new(gpus: Vec<HostGpu>) -> GpuPool {
        let free = gpus.iter().map(|g| g.gpu.memory_mb).collect();
        GpuPool {
            inner: Arc::new(PoolInner {
                gpus,
                free: Mutex::new(free),
            }),
        }
    }

    pub fn gpus(&self) -> &[HostGpu] {
        &self.inner.gpus
    }

    /// Free memory of each GPU, in MB, for a claim.
    pub fn free_memory_mb(&self) -> Vec<u64> {
        self.inner
            .free
            .lock()
            .map(|f| f.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Reserves `memory_mb` on each of `count` GPUs, best fit: the GPUs with
    /// the least free memory that still fits (lowest index on ties), so large
    /// holes stay open for large jobs. `None` when they do not fit now (the
    /// job waits). A job with `count` 0 gets an empty lease. The memory comes
    /// back when the lease is dropped, however the job ended.
    pub fn reserve(&self, count: u32, memory_mb: u64) -> Option<GpuLease> {
        let mut free = self
            .inner
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut fitting: Vec<usize> = (0..free.len()).filter(|&i| free[i] >= memory_mb).collect();
        fitting.sort_by_key(|&i| (free[i], self.inner.gpus[i].gpu.index));
        let count = count as usize;
        if fitting.len() < count {
            return None;
        }
        fitting.truncate(count);
        fitting.sort_by_key(|&i| self.inner.gpus[i].gpu.index);
        for &i in &fitting {
            free[i] -= memory_mb;
        }
        Some(GpuLease {
            pool: self.clone(),
            slots: fitting,
            memory_mb,
        })
    }
}

/// GPU memory reserved for one job; released on drop.
#[derive(Debug)]
pub struct GpuLease {
    pool: GpuPool,
    slots: Vec<usize>,
    memory_mb: u64,
}

impl GpuLease {
    /// The GPUs assigned, in index order.
    pub fn gpus(&self) -> Vec<HostGpu> {
        self.slots
            .iter()
            .map(|&i| self.pool.inner.gpus[i].clone())
            .collect()
    }

    /// Memory reserved on each GPU, in MB.
    pub fn memory_mb(&self) -> u64 {
        self.memory_mb
    }
}

impl Drop for GpuLease {
    fn drop(&mut self) {
        let mut free = self
            .pool
            .inner
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &i in &self.slots {
            let total = self.pool.inner.gpus[i].gpu.memory_mb;
            free[i] = (free[i] + self.memory_mb).min(total);
        }
    }
}

/// A running GPU job as the watchdog sees it.
#[derive(Debug)]
pub struct GpuJob {
    pub job_id: String,
    /// Declared memory per GPU, in MB.
    pub declared_mb: u64,
    /// GPUs assigned.
    pub gpu_count: u32,
    /// bwrap's host pid while the sandbox runs (0 otherwise); the sandbox
    /// fills it in ([`SandboxSpec::pid`]).
    pub pid: Arc<AtomicI32>,
    /// Set to stop the job (the sandbox's cancel flag).
    pub stop: Arc<AtomicBool>,
    overuse: Mutex<Option<String>>,
}

impl GpuJob {
    pub fn new(job_id: &str, declared_mb: u64, gpu_count: u32, stop: Arc<AtomicBool>) -> GpuJob {
        GpuJob {
            job_id: job_id.to_owned(),
            declared_mb,
            gpu_count,
            pid: Arc::new(AtomicI32::new(0)),
            stop,
            overuse: Mutex::new(None),
        }
    }

    /// The most GPU memory the job may use, over all its GPUs, in MB.
    pub fn limit_mb(&self) -> u64 {
        self.declared_mb
            .saturating_mul(u64::from(self.gpu_count.max(1)))
    }

    /// Why the watchdog stopped the job, if it did.
    pub fn overuse(&self) -> Option<String> {
        self.overuse.lock().ok().and_then(|o| o.clone())
    }

    /// Records the overuse (the first reason wins) and stops the job.
    fn stop_for(&self, used_mb: u64) {
        if let Ok(mut o) = self.overuse.lock() {
            if o.is_none() {
                *o = Some(overuse_message(used_mb, self.limit_mb()));
            }
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The fault message of a job stopped for its GPU memory.
pub fn overuse_message(used_mb: u64, limit_mb: u64) -> String {
    format!(
        "used {used_mb} MB of GPU memory, more than the {limit_mb} MB the lab declares \
         (limits.gpu_memory_mb); the job was stopped so that the jobs sharing its GPU could go on"
    )
}

/// Parses `nvidia-smi --query-compute-apps=pid,used_memory
/// --format=csv,noheader,nounits`: (pid, MB) per process and GPU. Lines that
/// do not parse (`[N/A]`, "No running processes found") are skipped.
pub fn parse_compute_apps(text: &str) -> Vec<(i32, u64)> {
    text.lines()
        .filter_map(|line| {
            let (pid, mb) = line.split_once(',')?;
            let pid: i32 = pid.trim().parse().ok().filter(|&p| p > 0)?;
            let mb: u64 = mb.trim().parse().ok()?;
            Some((pid, mb))
        })
        .collect()
}

/// The parent of a host process, from `/proc/<pid>/status`.
pub fn proc_parent(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|p| p.trim().parse().ok())
}

/// GPU memory per job, in MB: each process is charged to the job whose
/// sandbox root (`roots`: root pid → job key) it descends from, found by
/// walking `parent`. Processes of no job (the host's own) are ignored.
pub fn usage_by_job<K: Copy + Eq + std::hash::Hash>(
    apps: &[(i32, u64)],
    roots: &HashMap<i32, K>,
    parent: &dyn Fn(i32) -> Option<i32>,
) -> HashMap<K, u64> {
    let mut used: HashMap<K, u64> = HashMap::new();
    for &(pid, mb) in apps {
        let mut p = pid;
        // Bounded: a pid chain is short; a cycle would be a kernel bug.
        for _ in 0..256 {
            if let Some(&job) = roots.get(&p) {
                *used.entry(job).or_insert(0) += mb;
                break;
            }
            match parent(p) {
                Some(q) if q > 1 && q != p => p = q,
                _ => break,
            }
        }
    }
    used
}

/// The jobs over their limit: (job, MB used).
pub fn over_limit<K: Copy + Eq + std::hash::Hash + Ord>(
    used: &HashMap<K, u64>,
    limit_of: &dyn Fn(K) -> u64,
) -> Vec<(K, u64)> {
    let mut over: Vec<(K, u64)> = used
        .iter()
        .filter(|&(&job, &mb)| mb > limit_of(job))
        .map(|(&job, &mb)| (job, mb))
        .collect();
    over.sort();
    over
}

/// The GPU memory watchdog: while GPU jobs run, polls per-process GPU memory
/// and stops each job that uses more than it declared.
pub struct GpuWatch {
    jobs: Mutex<Vec<Weak<GpuJob>>>,
    wake: std::sync::Condvar,
    query: Box<dyn Fn() -> Result<String, String> + Send + Sync>,
    parent: Box<dyn Fn(i32) -> Option<i32> + Send + Sync>,
}

impl std::fmt::Debug for GpuWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuWatch").finish_non_exhaustive()
    }
}

impl GpuWatch {
    /// A watchdog over this host's `nvidia-smi` and `/proc`.
    pub fn host() -> GpuWatch {
        GpuWatch::new(
            Box::new(|| nvidia_smi(&COMPUTE_APPS_QUERY)),
            Box::new(proc_parent),
        )
    }

    /// A watchdog with its own sources (tests).
    pub fn new(
        query: Box<dyn Fn() -> Result<String, String> + Send + Sync>,
        parent: Box<dyn Fn(i32) -> Option<i32> + Send + Sync>,
    ) -> GpuWatch {
        GpuWatch {
            jobs: Mutex::new(Vec::new()),
            wake: std::sync::Condvar::new(),
            query,
            parent,
        }
    }

    /// Watches this job until it is dropped.
    pub fn register(&self, job: &Arc<GpuJob>) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.push(Arc::downgrade(job));
        }
        self.wake.notify_all();
    }

    /// The jobs still running (and forgets the others).
    fn live(&self) -> Vec<Arc<GpuJob>> {
        let mut jobs = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        jobs.retain(|j| j.strong_count() > 0);
        jobs.iter().filter_map(Weak::upgrade).collect()
    }

    /// One poll: stops the jobs over their limit and returns them.
    pub fn check(&self) -> Vec<(Arc<GpuJob>, u64)> {
        let jobs = self.live();
        let roots: HashMap<i32, usize> = jobs
            .iter()
            .enumerate()
            .filter_map(|(i, j)| {
                let pid = j.pid.load(Ordering::SeqCst);
                (pid > 0).then_some((pid, i))
            })
            .collect();
        if roots.is_empty() {
            return Vec::new();
        }
        let text = match (self.query)() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "GPU memory watchdog: nvidia-smi failed");
                return Vec::new();
            }
        };
        let used = usage_by_job(&parse_compute_apps(&text), &roots, &*self.parent);
        over_limit(&used, &|i| jobs[i].limit_mb())
            .into_iter()
            .map(|(i, mb)| {
                let job = jobs[i].clone();
                tracing::warn!(job = %job.job_id, used_mb = mb, limit_mb = job.limit_mb(),
                    "a job used more GPU memory than it declared: stopping it");
                job.stop_for(mb);
                (job, mb)
            })
            .collect()
    }

    /// Polls every `every` while jobs are registered, sleeping otherwise.
    /// Runs on its own thread for the life of the worker.
    pub fn spawn(self: Arc<Self>, every: Duration) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("gpu-watchdog".into())
            .spawn(move || loop {
                {
                    // Checked under the lock `register` takes, so no wake-up is lost.
                    let mut jobs = self
                        .jobs
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    jobs.retain(|j| j.strong_count() > 0);
                    if jobs.is_empty() {
                        let _ = self.wake.wait_timeout(jobs, Duration::from_secs(60));
                        continue;
                    }
                }
                self.check();
                std::thread::sleep(every);
            })
            .map(|_| ())
    }
}

/// What the executor needs to give one job its GPUs.
#[derive(Debug, Clone, Default)]
pub struct GpuAssignment {
    /// The GPUs reserved for the job (empty: a CPU job).
    pub gpus: Vec<HostGpu>,
    /// The job's watchdog entry, if a watchdog runs.
    pub watch: Option<Arc<GpuJob>>,
}

/// `CUDA_VISIBLE_DEVICES` for these GPUs: their UUIDs when all are known
/// (unambiguous whatever order CUDA enumerates in), else their indices (with
/// `CUDA_DEVICE_ORDER=PCI_BUS_ID`, the order `nvidia-smi` uses).
pub fn cuda_visible_devices(gpus: &[HostGpu]) -> String {
    let ids: Vec<String> = if gpus.iter().all(|g| g.uuid.is_some()) {
        gpus.iter().filter_map(|g| g.uuid.clone()).collect()
    } else {
        gpus.iter().map(|g| g.gpu.index.to_string()).collect()
    };
    ids.join(",")
}

/// The environment variable that tells the trainer which device to train on
/// (`cuda:0` is the first of the job's GPUs, `cpu` when it has none).
pub use crate::train::device::DEVICE_ENV;

impl GpuAssignment {
    /// The device the trainer should use: `cuda:0` (the first GPU visible
    /// inside) or `cpu`.
    pub fn device(&self) -> &'static str {
        if self.gpus.is_empty() {
            "cpu"
        } else {
            "cuda:0"
        }
    }

    /// Binds the job's device nodes (only its own `/dev/nvidiaN`, plus the
    /// control nodes) and sets the CUDA environment inside; hands the
    /// watchdog the sandbox's pid. Nothing for a CPU job.
    pub fn apply(&self, spec: &mut SandboxSpec) {
        if self.gpus.is_empty() {
            return;
        }
        let indices: Vec<u32> = self.gpus.iter().map(|g| g.gpu.index).collect();
        spec.add_gpus(&indices);
        spec.env
            .push(("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into()));
        spec.env.push((
            "CUDA_VISIBLE_DEVICES".into(),
            cuda_visible_devices(&self.gpus),
        ));
        spec.env.push((DEVICE_ENV.into(), self.device().into()));
        if let Some(w) = &self.watch {
            spec.pid = Some(w.pid.clone());
        }
    }

    /// Why the watchdog stopped the job, if it did.
    pub fn overuse(&self) -> Option<String> {
        self.watch.as_ref().and_then(|w| w.overuse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, mb: u64) -> HostGpu {
        HostGpu {
            gpu: Gpu {
                index,
                name: "NVIDIA H200".into(),
                memory_mb: mb,
            },
            uuid: Some(format!("GPU-{index:08}-aaaa")),
        }
    }

    #[test]
    fn nvidia_smi_inventory_parses_with_and_without_uuids() {
        let text = "0, GPU-5e4c1d2a-0000-1111-2222-333344445555, NVIDIA H200, 143771\n\
                    1, GPU-77aa, NVIDIA H200, 143771\r\n\
                    \n";
        let (gpus, problems) = parse_inventory(text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].gpu.name, "NVIDIA H200");
        assert_eq!(gpus[0].gpu.memory_mb, 143_771);
        assert_eq!(
            gpus[0].uuid.as_deref(),
            Some("GPU-5e4c1d2a-0000-1111-2222-333344445555")
        );
        assert_eq!(gpus[1].gpu.index, 1);

        // The brief's three-column form, a name with a comma, out of order.
        let (gpus, problems) =
            parse_inventory("1, Tesla V100, SXM2, 16160\n0, NVIDIA A100-SXM4-80GB, 81920\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            gpus.iter()
                .map(|g| (g.gpu.index, g.gpu.name.as_str(), g.gpu.memory_mb))
                .collect::<Vec<_>>(),
            [
                (0, "NVIDIA A100-SXM4-80GB", 81920),
                (1, "Tesla V100,SXM2", 16160)
            ]
        );
        assert!(gpus.iter().all(|g| g.uuid.is_none()));
    }

    #[test]
    fn unusable_inventory_lines_are_reported_not_offered() {
        let text = "0, GPU-1, NVIDIA H200, 143771\n\
                    1, GPU-2, NVIDIA H200, [N/A]\n\
                    x, GPU-3, NVIDIA H200, 100\n\
                    0, GPU-4, NVIDIA H200, 100\n\
                    NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\n";
        let (gpus, problems) = parse_inventory(text);
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].uuid.as_deref(), Some("GPU-1"));
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("[N/A]"));
        assert!(problems[2].contains("twice"));
    }

    #[test]
    fn the_gpus_flag_parses() {
        assert_eq!("none".parse::<GpuSetting>(), Ok(GpuSetting::None));
        assert_eq!("auto".parse::<GpuSetting>(), Ok(GpuSetting::Auto));
        assert_eq!(
            "0:H200:143771, 1:NVIDIA H200:1000".parse::<GpuSetting>(),
            Ok(GpuSetting::List(vec![
                Gpu {
                    index: 0,
                    name: "H200".into(),
                    memory_mb: 143_771
                },
                Gpu {
                    index: 1,
                    name: "NVIDIA H200".into(),
                    memory_mb: 1000
                },
            ]))
        );
        for bad in [
            "0:H200",
            "x:H200:10",
            "0::10",
            "0:H200:0",
            "0:a:1,0:b:1",
            "H200",
        ] {
            let e = bad.parse::<GpuSetting>().expect_err(bad);
            assert!(e.contains("--gpus"), "{e}");
        }
    }

    #[test]
    fn inventory_offers_gpus_only_from_a_cuda_build() {
        let smi = || Ok("0, GPU-1, NVIDIA H200, 143771\n".to_owned());
        let listed: GpuSetting = "3:H200:1000".parse().expect("valid");

        let inv = inventory(&GpuSetting::Auto, true, &smi);
        assert_eq!(inv.gpus.len(), 1);
        assert_eq!(inv.gpus[0].uuid.as_deref(), Some("GPU-1"));

        let inv = inventory(&listed, true, &|| {
            panic!("an explicit list asks no nvidia-smi")
        });
        assert_eq!(inv.gpus.len(), 1);
        assert_eq!(inv.gpus[0].gpu.index, 3);

        for setting in [GpuSetting::Auto, listed] {
            let inv = inventory(&setting, false, &smi);
            assert!(inv.gpus.is_empty());
            assert!(
                inv.note.contains("without the `cuda` feature"),
                "{}",
                inv.note
            );
        }
        assert!(inventory(&GpuSetting::None, true, &smi).gpus.is_empty());

        let missing = || Err("nvidia-smi could not be run: No such file or directory".to_owned());
        let inv = inventory(&GpuSetting::Auto, true, &missing);
        assert!(inv.gpus.is_empty());
        assert!(inv.note.contains("No such file"), "{}", inv.note);
    }

    #[test]
    fn jobs_pack_onto_one_gpu_while_they_fit_and_memory_comes_back() {
        let pool = GpuPool::new(vec![gpu(0, 10_000)]);
        let a = pool.reserve(1, 4_000).expect("fits");
        let b = pool.reserve(1, 4_000).expect("fits beside the first");
        assert_eq!(a.gpus()[0].gpu.index, 0);
        assert_eq!(b.gpus()[0].gpu.index, 0);
        assert_eq!(pool.free_memory_mb(), [2_000]);
        // The third does not fit: it waits (the worker does not claim it).
        assert!(pool.reserve(1, 4_000).is_none());
        assert_eq!(pool.free_memory_mb(), [2_000]);
        drop(a);
        assert_eq!(pool.free_memory_mb(), [6_000]);
        let c = pool.reserve(1, 4_000).expect("fits once one ended");
        drop(b);
        drop(c);
        assert_eq!(pool.free_memory_mb(), [10_000]);
    }

    #[test]
    fn best_fit_picks_the_fullest_gpu_that_still_fits() {
        let pool = GpuPool::new(vec![gpu(0, 10_000), gpu(1, 10_000), gpu(2, 10_000)]);
        let a = pool.reserve(1, 7_000).expect("fits");
        assert_eq!(a.gpus()[0].gpu.index, 0, "a tie goes to the lowest index");
        let b = pool.reserve(1, 5_000).expect("fits");
        assert_eq!(b.gpus()[0].gpu.index, 1, "GPU 0 has only 3 GB left");
        assert_eq!(pool.free_memory_mb(), [3_000, 5_000, 10_000]);
        // 2 GB fits everywhere: it goes to the fullest GPU, 0.
        let c = pool.reserve(1, 2_000).expect("fits");
        assert_eq!(c.gpus()[0].gpu.index, 0);
        // 4 GB no longer fits on 0: the fullest that fits is 1.
        let d = pool.reserve(1, 4_000).expect("fits");
        assert_eq!(d.gpus()[0].gpu.index, 1);
        // A big job still finds the GPU that was kept empty.
        let e = pool.reserve(1, 9_500).expect("the empty GPU was kept free");
        assert_eq!(e.gpus()[0].gpu.index, 2);
        assert_eq!(pool.free_memory_mb(), [1_000, 1_000, 500]);
        assert_eq!(e.memory_mb(), 9_500);
    }

    #[test]
    fn a_multi_gpu_job_takes_memory_on_each_of_its_gpus() {
        let pool = GpuPool::new(vec![gpu(0, 10_000), gpu(1, 10_000), gpu(2, 10_000)]);
        let small = pool.reserve(1, 3_000).expect("fits");
        let two = pool.reserve(2, 6_000).expect("two GPUs with 6 GB free");
        let picked: Vec<u32> = two.gpus().iter().map(|g| g.gpu.index).collect();
        assert_eq!(
            picked,
            [0, 1],
            "the GPU with 7 GB free is the best fit, then the lower index"
        );
        assert_eq!(pool.free_memory_mb(), [1_000, 4_000, 10_000]);
        assert!(
            pool.reserve(2, 5_000).is_none(),
            "only one GPU has 5 GB free"
        );
        assert!(pool.reserve(4, 1).is_none(), "the host has three GPUs");
        let none = pool.reserve(0, 0).expect("a CPU job needs no GPU");
        assert!(none.gpus().is_empty());
        drop(two);
        drop(small);
        assert_eq!(pool.free_memory_mb(), [10_000, 10_000, 10_000]);
    }

    #[test]
    fn a_lease_is_released_when_its_job_panics() {
        let pool = GpuPool::new(vec![gpu(0, 8_000)]);
        let p = pool.clone();
        let r = std::thread::spawn(move || {
            let _lease = p.reserve(1, 8_000).expect("fits");
            panic!("the job's thread dies");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(pool.free_memory_mb(), [8_000]);
    }

    #[test]
    fn compute_apps_parse() {
        let text = "4242, 1530\n 77 , 20000\n9, [N/A]\nNo running processes found\n\n";
        assert_eq!(parse_compute_apps(text), [(4242, 1530), (77, 20_000)]);
        assert!(parse_compute_apps("").is_empty());
    }

    /// A fake process table: child → parent.
    fn tree(edges: &[(i32, i32)]) -> impl Fn(i32) -> Option<i32> {
        let map: HashMap<i32, i32> = edges.iter().copied().collect();
        move |pid| map.get(&pid).copied()
    }

    #[test]
    fn processes_are_charged_to_the_job_they_descend_from() {
        // Job A: bwrap 100 → 101 (init in the pid namespace) → 102 trainer → 103.
        // Job B: bwrap 200 → 201 → 202. 300 is the host's own (e.g. a notebook).
        let parent = tree(&[
            (100, 50),
            (101, 100),
            (102, 101),
            (103, 102),
            (200, 50),
            (201, 200),
            (202, 201),
            (300, 1),
        ]);
        let roots: HashMap<i32, char> = [(100, 'A'), (200, 'B')].into_iter().collect();
        let apps = parse_compute_apps("102, 3000\n103, 1500\n202, 900\n300, 70000\n999, 5\n");
        let used = usage_by_job(&apps, &roots, &parent);
        assert_eq!(used.get(&'A'), Some(&4_500));
        assert_eq!(used.get(&'B'), Some(&900));
        assert_eq!(used.len(), 2);
        let limit = |j: char| if j == 'A' { 4_000 } else { 1_000 };
        assert_eq!(over_limit(&used, &limit), [('A', 4_500)]);
        let roomy = |_| 4_500;
        assert!(
            over_limit(&used, &roomy).is_empty(),
            "exactly the limit is allowed"
        );
    }

    #[test]
    fn the_watchdog_stops_only_the_job_over_its_declaration() {
        let parent = |pid: i32| match pid {
            11 => Some(10),
            21 => Some(20),
            _ => Some(1),
        };
        let watch = GpuWatch::new(
            Box::new(|| Ok("11, 5000\n21, 2000\n".to_owned())),
            Box::new(parent),
        );
        let hog = Arc::new(GpuJob::new(
            "hog",
            4_000,
            1,
            Arc::new(AtomicBool::new(false)),
        ));
        let fair = Arc::new(GpuJob::new(
            "fair",
            4_000,
            1,
            Arc::new(AtomicBool::new(false)),
        ));
        watch.register(&hog);
        watch.register(&fair);
        // Before the sandboxes start nothing is charged (and nvidia-smi is not asked).
        assert!(watch.check().is_empty());
        hog.pid.store(10, Ordering::SeqCst);
        fair.pid.store(20, Ordering::SeqCst);
        let stopped = watch.check();
        assert_eq!(stopped.len(), 1);
        assert_eq!(stopped[0].0.job_id, "hog");
        assert!(hog.stop.load(Ordering::SeqCst));
        assert!(!fair.stop.load(Ordering::SeqCst));
        assert_eq!(
            hog.overuse().as_deref(),
            Some(overuse_message(5_000, 4_000).as_str())
        );
        assert!(hog.overuse().is_some_and(
            |m| m.starts_with("used 5000 MB of GPU memory, more than the 4000 MB the lab declares")
        ));
        assert!(fair.overuse().is_none());
        // A job that ended is forgotten.
        drop(stopped);
        drop(hog);
        assert_eq!(watch.live().len(), 1);
    }

    #[test]
    fn the_assignment_binds_its_gpu_and_names_it_inside() {
        let stop = Arc::new(AtomicBool::new(false));
        let job = Arc::new(GpuJob::new("j", 1_000, 1, stop));
        let a = GpuAssignment {
            gpus: vec![gpu(2, 10_000)],
            watch: Some(job.clone()),
        };
        let mut spec = SandboxSpec::new(vec!["/opt/x".into()], "/w");
        a.apply(&mut spec);
        assert_eq!(
            spec.dev_binds,
            [
                PathBuf::from("/dev/nvidia2"),
                PathBuf::from("/dev/nvidiactl"),
                PathBuf::from("/dev/nvidia-uvm")
            ]
        );
        let env: HashMap<&str, &str> = spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "GPU-00000002-aaaa");
        assert_eq!(env[DEVICE_ENV], "cuda:0");
        assert!(spec.pid.as_ref().is_some_and(|p| Arc::ptr_eq(p, &job.pid)));

        let mut no_uuid = gpu(2, 10_000);
        no_uuid.uuid = None;
        assert_eq!(cuda_visible_devices(&[gpu(0, 1), no_uuid]), "0,2");

        let mut cpu = SandboxSpec::new(vec!["/opt/x".into()], "/w");
        GpuAssignment::default().apply(&mut cpu);
        assert!(cpu.dev_binds.is_empty() && cpu.env.is_empty() && cpu.pid.is_none());
    }

    #[test]
    fn library_folders_come_from_the_mapped_cuda_libraries() {
        let maps = "\
7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06
7f01-7f02 r-xp 00000000 08:01 2 /opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/libcublas.so.13
7f02-7f03 r-xp 00000000 08:01 3 /opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/libcublasLt.so.13
7f03-7f04 r-xp 00000000 08:01 4 /usr/lib/x86_64-linux-gnu/libc.so.6
7f04-7f05 rw-p 00000000 00:00 0 [heap]
7f05-7f06 r-xp 00000000 08:01 5 /usr/local/cuda-13.0/compat/libnvidia-ptxjitcompiler.so.1
7f06-7f07 r--p 00000000 00:00 0
";
        assert_eq!(
            library_dirs_from_maps(maps),
            [
                PathBuf::from("/usr/lib/x86_64-linux-gnu"),
                PathBuf::from("/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib"),
                PathBuf::from("/usr/local/cuda-13.0/compat"),
            ]
        );
    }
}
