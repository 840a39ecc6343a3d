//! Starting bwrap, watching the job, and deciding how it ended.

#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::cgroup::JobCgroup;
use crate::workdir::{is_tmpfs_mount, tmpfs_full, usage};
use crate::{bwrap_path, seccomp_program, Limits, Outcome, SandboxError, SandboxSpec, Status};

/// What the caller wants after seeing a stdout line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineAction {
    Continue,
    /// Kill the job now; it ends as [`Status::Stopped`].
    Stop,
}

/// How often the watchdog wakes up.
const TICK: Duration = Duration::from_millis(25);
/// How often the watchdog measures a plain (non-tmpfs) work folder.
const DISK_POLL: Duration = Duration::from_millis(200);
/// How often the watchdog measures the process tree (no-cgroup fallback).
const TREE_POLL: Duration = Duration::from_millis(100);

/// Runs `spec.command` in a fresh bubblewrap sandbox and waits for it.
///
/// Each complete stdout line (cut at `max_line_bytes`) is handed to `on_line`
/// as it arrives; returning [`LineAction::Stop`] kills the job. Blocking:
/// async callers use `spawn_blocking`. An `Err` is an infrastructure fault
/// (bwrap missing, a setup step failed); everything the command itself does
/// ends in an `Ok(Outcome)`.
#[tracing::instrument(skip_all, fields(command = ?spec.command.first()))]
pub fn run(
    spec: &SandboxSpec,
    on_line: &mut dyn FnMut(&str) -> LineAction,
) -> Result<Outcome, SandboxError> {
    let bwrap = bwrap_path().ok_or(SandboxError::BwrapMissing)?;
    validate(spec)?;
    let limits = &spec.limits;

    let seccomp = memfd_with(&seccomp_program()?)
        .map_err(SandboxError::setup("writing the seccomp filter"))?;
    let cgroup = JobCgroup::create(limits);
    let work_tmpfs = is_tmpfs_mount(&spec.work);
    // SAFETY: getuid cannot fail and has no preconditions.
    let root = spec
        .host_user
        .map_or(unsafe { libc::getuid() }, |(uid, _)| uid)
        == 0;
    let nproc = (!root
        && cgroup
            .as_ref()
            .is_none_or(|c| !c.enforced().contains(&"cgroup-pids")))
    .then_some(limits.pids);

    let mut enforced: Vec<String> = [
        "namespaces",
        "no-network",
        "seccomp",
        "rlimits",
        "tmpfs-tmp",
        "watchdog-wall",
        "output-caps",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(c) = &cgroup {
        enforced.extend(c.enforced().into_iter().map(str::to_string));
    }
    if nproc.is_some() {
        enforced.push("rlimit-nproc".into());
    }
    enforced.push(
        if work_tmpfs {
            "tmpfs-work"
        } else {
            "watchdog-disk"
        }
        .into(),
    );
    // Without cgroups, the watchdog measures the process tree instead (a
    // fallback: a fast bomb can overshoot between two polls).
    let has = |what: &str| {
        cgroup
            .as_ref()
            .is_some_and(|c| c.enforced().contains(&what))
    };
    let tree_caps = TreeCaps {
        memory_bytes: (!has("cgroup-memory")).then_some(limits.memory_bytes),
        tasks: (!has("cgroup-pids") && nproc.is_none()).then_some(limits.pids),
    };
    if tree_caps.memory_bytes.is_some() {
        enforced.push("watchdog-memory".into());
    }
    if tree_caps.tasks.is_some() {
        enforced.push("watchdog-pids".into());
    }

    let options = memfd_with(&nul_separated(&bwrap_args(spec, seccomp.as_raw_fd())))
        .map_err(SandboxError::setup("writing the bwrap options"))?;
    let (status_read, status_write) =
        cloexec_pipe().map_err(SandboxError::setup("creating the status pipe"))?;
    let mut cmd = Command::new(&bwrap);
    cmd.arg("--args")
        .arg(options.as_raw_fd().to_string())
        .arg("--json-status-fd")
        .arg(status_write.as_raw_fd().to_string())
        .arg("--")
        .args(&spec.command)
        // Not even bwrap sees the host's environment: /proc/1/environ inside
        // the sandbox is bwrap's, and it must not leak secrets.
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some((uid, gid)) = spec.host_user {
        // std drops supplementary groups and switches ids before our
        // pre_exec runs; the cgroup fds were opened before, so joining
        // still works, and rlimits can always be lowered.
        cmd.uid(uid).gid(gid);
    }
    let procs_fds: Vec<RawFd> = cgroup
        .as_ref()
        .map(JobCgroup::procs_fds)
        .unwrap_or_default();
    let rlimits = rlimits(limits, nproc);
    let inherited = [
        seccomp.as_raw_fd(),
        options.as_raw_fd(),
        status_write.as_raw_fd(),
    ];
    // SAFETY: the closure runs between fork and exec, so it only makes
    // async-signal-safe calls (write, setrlimit, fcntl) on data prepared
    // before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Join the job's cgroups first: "0" moves the writing process.
            // bwrap and everything it starts are inside from here on.
            for &fd in &procs_fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            for &(resource, value) in &rlimits {
                let lim = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                if libc::setrlimit(resource, &lim) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // bwrap reads the filter and its options from these, and reports
            // its status on the last: let them survive exec.
            for fd in inherited {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }

    let started = Instant::now();
    let mut child = cmd.spawn().map_err(SandboxError::setup("starting bwrap"))?;
    drop(seccomp);
    drop(options);
    drop(status_write);
    let pid = child.id() as libc::pid_t;
    tracing::debug!(pid, ?enforced, "sandbox started");
    if let Some(slot) = &spec.pid {
        slot.store(pid, std::sync::atomic::Ordering::SeqCst);
    }

    let cgroup = Arc::new(cgroup);
    let shared = Arc::new(Shared {
        reason: Mutex::new(None),
        reaped: Mutex::new(false),
        pgid: pid,
        cgroup: Arc::clone(&cgroup),
        pid_slot: spec.pid.clone(),
    });

    let (stdout, stderr) = match (child.stdout.take(), child.stderr.take()) {
        (Some(o), Some(e)) => (o, e),
        _ => {
            shared.kill(Status::Stopped);
            let _ = child.wait();
            return Err(SandboxError::Setup {
                context: "capturing the output of bwrap",
                source: io::Error::other("stdout/stderr pipe missing"),
            });
        }
    };

    // stderr: keep only the tail, never block the child.
    let (stderr_tx, stderr_rx) = mpsc::channel();
    let stderr_cap = usize::try_from(limits.stderr_bytes).unwrap_or(usize::MAX);
    // From here on, an early error must not leave the job running.
    let abort = |context: &'static str, source: io::Error| {
        shared.kill(Status::Stopped);
        let _ = wait_exit(pid, &shared);
        SandboxError::Setup { context, source }
    };
    thread::Builder::new()
        .name("sandbox-stderr".into())
        .spawn(move || {
            let _ = stderr_tx.send(read_tail(stderr, stderr_cap));
        })
        .map_err(|e| abort("starting the stderr reader", e))?;

    // Watchdog: wall clock, and disk caps when /work is a plain folder.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = {
        let shared = Arc::clone(&shared);
        let deadline = started + limits.wall;
        let disk =
            (!work_tmpfs).then(|| (spec.work.clone(), limits.work_bytes, limits.work_inodes));
        let cancel = spec.cancel.clone();
        thread::Builder::new()
            .name("sandbox-watchdog".into())
            .spawn(move || watch(&shared, deadline, disk, tree_caps, cancel, &done_rx))
            .map_err(|e| abort("starting the watchdog", e))?
    };

    // If the caller's callback panics, the job must not outlive `run`:
    // kill it, reap it, then let the panic continue.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_lines(stdout, limits, on_line, &shared)
    }));
    let stdout_bytes = match read {
        Ok(n) => n,
        Err(panic) => {
            shared.kill(Status::Stopped);
            let _ = wait_exit(pid, &shared);
            let _ = done_tx.send(());
            std::panic::resume_unwind(panic);
        }
    };

    // Wait for bwrap to exit without reaping it, so the watchdog can never
    // signal a recycled process group; then reap it with its rusage.
    let raw_status = wait_exit(pid, &shared);
    let wall = started.elapsed();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    // pid namespace teardown has killed the rest; the cgroup sweep is belt and braces.
    if let Some(c) = cgroup.as_ref() {
        c.kill_all();
    }
    let stderr_tail = stderr_rx
        .recv_timeout(Duration::from_secs(2))
        .unwrap_or_default();

    let (raw_status, rusage) = raw_status.map_err(SandboxError::setup("waiting for bwrap"))?;
    let killed = shared.reason.lock().map(|r| r.clone()).unwrap_or(None);
    let command_ran = read_status_json(status_read).contains("\"exit-code\"");
    if !command_ran && killed.is_none() && libc::WIFEXITED(raw_status) {
        let message = stderr_tail
            .lines()
            .rev()
            .find(|l| l.starts_with("bwrap: "))
            .unwrap_or("no message")
            .to_string();
        tracing::warn!(%message, "bwrap failed before running the command");
        return Err(SandboxError::BwrapFailed(message));
    }
    let exited = exit_status(raw_status);
    let oom = cgroup.as_ref().as_ref().is_some_and(JobCgroup::oom_killed);
    let pids_hit = cgroup
        .as_ref()
        .as_ref()
        .is_some_and(JobCgroup::pids_limit_hit);
    let disk_full = work_tmpfs && tmpfs_full(&spec.work);
    let status = decide(killed, exited, oom, pids_hit, disk_full);

    let rusage_cpu =
        Duration::from_secs((rusage.ru_utime.tv_sec + rusage.ru_stime.tv_sec).max(0) as u64)
            + Duration::from_micros(
                (rusage.ru_utime.tv_usec + rusage.ru_stime.tv_usec).max(0) as u64
            );
    let cpu = cgroup
        .as_ref()
        .as_ref()
        .and_then(JobCgroup::cpu)
        .or(Some(rusage_cpu));
    let peak_memory_bytes = cgroup
        .as_ref()
        .as_ref()
        .and_then(JobCgroup::peak_memory)
        .or_else(|| u64::try_from(rusage.ru_maxrss).ok().map(|kib| kib * 1024));
    drop(shared);
    // The last reference: removes the job's cgroups.
    drop(cgroup);

    tracing::debug!(?status, ?wall, "sandbox finished");
    Ok(Outcome {
        status,
        stdout_bytes,
        stderr_tail,
        wall,
        cpu,
        peak_memory_bytes,
        enforced,
    })
}

