//! Per-job cgroups (memory and pids), created under this process's own
//! cgroups, on cgroup v1 or v2, best effort.

#![allow(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::Limits;

/// One controller's cgroup for one job.
#[derive(Debug)]
struct Group {
    dir: PathBuf,
    /// `cgroup.procs`, opened before the fork so the child can join with a
    /// single `write(2)` (async-signal-safe) before it execs.
    procs: File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The job's cgroups. Dropping it kills what is left in them and removes them.
#[derive(Debug)]
pub(crate) struct JobCgroup {
    version: Version,
    memory: Option<Group>,
    pids: Option<Group>,
    /// v1 only: CPU accounting (v2 has cpu.stat in every cgroup).
    cpuacct: Option<Group>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_name() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("sanhak-{}-{n}-{nanos:x}", std::process::id())
}

/// A cgroup mount: where it is, its root inside the hierarchy, and its
/// controllers (v1) or `None` for the v2 unified hierarchy.
struct Mount {
    point: PathBuf,
    root: String,
    controllers: Option<Vec<String>>,
}

fn mounts() -> Vec<Mount> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let point = PathBuf::from(unescape(l[4]));
        match r[0] {
            "cgroup" => out.push(Mount {
                point,
                root: unescape(l[3]),
                controllers: Some(r[2].split(',').map(str::to_string).collect()),
            }),
            "cgroup2" => out.push(Mount {
                point,
                root: unescape(l[3]),
                controllers: None,
            }),
            _ => {}
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// (controllers, path) for each line of /proc/self/cgroup.
fn own_cgroups() -> Vec<(Vec<String>, String)> {
    let Ok(text) = fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some((
                controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path.to_string(),
            ))
        })
        .collect()
}

fn join(mount: &Mount, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(mount.root.as_str())
        .unwrap_or(path)
        .trim_start_matches('/');
    mount.point.join(rel)
}

/// The folder of this process's own v1 cgroup for `controller`.
fn own_v1_dir(controller: &str) -> Option<PathBuf> {
    let mount = mounts().into_iter().find(|m| {
        m.controllers
            .as_ref()
            .is_some_and(|c| c.iter().any(|x| x == controller))
    })?;
    let (_, path) = own_cgroups()
        .into_iter()
        .find(|(c, _)| c.iter().any(|x| x == controller))?;
    Some(join(&mount, &path))
}

