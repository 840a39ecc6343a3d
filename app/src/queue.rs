//! The app side of the runner service: the lab catalog that runners download
//! packages from, the hub that wakes waiting claims and publishes job events,
//! and the reaper that requeues jobs whose lease expired.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use sanhak_runner::lab::Lab;
use sanhak_runner::protocol::{self, LabFile, LabPackage, Resources};
use tokio::sync::{broadcast, watch, Notify};

use crate::db::jobs::{self, QueuePolicy, StoredEvent};
use crate::db::Db;

/// One lab package as served to runners.
#[derive(Debug)]
pub struct CatalogEntry {
    pub lab: Lab,
    pub package: LabPackage,
    /// Content hash → file on disk.
    blobs: HashMap<String, PathBuf>,
}

impl CatalogEntry {
    /// What a job of this lab asks for. A lab whose `[limits] gpu_memory_mb`
    /// is above 0 asks for one GPU with that much free memory (a GPU job also
    /// takes its CPU slots); otherwise it is a CPU job.
    pub fn resources(&self) -> Resources {
        let l = &self.lab.manifest.limits;
        let gpu = l.gpu_memory_mb > 0;
        Resources {
            cpu_slots: l.threads.max(1),
            gpu_count: u32::from(gpu),
            gpu_memory_mb: l.gpu_memory_mb,
            wall_seconds: l.wall_seconds,
            memory_mb: l.memory_mb,
        }
    }

    /// The file with this content hash, if the package has one.
    pub fn blob(&self, sha256: &str) -> Option<&Path> {
        self.blobs.get(sha256).map(PathBuf::as_path)
    }
}

/// The lab packages runners can fetch: every lab in the labs folder (hashed
/// once at start) plus every live published version. `get` gives a lab's
/// latest live version; older versions stay servable by content hash, so a
/// job submitted before a new version went live still gets its package.
#[derive(Debug, Default)]
pub struct LabCatalog {
    inner: RwLock<CatalogInner>,
}

#[derive(Debug, Default)]
struct CatalogInner {
    /// Lab id → its latest live version.
    latest: HashMap<String, Arc<CatalogEntry>>,
    /// Lab id → every version loaded, oldest first.
    versions: HashMap<String, Vec<Arc<CatalogEntry>>>,
}

/// Largest lab package file served (data files are a few MB).
const MAX_PACKAGE_FILE: u64 = 512 * 1024 * 1024;

impl LabCatalog {
    /// Loads and hashes every lab under `labs_dir`. A folder that is not a
    /// valid lab is skipped with a warning (its `lab check` says why).
    pub fn load(labs_dir: &Path) -> anyhow::Result<LabCatalog> {
        let catalog = LabCatalog::default();
        let Ok(entries) = std::fs::read_dir(labs_dir) else {
            tracing::warn!(dir = %labs_dir.display(), "no labs folder: no lab can be submitted");
            return Ok(catalog);
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join("lab.toml").is_file())
            .collect();
        dirs.sort();
        for dir in dirs {
            match Lab::load(&dir) {
                Ok(lab) => {
                    let entry = package_of(lab)
                        .with_context(|| format!("hashing lab package {}", dir.display()))?;
                    catalog.insert_latest(Arc::new(entry));
                }
                Err(e) => tracing::warn!(error = %e, "skipping a lab package that does not load"),
            }
        }
        Ok(catalog)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CatalogInner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CatalogInner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lab's latest live version.
    pub fn get(&self, id: &str) -> Option<Arc<CatalogEntry>> {
        self.read().latest.get(id).cloned()
    }

    /// A loaded version of the lab by its package hash (old ones included).
    pub fn get_version(&self, id: &str, hash: &str) -> Option<Arc<CatalogEntry>> {
        self.read()
            .versions
            .get(id)?
            .iter()
            .find(|e| e.package.hash == hash)
            .cloned()
    }

    /// Makes `entry` the lab's latest version (keeping the older ones
    /// servable by hash).
    pub fn insert_latest(&self, entry: Arc<CatalogEntry>) {
        let mut inner = self.write();
        let id = entry.package.id.clone();
        let versions = inner.versions.entry(id.clone()).or_default();
        versions.retain(|e| e.package.hash != entry.package.hash);
        versions.push(entry.clone());
        inner.latest.insert(id, entry);
    }

    /// The file with this content hash in any loaded version of the lab.
    pub fn blob(&self, id: &str, sha256: &str) -> Option<PathBuf> {
        self.read()
            .versions
            .get(id)?
            .iter()
            .rev()
            .find_map(|e| e.blob(sha256).map(Path::to_path_buf))
    }

    /// The latest version of every lab, by id.
    pub fn entries(&self) -> std::vec::IntoIter<Arc<CatalogEntry>> {
        let mut v: Vec<Arc<CatalogEntry>> = self.read().latest.values().cloned().collect();
        v.sort_by(|a, b| a.package.id.cmp(&b.package.id));
        v.into_iter()
    }

    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.read().latest.keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// Hashes a loaded lab package's files into a catalog entry.
pub fn package_of(lab: Lab) -> anyhow::Result<CatalogEntry> {
    let mut files = Vec::new();
    let mut blobs = HashMap::new();
    walk(lab.dir(), Path::new(""), &mut |rel, abs| {
        let meta = std::fs::metadata(abs)?;
        anyhow::ensure!(
            meta.len() <= MAX_PACKAGE_FILE,
            "{} is larger than {MAX_PACKAGE_FILE} bytes",
            rel.display()
        );
        let bytes = std::fs::read(abs)?;
        let sha = protocol::sha256_hex(&bytes);
        let path = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        files.push(LabFile {
            path,
            sha256: sha.clone(),
            bytes: meta.len(),
            trusted: lab.is_trusted_path(rel),
        });
        blobs.insert(sha, abs.to_path_buf());
        Ok(())
    })?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let package = LabPackage {
        id: lab.id().to_owned(),
        version: lab.manifest.version.clone(),
        hash: LabPackage::hash_of(&files),
        files,
    };
    Ok(CatalogEntry {
        lab,
        package,
        blobs,
    })
}

/// Regular files under `dir`, skipping dot-files, build outputs (`target/`)
/// and symlinks (a package never ships one).
fn walk(
    root: &Path,
    rel: &Path,
    f: &mut dyn FnMut(&Path, &Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name_s = name.to_string_lossy();
        if name_s.starts_with('.') || name_s == "target" {
            continue;
        }
        let ty = e.file_type()?;
        let child = rel.join(&name);
        if ty.is_dir() {
            walk(root, &child, f)?;
        } else if ty.is_file() {
            f(&child, &e.path())?;
        } else {
            tracing::warn!(path = %e.path().display(), "skipping a non-regular file in a lab package");
        }
    }
    Ok(())
}

/// News of a job for subscribers (the live-progress page): a stored event,
/// or `None` when the job's state changed (its result came, it was cancelled).
#[derive(Debug, Clone)]
pub struct JobUpdate {
    pub job_id: String,
    pub event: Option<StoredEvent>,
}

/// Channel capacity for live events; a slow subscriber skips ahead and
/// re-reads what it missed from the database.
const EVENT_CHANNEL: usize = 4096;

/// The queue's shared parts.
pub struct Queue {
    pub policy: QueuePolicy,
    pub catalog: LabCatalog,
    /// Woken when a job is enqueued or requeued, so waiting claims look again.
    pub work: Notify,
    pub events: broadcast::Sender<JobUpdate>,
    /// Longest a claim waits.
    pub max_wait: Duration,
    /// Step-count scale given to jobs (1.0 in production; small in the demo).
    pub step_scale: f64,
    /// Set once when the server begins to shut down: waiting claims answer
    /// "no job" and live streams end (browsers reconnect with the last event
    /// id), so a graceful shutdown does not wait out long polls.
    pub stopping: watch::Sender<bool>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("policy", &self.policy)
            .field("labs", &self.catalog.ids())
            .finish()
    }
}

impl Queue {
    pub fn new(policy: QueuePolicy, catalog: LabCatalog, step_scale: f64) -> Queue {
        Queue {
            policy,
            catalog,
            work: Notify::new(),
            events: broadcast::channel(EVENT_CHANNEL).0,
            max_wait: Duration::from_secs(25),
            step_scale,
            stopping: watch::channel(false).0,
        }
    }