/// State shared between the reader (main thread) and the watchdog.
struct Shared {
    /// Why we killed the job; the first reason wins.
    reason: Mutex<Option<Status>>,
    /// Set once bwrap has exited and is about to be reaped: from then on its
    /// pid may be recycled, so nobody may signal it.
    reaped: Mutex<bool>,
    pgid: libc::pid_t,
    cgroup: Arc<Option<JobCgroup>>,
    /// The caller's copy of bwrap's pid ([`SandboxSpec::pid`]), cleared
    /// before bwrap is reaped.
    pid_slot: Option<Arc<std::sync::atomic::AtomicI32>>,
}

impl Shared {
    fn kill(&self, reason: Status) {
        if let Ok(mut r) = self.reason.lock() {
            if r.is_none() {
                tracing::debug!(?reason, "killing the sandbox");
                *r = Some(reason);
            }
        }
        if let Ok(reaped) = self.reaped.lock() {
            if !*reaped {
                // SAFETY: kill has no memory-safety preconditions; bwrap is
                // not reaped yet, so the group id is still ours.
                unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
            }
        }
        if let Some(c) = self.cgroup.as_ref() {
            c.kill_all();
        }
    }
}

/// Caps the watchdog enforces on the job's process tree when no cgroup does.
#[derive(Debug, Clone, Copy)]
struct TreeCaps {
    memory_bytes: Option<u64>,
    tasks: Option<u64>,
}