/// This process's own v2 cgroup folder, if the unified hierarchy is mounted.
fn own_v2_dir() -> Option<PathBuf> {
    let mount = mounts().into_iter().find(|m| m.controllers.is_none())?;
    let (_, path) = own_cgroups().into_iter().find(|(c, _)| c.is_empty())?;
    Some(join(&mount, &path))
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value)
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The number after `key` in a flat keyed file such as memory.events.
fn read_key(path: &Path, key: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl Group {
    fn create(parent: &Path, name: &str) -> io::Result<Group> {
        let dir = parent.join(name);
        fs::create_dir(&dir)?;
        match OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
        {
            Ok(procs) => Ok(Group { dir, procs }),
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    fn kill_all(&self, version: Version) {
        if version == Version::V2 && write(&self.dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for pid in self.pids() {
            if pid > 0 {
                // SAFETY: kill has no memory-safety preconditions; the pid is a
                // member of the job's cgroup (a stale pid can only be reused by
                // a process placed in this same cgroup, i.e. by the job).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    fn remove(&self, version: Version) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.kill_all(version);
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() > deadline => {
                    tracing::warn!(cgroup = %self.dir.display(), error = %e, "could not remove the job cgroup");
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl JobCgroup {
    /// Creates the job's cgroups with the limits set; `None` when the host
    /// lets us create neither.
    pub(crate) fn create(limits: &Limits) -> Option<JobCgroup> {
        let name = unique_name();
        let v1_memory = own_v1_dir("memory").and_then(|parent| {
            let g = Group::create(&parent, &name)
                .map_err(|e| tracing::debug!(error = %e, "no v1 memory cgroup"))
                .ok()?;
            let bytes = limits.memory_bytes.to_string();
            if let Err(e) = write(&g.dir.join("memory.limit_in_bytes"), &bytes) {
                tracing::debug!(error = %e, "could not set memory.limit_in_bytes");
                g.remove(Version::V1);
                return None;
            }
            // Swap counts too where the kernel accounts it (must be set after
            // the memory limit: memsw >= limit).
            let memsw = g.dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                if let Err(e) = write(&memsw, &bytes) {
                    tracing::debug!(error = %e, "could not set memory.memsw.limit_in_bytes");
                }
            }
            Some(g)
        });
        let v1_pids = own_v1_dir("pids").and_then(|parent| {
            let g = Group::create(&parent, &name)
                .map_err(|e| tracing::debug!(error = %e, "no v1 pids cgroup"))
                .ok()?;
            if let Err(e) = write(&g.dir.join("pids.max"), &limits.pids.to_string()) {
                tracing::debug!(error = %e, "could not set pids.max");
                g.remove(Version::V1);
                return None;
            }
            Some(g)
        });
        if v1_memory.is_some() || v1_pids.is_some() {
            let cpuacct = own_v1_dir("cpuacct").and_then(|parent| {
                Group::create(&parent, &name)
                    .map_err(|e| tracing::debug!(error = %e, "no v1 cpuacct cgroup"))
                    .ok()
            });
            return Some(JobCgroup {
                version: Version::V1,
                memory: v1_memory,
                pids: v1_pids,
                cpuacct,
            });
        }
        Self::create_v2(limits, &name)
    }

    fn create_v2(limits: &Limits, name: &str) -> Option<JobCgroup> {
        let parent = own_v2_dir()?;
        let available = fs::read_to_string(parent.join("cgroup.controllers")).ok()?;
        let has = |c: &str| available.split_whitespace().any(|x| x == c);
        if !has("memory") && !has("pids") {
            return None;
        }
        // Children only get the controllers enabled in the parent's
        // subtree_control; enabling them fails (EBUSY) if the parent has
        // processes of its own and is not the root, and then we fall back.
        let subtree = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        for c in ["memory", "pids"] {
            if has(c) && !subtree.split_whitespace().any(|x| x == c) {
                if let Err(e) = write(&parent.join("cgroup.subtree_control"), &format!("+{c}")) {
                    tracing::debug!(controller = c, error = %e, "cannot enable the v2 controller");
                }
            }
        }
        let g = Group::create(&parent, name)
            .map_err(|e| tracing::debug!(error = %e, "no v2 cgroup"))
            .ok()?;
        let memory_ok = g.dir.join("memory.max").exists()
            && write(&g.dir.join("memory.max"), &limits.memory_bytes.to_string()).is_ok();
        if memory_ok {
            let _ = write(&g.dir.join("memory.swap.max"), "0");
        }
        let pids_ok = g.dir.join("pids.max").exists()
            && write(&g.dir.join("pids.max"), &limits.pids.to_string()).is_ok();
        if !memory_ok && !pids_ok {
            g.remove(Version::V2);
            return None;
        }
        // One folder serves both controllers; the pids side shares the fd.
        let pids = if pids_ok {
            g.procs.try_clone().ok().map(|procs| Group {
                dir: g.dir.clone(),
                procs,
            })
        } else {
            None
        };
        Some(JobCgroup {
            version: Version::V2,
            memory: memory_ok.then_some(g),
            pids,
            cpuacct: None,
        })
    }

    /// "cgroup-memory", "cgroup-pids" as in force.
    pub(crate) fn enforced(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.memory.is_some() {
            v.push("cgroup-memory");
        }
        if self.pids.is_some() {
            v.push("cgroup-pids");
        }
        v
    }

    /// The `cgroup.procs` fds the child writes "0" to before it execs.
    pub(crate) fn procs_fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = Vec::new();
        let mut dirs: Vec<&Path> = Vec::new();
        for g in [&self.memory, &self.pids, &self.cpuacct]
            .into_iter()
            .flatten()
        {
            if !dirs.contains(&g.dir.as_path()) {
                dirs.push(&g.dir);
                fds.push(g.procs.as_raw_fd());
            }
        }
        fds
    }

    /// Kills every process left in the job's cgroups.
    pub(crate) fn kill_all(&self) {
        for g in [&self.memory, &self.pids, &self.cpuacct]
            .into_iter()
            .flatten()
        {
            g.kill_all(self.version);
        }
    }

    /// Whether the OOM killer fired in the job.
    pub(crate) fn oom_killed(&self) -> bool {
        let Some(g) = &self.memory else { return false };
        match self.version {
            Version::V1 => match read_key(&g.dir.join("memory.oom_control"), "oom_kill") {
                Some(n) => n > 0,
                // Kernels before 4.13 lack the counter: hitting the limit is
                // the best sign we have.
                None => read_u64(&g.dir.join("memory.failcnt")).is_some_and(|n| n > 0),
            },
            Version::V2 => {
                read_key(&g.dir.join("memory.events"), "oom_kill").is_some_and(|n| n > 0)
            }
        }
    }

    /// Whether a fork or clone failed because of the pids limit.
    pub(crate) fn pids_limit_hit(&self) -> bool {
        let Some(g) = &self.pids else { return false };
        read_key(&g.dir.join("pids.events"), "max").is_some_and(|n| n > 0)
    }

    pub(crate) fn peak_memory(&self) -> Option<u64> {
        let g = self.memory.as_ref()?;
        match self.version {
            Version::V1 => read_u64(&g.dir.join("memory.max_usage_in_bytes")),
            Version::V2 => read_u64(&g.dir.join("memory.peak")),
        }
    }

    /// CPU time of the whole job, killed processes included, where the
    /// cgroup measures it (v1 cpuacct.usage, v2 cpu.stat).
    pub(crate) fn cpu(&self) -> Option<Duration> {
        match self.version {
            Version::V1 => {
                let g = self.cpuacct.as_ref()?;
                read_u64(&g.dir.join("cpuacct.usage")).map(Duration::from_nanos)
            }
            Version::V2 => {
                let g = self.memory.as_ref().or(self.pids.as_ref())?;
                read_key(&g.dir.join("cpu.stat"), "usage_usec").map(Duration::from_micros)
            }
        }
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        let version = self.version;
        if let Some(g) = self.pids.take() {
            g.remove(version);
        }
        if let Some(g) = self.memory.take() {
            g.remove(version);
        }
        if let Some(g) = self.cpuacct.take() {
            g.remove(version);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_joined_under_the_mount_root() {
        let m = Mount {
            point: PathBuf::from("/sys/fs/cgroup/memory"),
            root: "/".into(),
            controllers: Some(vec!["memory".into()]),
        };
        assert_eq!(join(&m, "/a/b"), PathBuf::from("/sys/fs/cgroup/memory/a/b"));
        let m = Mount {
            point: PathBuf::from("/sys/fs/cgroup"),
            root: "/docker/x".into(),
            controllers: None,
        };
        assert_eq!(join(&m, "/docker/x"), PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(unescape("a\\040b"), "a b");
    }
}