    /// Marks the server as shutting down (see [`Queue::stopping`]).
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once the server is shutting down.
    pub async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        // The sender lives as long as the queue, so this only ends on `true`.
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    /// Wakes every waiting claim.
    pub fn wake(&self) {
        self.work.notify_waiters();
    }

    pub fn publish(&self, job_id: &str, events: Vec<StoredEvent>) {
        for event in events {
            // No subscriber is fine.
            let _ = self.events.send(JobUpdate {
                job_id: job_id.to_owned(),
                event: Some(event),
            });
        }
    }

    /// Tells subscribers that the job's state changed.
    pub fn changed(&self, job_id: &str) {
        let _ = self.events.send(JobUpdate {
            job_id: job_id.to_owned(),
            event: None,
        });
    }
}

/// Requeues expired leases every `every` until the process ends.
pub fn spawn_reaper(db: Db, queue: Arc<Queue>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match jobs::reap_expired(&db).await {
                Ok(r) if r.requeued > 0 || r.not_gradable > 0 => {
                    tracing::warn!(
                        requeued = r.requeued,
                        not_gradable = r.not_gradable,
                        "expired leases"
                    );
                    if r.requeued > 0 {
                        queue.wake();
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "reaping expired leases"),
            }
            // Jobs that ended without settling their GPU-budget hold.
            if let Err(e) = crate::db::vouchers::settle_finished(&db, queue.policy.cpu_rate).await {
                tracing::error!(error = %e, "settling GPU-budget holds");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(gpu_memory_mb: u64) -> CatalogEntry {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../labs/fashion-transfer");
        let mut lab = Lab::load(&dir).expect("the shipped lab loads");
        lab.manifest.limits.gpu_memory_mb = gpu_memory_mb;
        CatalogEntry {
            package: LabPackage {
                id: lab.manifest.id.clone(),
                version: String::new(),
                hash: String::new(),
                files: Vec::new(),
            },
            lab,
            blobs: HashMap::new(),
        }
    }

    #[test]
    fn a_lab_that_declares_gpu_memory_asks_for_one_gpu_with_it() {
        let cpu = entry(0).resources();
        assert_eq!((cpu.gpu_count, cpu.gpu_memory_mb), (0, 0));
        assert!(cpu.cpu_slots >= 1);
        let gpu = entry(6144).resources();
        assert_eq!((gpu.gpu_count, gpu.gpu_memory_mb), (1, 6144));
        assert_eq!(gpu.cpu_slots, cpu.cpu_slots);
        assert_eq!(gpu.wall_seconds, cpu.wall_seconds);
    }
}