fn watch(
    shared: &Shared,
    deadline: Instant,
    disk: Option<(PathBuf, u64, u64)>,
    tree_caps: TreeCaps,
    cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    done: &mpsc::Receiver<()>,
) {
    let mut next_disk = Instant::now();
    let mut next_tree = Instant::now();
    loop {
        match done.recv_timeout(TICK) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let now = Instant::now();
        if now >= deadline {
            shared.kill(Status::WallTimeout);
            return;
        }
        if cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        {
            shared.kill(Status::Stopped);
            return;
        }
        if let Some((path, max_bytes, max_inodes)) = &disk {
            if now >= next_disk {
                let (bytes, inodes) = usage(path, *max_inodes);
                if bytes > *max_bytes || inodes > *max_inodes {
                    shared.kill(Status::DiskLimit);
                    return;
                }
                next_disk = Instant::now() + DISK_POLL;
            }
        }
        if (tree_caps.memory_bytes.is_some() || tree_caps.tasks.is_some()) && now >= next_tree {
            let usage = crate::tree::usage(shared.pgid);
            if tree_caps
                .memory_bytes
                .is_some_and(|max| usage.anon_bytes > max)
            {
                shared.kill(Status::MemoryLimit);
                return;
            }
            if tree_caps.tasks.is_some_and(|max| usage.tasks > max) {
                shared.kill(Status::PidsLimit);
                return;
            }
            next_tree = Instant::now() + TREE_POLL;
        }
    }
}

/// Reads stdout, hands out lines, enforces the stdout cap. Returns the bytes read.
fn read_lines(
    mut stdout: impl Read,
    limits: &Limits,
    on_line: &mut dyn FnMut(&str) -> LineAction,
    shared: &Shared,
) -> u64 {
    let max_line = limits.max_line_bytes.max(1);
    let mut buf = vec![0u8; 64 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let mut overlong = false; // dropping the rest of a line past max_line
    let mut total: u64 = 0;
    let mut deliver = |line: &[u8]| on_line(&String::from_utf8_lossy(line));
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(error = %e, "reading the sandbox's stdout");
                break;
            }
        };
        let allowed = limits.stdout_bytes.saturating_sub(total);
        let take = n.min(usize::try_from(allowed).unwrap_or(usize::MAX));
        total += n as u64;
        for chunk in buf[..take].split_inclusive(|&b| b == b'\n') {
            let (body, complete) = match chunk.split_last() {
                Some((b'\n', body)) => (body, true),
                _ => (chunk, false),
            };
            if !overlong {
                let room = max_line - line.len();
                line.extend_from_slice(&body[..body.len().min(room)]);
                if body.len() > room {
                    overlong = true;
                }
            }
            if complete {
                // An overlong line already handed out in part ends here.
                let action = if overlong && line.is_empty() {
                    LineAction::Continue
                } else {
                    deliver(&line)
                };
                line.clear();
                overlong = false;
                if action == LineAction::Stop {
                    shared.kill(Status::Stopped);
                    return total;
                }
            } else if overlong && !line.is_empty() {
                // Hand out the cut line now rather than buffering forever.
                let action = deliver(&line);
                line.clear();
                if action == LineAction::Stop {
                    shared.kill(Status::Stopped);
                    return total;
                }
            }
        }
        if total > limits.stdout_bytes {
            shared.kill(Status::OutputLimit);
            return total;
        }
    }
    if !line.is_empty() && deliver(&line) == LineAction::Stop {
        shared.kill(Status::Stopped);
    }
    total
}

/// Keeps the last `cap` bytes of `r`.
fn read_tail(mut r: impl Read, cap: usize) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > cap.saturating_mul(2).max(64 * 1024) {
                    let cut = tail.len() - cap;
                    tail.drain(..cut);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if tail.len() > cap {
        let cut = tail.len() - cap;
        tail.drain(..cut);
    }
    String::from_utf8_lossy(&tail).into_owned()
}

fn wait_exit(pid: libc::pid_t, shared: &Shared) -> io::Result<(libc::c_int, libc::rusage)> {
    loop {
        // SAFETY: an all-zero siginfo_t is valid; waitid writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid out-pointer; WNOWAIT leaves the child waitable.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // From now on nobody may signal the group: its id may be recycled.
    if let Some(slot) = &shared.pid_slot {
        slot.store(0, std::sync::atomic::Ordering::SeqCst);
    }
    let _ = shared.reaped.lock().map(|mut r| *r = true);
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is valid; wait4 writes into it.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid out-pointers for our own child.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut rusage) };
        if rc == pid {
            return Ok((status, rusage));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// bwrap exits with the command's code, or 128+N when the command died of
/// signal N; bwrap itself may also die of a signal (e.g. our SIGKILL).
fn exit_status(raw: libc::c_int) -> Status {
    if libc::WIFSIGNALED(raw) {
        return Status::Signalled {
            signal: libc::WTERMSIG(raw),
        };
    }
    let code = libc::WEXITSTATUS(raw);
    if (129..=128 + 64).contains(&code) {
        Status::Signalled { signal: code - 128 }
    } else {
        Status::Exited { code }
    }
}

/// How the job ended, from what we did and what the kernel reports.
fn decide(
    killed: Option<Status>,
    exited: Status,
    oom: bool,
    pids_hit: bool,
    disk_full: bool,
) -> Status {
    match killed {
        // A job that spins after hitting the pids or memory limit (a fork
        // bomb retrying) is better explained by that limit than by the clock.
        Some(Status::WallTimeout) if pids_hit => Status::PidsLimit,
        Some(Status::WallTimeout) if oom => Status::MemoryLimit,
        Some(reason) => reason,
        None if exited.success() => exited,
        // Both fire in a fork bomb: every failed fork first copies the
        // parent's memory map, so the bomb often OOMs right after it hits
        // the pids limit. The process limit is the cause worth telling.
        None if pids_hit => Status::PidsLimit,
        None if oom => Status::MemoryLimit,
        None if disk_full => Status::DiskLimit,
        None => exited,
    }
}

fn rlimits(limits: &Limits, nproc: Option<u64>) -> Vec<(libc::__rlimit_resource_t, libc::rlim_t)> {
    let mut v = vec![
        (libc::RLIMIT_CORE, 0),
        (libc::RLIMIT_FSIZE, limits.file_size_bytes),
        (libc::RLIMIT_NOFILE, limits.open_files),
    ];
    if let Some(cpu) = limits.cpu_seconds {
        v.push((libc::RLIMIT_CPU, cpu));
    }
    if let Some(n) = nproc {
        v.push((libc::RLIMIT_NPROC, n));
    }
    v
}

fn cloexec_pipe() -> io::Result<(File, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: a valid out-array of two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((File::from(read), write))
}

/// What bwrap wrote on `--json-status-fd`, read once bwrap has exited
/// (non-blocking, in case anything still holds the write end).
fn read_status_json(mut f: File) -> String {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < 64 * 1024 {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn memfd_with(bytes: &[u8]) -> io::Result<OwnedFd> {
    let name = CString::new("sanhak-seccomp")?;
    // SAFETY: a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = File::from(owned);
    file.write_all(bytes)?;
    io::Seek::seek(&mut file, io::SeekFrom::Start(0))?;
    Ok(OwnedFd::from(file))
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

fn guest_ok(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !p.as_os_str().as_bytes().contains(&0)
}

fn validate(spec: &SandboxSpec) -> Result<(), SandboxError> {
    let bad = |m: String| Err(SandboxError::InvalidSpec(m));
    if spec.command.is_empty() {
        return bad("the command is empty".into());
    }
    if !spec.work.is_absolute() || !spec.work.is_dir() {
        return bad(format!(
            "the work folder {} is not an existing absolute folder",
            spec.work.display()
        ));
    }
    for b in &spec.ro_binds {
        if !guest_ok(&b.guest)
            || b.guest == Path::new("/")
            || b.guest.starts_with("/dev")
            || b.guest.starts_with("/proc")
        {
            return bad(format!(
                "bind target {} is not a plain absolute path",
                b.guest.display()
            ));
        }
        if !b.host.exists() {
            return bad(format!("bind source {} does not exist", b.host.display()));
        }
    }
    for d in &spec.dev_binds {
        if !guest_ok(d) || !d.starts_with("/dev") {
            return bad(format!("device {} is not under /dev", d.display()));
        }
        if crate::FORBIDDEN_DEVICES.iter().any(|f| d == Path::new(f)) {
            return bad(format!("device {} may never enter a sandbox", d.display()));
        }
    }
    if let Some(cwd) = &spec.cwd {
        if !guest_ok(cwd) {
            return bad(format!(
                "cwd {} is not a plain absolute path",
                cwd.display()
            ));
        }
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return bad(format!("environment variable {k:?} is invalid"));
        }
    }
    Ok(())
}

/// bwrap's options, passed through `--args FD`; the command follows `--` on argv.
pub(crate) fn bwrap_args(spec: &SandboxSpec, seccomp_fd: RawFd) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&OsStr]| a.extend(items.iter().map(|s| s.to_os_string()));
    let s = |x: &'static str| OsStr::new(x);
    let uid = spec.uid.to_string();
    let gid = spec.gid.to_string();
    push(&[
        s("--unshare-all"),
        s("--unshare-user"),
        s("--disable-userns"),
        s("--uid"),
        OsStr::new(&uid),
        s("--gid"),
        OsStr::new(&gid),
        s("--die-with-parent"),
        s("--new-session"),
        s("--clearenv"),
        s("--cap-drop"),
        s("ALL"),
        s("--hostname"),
        s("sandbox"),
        s("--ro-bind"),
        s("/usr"),
        s("/usr"),
    ]);
    // Merged-/usr hosts have /lib -> usr/lib etc.; older ones have folders.
    for top in ["/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin"] {
        let p = Path::new(top);
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(p) {
                    push(&[s("--symlink"), target.as_os_str(), p.as_os_str()]);
                }
            }
            Ok(m) if m.is_dir() => push(&[s("--ro-bind"), p.as_os_str(), p.as_os_str()]),
            _ => {}
        }
    }
    let tmp_size = spec.limits.tmp_bytes.max(4096).to_string();
    let work = crate::GUEST_WORK;
    push(&[
        s("--ro-bind-try"),
        s("/etc/ld.so.cache"),
        s("/etc/ld.so.cache"),
        s("--proc"),
        s("/proc"),
        s("--dev"),
        s("/dev"),
    ]);
    for d in &spec.dev_binds {
        push(&[s("--dev-bind"), d.as_os_str(), d.as_os_str()]);
    }
    push(&[
        // /dev is a tmpfs of bwrap's with no size: give shared memory its own
        // sized tmpfs, then make the rest of /dev read-only.
        s("--perms"),
        s("1777"),
        s("--size"),
        OsStr::new(&tmp_size),
        s("--tmpfs"),
        s("/dev/shm"),
        s("--remount-ro"),
        s("/dev"),
        s("--size"),
        OsStr::new(&tmp_size),
        s("--tmpfs"),
        s("/tmp"),
        s("--bind"),
        spec.work.as_os_str(),
        s(work),
    ]);
    for b in &spec.ro_binds {
        push(&[s("--ro-bind"), b.host.as_os_str(), b.guest.as_os_str()]);
    }
    let fd = seccomp_fd.to_string();
    let cwd = spec.cwd.clone().unwrap_or_else(|| PathBuf::from(work));
    push(&[
        // The root is bwrap's own tmpfs: nothing may be added to it after setup.
        s("--remount-ro"),
        s("/"),
        s("--seccomp"),
        OsStr::new(&fd),
        s("--chdir"),
        cwd.as_os_str(),
    ]);
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("HOME".into(), work.into()),
    ];
    env.extend(spec.env.iter().cloned());
    for (k, v) in &env {
        a.extend([os("--setenv"), os(k), os(v)]);
    }
    a
}

/// The options as bwrap's `--args FD` reads them: NUL-terminated strings.
/// Passing them through a file keeps host paths and settings out of
/// `/proc/1/cmdline` inside the sandbox; only the command stays on argv.
fn nul_separated(args: &[OsString]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in args {
        out.extend_from_slice(a.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_prefers_the_clearest_reason() {
        let ok = Status::Exited { code: 0 };
        let bad = Status::Exited { code: 1 };
        assert_eq!(decide(None, ok.clone(), false, false, false), ok);
        assert_eq!(decide(None, bad.clone(), false, false, false), bad);
        assert_eq!(
            decide(None, Status::Signalled { signal: 9 }, true, false, false),
            Status::MemoryLimit
        );
        assert_eq!(
            decide(None, bad.clone(), false, true, false),
            Status::PidsLimit
        );
        assert_eq!(
            decide(None, bad.clone(), false, false, true),
            Status::DiskLimit
        );
        assert_eq!(
            decide(Some(Status::WallTimeout), bad.clone(), false, true, false),
            Status::PidsLimit
        );
        assert_eq!(
            decide(Some(Status::WallTimeout), bad.clone(), false, false, false),
            Status::WallTimeout
        );
        assert_eq!(
            decide(None, Status::Signalled { signal: 9 }, true, true, false),
            Status::PidsLimit
        );
        assert_eq!(
            decide(Some(Status::Stopped), bad.clone(), true, true, true),
            Status::Stopped
        );
        assert_eq!(
            decide(Some(Status::OutputLimit), bad, false, false, false),
            Status::OutputLimit
        );
        // a job that succeeded despite a child's OOM kill succeeded
        assert_eq!(decide(None, ok.clone(), true, true, true), ok);
    }

    #[test]
    fn exit_codes_map_to_signals_the_way_bwrap_reports_them() {
        assert_eq!(exit_status(0), Status::Exited { code: 0 });
        assert_eq!(exit_status(3 << 8), Status::Exited { code: 3 });
        assert_eq!(exit_status(137 << 8), Status::Signalled { signal: 9 });
        assert_eq!(exit_status(9), Status::Signalled { signal: 9 });
    }

    #[test]
    fn lines_are_cut_and_the_cap_kills() {
        let shared = Shared {
            reason: Mutex::new(None),
            reaped: Mutex::new(true),
            pgid: 0,
            cgroup: Arc::new(None),
            pid_slot: None,
        };
        let limits = Limits {
            max_line_bytes: 4,
            stdout_bytes: 1000,
            ..Limits::default()
        };
        let mut seen = Vec::new();
        let input: &[u8] = b"ab\nabcdefgh\nxyz";
        let n = read_lines(
            input,
            &limits,
            &mut |l| {
                seen.push(l.to_string());
                LineAction::Continue
            },
            &shared,
        );
        assert_eq!(n, input.len() as u64);
        assert_eq!(seen, ["ab", "abcd", "xyz"]);

        // The same, arriving three bytes at a time.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(3).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut seen = Vec::new();
        read_lines(
            Trickle(
                b"ab
abcdefgh

xyz",
            ),
            &limits,
            &mut |l| {
                seen.push(l.to_string());
                LineAction::Continue
            },
            &shared,
        );
        assert_eq!(seen, ["ab", "abcd", "", "xyz"]);
        assert!(shared.reason.lock().expect("lock").is_none());

        let limits = Limits {
            stdout_bytes: 5,
            ..Limits::default()
        };
        let mut seen = Vec::new();
        read_lines(
            &b"a\nb\nccccccc\n"[..],
            &limits,
            &mut |l| {
                seen.push(l.to_string());
                LineAction::Continue
            },
            &shared,
        );
        assert_eq!(seen, ["a", "b"]);
        assert_eq!(
            *shared.reason.lock().expect("lock"),
            Some(Status::OutputLimit)
        );
    }

    #[test]
    fn stop_kills() {
        let shared = Shared {
            reason: Mutex::new(None),
            reaped: Mutex::new(true),
            pgid: 0,
            cgroup: Arc::new(None),
            pid_slot: None,
        };
        let mut count = 0;
        read_lines(
            &b"1\n2\n3\n4\n"[..],
            &Limits::default(),
            &mut |_| {
                count += 1;
                if count == 2 {
                    LineAction::Stop
                } else {
                    LineAction::Continue
                }
            },
            &shared,
        );
        assert_eq!(count, 2);
        assert_eq!(*shared.reason.lock().expect("lock"), Some(Status::Stopped));
    }

    #[test]
    fn tail_keeps_the_end() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let tail = read_tail(&data[..], 10);
        assert_eq!(tail, String::from_utf8_lossy(&data[data.len() - 10..]));
    }

    #[test]
    fn args_have_the_isolation_flags_and_end_with_the_command() {
        let mut spec = SandboxSpec::new(vec!["/opt/prog".into(), "--x".into()], "/w");
        spec.env.push(("A".into(), "b".into()));
        let args = bwrap_args(&spec, 7);
        let text: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for flag in [
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--cap-drop",
        ] {
            assert!(text.contains(&flag.to_string()), "{flag}");
        }
        assert!(!text.iter().any(|a| a == "--" || a == "/opt/prog"));
        assert!(text
            .windows(2)
            .any(|w| w[0] == "--remount-ro" && w[1] == "/"));
        assert_eq!(
            nul_separated(&args[..2]),
            b"--unshare-all\0--unshare-user\0"
        );
        assert!(text.windows(2).any(|w| w[0] == "--seccomp" && w[1] == "7"));
        assert!(!text.iter().any(|a| a == "/etc" || a == "/etc/passwd"));
    }

    #[test]
    fn a_gpu_job_gets_exactly_its_device_nodes_and_never_uvm_tools() {
        let mut spec = SandboxSpec::new(vec!["/opt/prog".into()], "/w");
        spec.add_gpus(&[1]);
        spec.add_gpus(&[1]);
        spec.add_library_dirs(&[
            PathBuf::from("/usr/lib/x86_64-linux-gnu"),
            PathBuf::from("/opt/cuda/lib"),
        ]);
        let args = bwrap_args(&spec, 3);
        let text: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let devices: Vec<&str> = text
            .windows(3)
            .filter(|w| w[0] == "--dev-bind")
            .map(|w| {
                assert_eq!(w[1], w[2], "a device is bound at its own path");
                w[1].as_str()
            })
            .collect();
        assert_eq!(
            devices,
            ["/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm"]
        );
        assert!(!text.iter().any(|a| a.contains("uvm-tools")));
        assert!(!text.iter().any(|a| a == "/dev/nvidia0"));
        // Devices are bound after the fresh /dev and before it turns read-only.
        let pos = |needle: &[&str]| {
            text.windows(needle.len())
                .position(|w| w.iter().zip(needle).all(|(a, b)| a == b))
                .expect("present")
        };
        assert!(pos(&["--dev", "/dev"]) < pos(&["--dev-bind", "/dev/nvidia1"]));
        assert!(pos(&["--dev-bind", "/dev/nvidia-uvm"]) < pos(&["--remount-ro", "/dev"]));
        // The library folder outside /usr is bound read-only; both are on the path.
        assert!(text
            .windows(3)
            .any(|w| w[0] == "--ro-bind" && w[1] == "/opt/cuda/lib" && w[2] == "/opt/cuda/lib"));
        assert!(!text
            .windows(2)
            .any(|w| w[0] == "--ro-bind" && w[1] == "/usr/lib/x86_64-linux-gnu"));
        assert!(text.windows(3).any(|w| w[0] == "--setenv"
            && w[1] == "LD_LIBRARY_PATH"
            && w[2] == "/usr/lib/x86_64-linux-gnu:/opt/cuda/lib"));

        // A CPU job gets no NVIDIA node at all.
        let cpu = bwrap_args(&SandboxSpec::new(vec!["/opt/prog".into()], "/w"), 3);
        assert!(!cpu.iter().any(|a| a.to_string_lossy().contains("nvidia")));
    }

    #[test]
    fn uvm_tools_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = SandboxSpec::new(vec!["/opt/prog".into()], dir.path());
        spec.dev_binds.push(PathBuf::from("/dev/nvidia-uvm-tools"));
        match validate(&spec) {
            Err(SandboxError::InvalidSpec(m)) => assert!(m.contains("nvidia-uvm-tools"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        spec.dev_binds.clear();
        spec.add_gpus(&[0]);
        assert!(validate(&spec).is_ok());
    }
}
