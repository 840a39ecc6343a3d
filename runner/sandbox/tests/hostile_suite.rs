//! The hostile suite at the sandbox level, with real bubblewrap.
//!
//! Each case runs a small hostile program (tests/hostile/*.rs, compiled once
//! per test run with the host `rustc -O`, bound read-only at /opt/case) or a
//! shell one-liner, and asserts: the job ends with the expected, clearly
//! described status; the host is unharmed (a marker file outside the work
//! folder is unchanged, no process with the case's unique argv is left); and
//! a normal job right after still succeeds.
//!
//! Every case is skipped (with a message) when bwrap is not installed.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sanhak_sandbox::{
    bwrap_path, read_output, run, Bind, Limits, LineAction, Outcome, OutputError, SandboxSpec,
    Status, WorkDir,
};

const CANARY_NAME: &str = "SANHAK_SECRET_CANARY";
const CANARY_VALUE: &str = "canary-7f3a9c1e-do-not-leak";
const MARKER_TEXT: &str = "host marker: untouched";

struct Fixture {
    /// Compiled hostile programs, bound at /opt/case.
    progs: PathBuf,
    /// A file outside every work folder that no job may change.
    marker: PathBuf,
    _dir: tempfile::TempDir,
}

fn fixture() -> Option<&'static Fixture> {
    if bwrap_path().is_none() {
        eprintln!("skipping: bubblewrap (bwrap) is not installed; install the Debian package `bubblewrap`");
        return None;
    }
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    Some(FIXTURE.get_or_init(|| {
        // The host secret that must never be visible inside.
        std::env::set_var(CANARY_NAME, CANARY_VALUE);
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("marker.txt");
        std::fs::write(&marker, MARKER_TEXT).expect("marker");
        // Prebuilt programs, for running this suite as an unprivileged user
        // who cannot reach the toolchain (see the README).
        if let Some(prebuilt) = std::env::var_os("SANHAK_HOSTILE_PROGS") {
            return Fixture {
                progs: PathBuf::from(prebuilt),
                marker,
                _dir: dir,
            };
        }
        // Reachable by the unprivileged host account of the host_user test.
        std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).expect("chmod");
        let progs = dir.path().join("progs");
        std::fs::create_dir(&progs).expect("mkdir progs");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let handles: Vec<_> = ["bombs", "net", "escape"]
            .into_iter()
            .map(|name| {
                let (rustc, src, progs) = (rustc.clone(), src.clone(), progs.clone());
                std::thread::spawn(move || {
                    let out = Command::new(&rustc)
                        .args(["-O", "--edition", "2021", "-o"])
                        .arg(progs.join(name))
                        .arg(src.join(format!("{name}.rs")))
                        .output()
                        .expect("run rustc");
                    assert!(
                        out.status.success(),
                        "compiling {name}.rs failed:\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                })
            })
            .collect();
        for h in handles {
            h.join().expect("compile thread");
        }
        Fixture {
            progs,
            marker,
            _dir: dir,
        }
    }))
}

fn limits() -> Limits {
    Limits {
        wall: Duration::from_secs(4),
        memory_bytes: 256 << 20,
        pids: 64,
        work_bytes: 8 << 20,
        work_inodes: 300,
        tmp_bytes: 8 << 20,
        stdout_bytes: 1 << 20,
        stderr_bytes: 64 << 10,
        ..Limits::default()
    }
}

/// One job: its own work folder and a unique token for its argv.
struct Job {
    work: WorkDir,
    token: String,
    _dir: tempfile::TempDir,
}

fn job(limits: &Limits) -> Job {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = tempfile::tempdir().expect("tempdir");
    let work = WorkDir::create(&dir.path().join("work"), limits).expect("workdir");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    Job {
        work,
        token: format!("sanhak-case-{}-{n}-{nanos:x}", std::process::id()),
        _dir: dir,
    }
}

impl Job {
    /// `/opt/case/<prog> <args…> <token>`.
    fn spec(&self, fx: &Fixture, prog: &str, args: &[&str], limits: &Limits) -> SandboxSpec {
        let mut command: Vec<OsString> = vec![format!("/opt/case/{prog}").into()];
        command.extend(args.iter().map(OsString::from));
        command.push(self.token.clone().into());
        let mut spec = SandboxSpec::new(command, self.work.path());
        spec.ro_binds.push(Bind::new(&fx.progs, "/opt/case"));
        spec.limits = limits.clone();
        spec
    }

    /// `/bin/sh -c <script> sh <token>`.
    fn sh(&self, script: &str, limits: &Limits) -> SandboxSpec {
        let command: Vec<OsString> = vec![
            "/bin/sh".into(),
            "-c".into(),
            script.into(),
            "sh".into(),
            self.token.clone().into(),
        ];
        let mut spec = SandboxSpec::new(command, self.work.path());
        spec.limits = limits.clone();
        spec
    }
}

/// Runs to the end, collecting every stdout line.
fn run_all(spec: &SandboxSpec) -> (Outcome, Vec<String>) {
    let mut lines = Vec::new();
    let outcome = run(spec, &mut |l| {
        if lines.len() < 100_000 {
            lines.push(l.to_string());
        }
        LineAction::Continue
    })
    .expect("the sandbox itself works");
    (outcome, lines)
}

fn processes_with(token: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == std::process::id().to_string() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            if cmdline.windows(token.len()).any(|w| w == token.as_bytes()) {
                found.push(format!("{name}: {}", String::from_utf8_lossy(&cmdline)));
            }
        }
    }
    found
}

/// The host is unharmed: marker unchanged, nothing left running with the
/// case's token, and a normal job right after succeeds.
fn assert_host_fine(fx: &Fixture, token: &str) {
    assert_eq!(
        std::fs::read_to_string(&fx.marker).expect("marker"),
        MARKER_TEXT
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = processes_with(token);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let next = job(&limits());
    let (outcome, lines) = run_all(&next.sh("echo ok; id -u", &limits()));
    assert_eq!(outcome.status, Status::Exited { code: 0 }, "{outcome:?}");
    assert_eq!(lines, ["ok", "1000"]);
}

fn enforced(outcome: &Outcome, what: &str) -> bool {
    outcome.enforced.iter().any(|e| e == what)
}

#[test]
fn a_normal_job_runs_and_reports() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let mut spec = j.sh(
        "echo hello; echo to-stderr >&2; pwd; echo \"$HOME $PATH $GREETING\"; hostname; \
         echo data > /work/out.txt; ls /etc; exit 0",
        &limits(),
    );
    spec.env.push(("GREETING".into(), "hi".into()));
    let (outcome, lines) = run_all(&spec);
    assert_eq!(outcome.status, Status::Exited { code: 0 }, "{outcome:?}");
    assert!(outcome.status.success());
    assert_eq!(
        lines[..4],
        ["hello", "/work", "/work /usr/bin:/bin hi", "sandbox"]
    );
    // Nothing of /etc but the loader cache.
    assert_eq!(lines[4..], ["ld.so.cache"]);
    assert!(outcome.stderr_tail.contains("to-stderr"));
    assert_eq!(
        read_output(j.work.path(), "out.txt", 100).expect("output"),
        b"data\n"
    );
    assert!(enforced(&outcome, "seccomp") && enforced(&outcome, "namespaces"));
    eprintln!("enforced on this host: {:?}", outcome.enforced);
    assert_host_fine(fx, &j.token);
}

#[test]
fn exit_codes_and_signals_are_reported() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let (outcome, _) = run_all(&j.sh("exit 7", &limits()));
    assert_eq!(outcome.status, Status::Exited { code: 7 });
    let (outcome, _) = run_all(&j.sh("kill -SEGV $$", &limits()));
    assert_eq!(outcome.status, Status::Signalled { signal: 11 });
    assert!(outcome
        .status
        .describe(&limits())
        .contains("segmentation fault"));
    assert_host_fine(fx, &j.token);
}

#[test]
fn fork_bomb_hits_the_pids_limit() {
    let Some(fx) = fixture() else { return };
    let l = Limits {
        wall: Duration::from_secs(3),
        ..limits()
    };
    let j = job(&l);
    let (outcome, _) = run_all(&j.spec(fx, "bombs", &["forkbomb"], &l));
    if enforced(&outcome, "cgroup-pids") || enforced(&outcome, "watchdog-pids") {
        assert_eq!(outcome.status, Status::PidsLimit, "{outcome:?}");
        assert!(outcome.status.describe(&l).contains("too many processes"));
    } else {
        eprintln!("no pids cgroup on this host: {:?}", outcome.status);
        assert!(!outcome.status.success());
    }
    assert_host_fine(fx, &j.token);
}

#[test]
fn thread_bomb_hits_the_pids_limit() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let (outcome, _) = run_all(&j.spec(fx, "bombs", &["threadbomb"], &limits()));
    if enforced(&outcome, "cgroup-pids") {
        assert_eq!(outcome.status, Status::PidsLimit, "{outcome:?}");
        assert!(outcome.stderr_tail.contains("failed"), "{outcome:?}");
    } else {
        assert!(!outcome.status.success());
    }
    assert_host_fine(fx, &j.token);
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let (outcome, _) = run_all(&j.spec(fx, "bombs", &["membomb"], &limits()));
    // The cgroup, or (without one) the watchdog's measure of the tree.
    assert_eq!(outcome.status, Status::MemoryLimit, "{outcome:?}");
    assert_eq!(
        outcome.status.describe(&limits()),
        "ran out of memory (limit 256 MiB) and was stopped"
    );
    if enforced(&outcome, "cgroup-memory") {
        let peak = outcome.peak_memory_bytes.expect("peak memory");
        assert!((200 << 20..=260 << 20).contains(&peak), "peak {peak}");
    } else {
        assert!(enforced(&outcome, "watchdog-memory"), "{outcome:?}");
    }
    assert_host_fine(fx, &j.token);
}

#[test]
fn infinite_loop_hits_the_wall_clock() {
    let Some(fx) = fixture() else { return };
    let l = Limits {
        wall: Duration::from_secs(2),
        ..limits()
    };
    let j = job(&l);
    let (outcome, _) = run_all(&j.spec(fx, "bombs", &["spin"], &l));
    assert_eq!(outcome.status, Status::WallTimeout, "{outcome:?}");
    // Killed at the limit, not before it (a lower bound, not a speed assertion).
    assert!(outcome.wall >= Duration::from_secs(2), "{outcome:?}");
    assert_eq!(
        outcome.status.describe(&l),
        "ran out of time (limit 2 s) and was stopped"
    );
    let cpu = outcome.cpu.expect("cpu time");
    eprintln!("spin: wall {:?} cpu {cpu:?}", outcome.wall);
    if outcome.enforced.iter().any(|e| e.starts_with("cgroup-")) {
        // The spinner was killed, never reaped by a waiting parent: only the
        // cgroup's accounting sees its CPU time.
        assert!(cpu >= Duration::from_millis(100), "cpu {cpu:?}");
    }
    assert_host_fine(fx, &j.token);
}

#[test]
fn sleeping_forever_hits_the_wall_clock() {
    let Some(fx) = fixture() else { return };
    let l = Limits {
        wall: Duration::from_secs(2),
        ..limits()
    };
    let j = job(&l);
    let (outcome, _) = run_all(&j.sh("sleep 1000; echo never", &l));
    assert_eq!(outcome.status, Status::WallTimeout, "{outcome:?}");
    assert_host_fine(fx, &j.token);
}

#[test]
fn a_silent_job_is_stopped_when_cancelled() {
    let Some(fx) = fixture() else { return };
    let l = Limits {
        wall: Duration::from_secs(60),
        ..limits()
    };
    let j = job(&l);
    let mut spec = j.sh("sleep 1000; echo never", &l);
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    spec.cancel = Some(cancel.clone());
    let flag = cancel.clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let (outcome, lines) = run_all(&spec);
    canceller.join().expect("canceller");
    assert_eq!(outcome.status, Status::Stopped, "{outcome:?}");
    assert!(lines.is_empty());
    // Stopped (by the flag), not WallTimeout (the 60 s wall clock).
    assert_host_fine(fx, &j.token);
}

#[test]
fn filling_the_disk_hits_the_disk_limit() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let (outcome, _) = run_all(&j.spec(fx, "bombs", &["diskfill"], &limits()));
    assert_eq!(outcome.status, Status::DiskLimit, "{outcome:?}");
    assert!(outcome.status.describe(&limits()).contains("8 MiB"));
    if j.work.is_tmpfs() {
        assert!(outcome.stderr_tail.contains("No space left"), "{outcome:?}");
    }
    assert_host_fine(fx, &j.token);
}

#[test]
fn filling_tmp_and_shared_memory_stops_at_their_size() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let (outcome, lines) = run_all(&j.sh(
        "for d in /tmp /dev/shm; do head -c 16777216 /dev/zero > $d/fill 2>/dev/null; \
         echo \"$d $(wc -c < $d/fill)\"; rm $d/fill; done",
        &limits(),
    ));
    assert!(outcome.status.success(), "{outcome:?}");
    // Each is capped at tmp_bytes (8 MiB), short of the 16 MiB written.
    for (line, dir) in lines.iter().zip(["/tmp", "/dev/shm"]) {
        let (d, n) = line.split_once(' ').expect("two fields");
        assert_eq!(d, dir);
        let n: u64 = n.trim().parse().expect("bytes");
        assert!(n <= 8 << 20, "{line}");
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_host_fine(fx, &j.token);
}

#[test]
fn many_small_files_hit_the_inode_limit() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let (outcome, _) = run_all(&j.spec(fx, "bombs", &["inodes"], &limits()));
    assert_eq!(outcome.status, Status::DiskLimit, "{outcome:?}");
    assert!(outcome.status.describe(&limits()).contains("300 files"));
    assert_host_fine(fx, &j.token);
}

#[test]
fn stdout_flood_hits_the_output_limit() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let (outcome, _) = run_all(&j.spec(fx, "bombs", &["flood"], &limits()));
    assert_eq!(outcome.status, Status::OutputLimit, "{outcome:?}");
    assert!(outcome.stdout_bytes > 1 << 20);
    assert!(outcome.status.describe(&limits()).contains("1 MiB"));
    assert_host_fine(fx, &j.token);
}

#[test]
fn an_event_flood_is_stopped_by_the_caller() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let mut seen = 0u32;
    let outcome = run(&j.spec(fx, "bombs", &["events"], &limits()), &mut |line| {
        assert!(line.starts_with("{\"event\":\"step\""), "{line}");
        seen += 1;
        if seen >= 1000 {
            LineAction::Stop
        } else {
            LineAction::Continue
        }
    })
    .expect("run");
    assert_eq!(outcome.status, Status::Stopped, "{outcome:?}");
    assert_eq!(seen, 1000);
    assert_host_fine(fx, &j.token);
}

#[test]
fn long_lines_are_cut() {
    let Some(fx) = fixture() else { return };
    let l = Limits {
        max_line_bytes: 10,
        ..limits()
    };
    let j = job(&l);
    let (outcome, lines) = run_all(&j.sh("printf '%0100d\\nshort\\n' 0", &l));
    assert!(outcome.status.success());
    assert_eq!(lines, ["0000000000", "short"]);
    assert_host_fine(fx, &j.token);
}

#[test]
fn a_daemon_does_not_outlive_the_job() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let (outcome, lines) = run_all(&j.spec(fx, "bombs", &["daemon"], &limits()));
    assert_eq!(outcome.status, Status::Exited { code: 0 }, "{outcome:?}");
    assert_eq!(lines, ["parent leaving"]);
    let heartbeat = j.work.path().join("heartbeat");
    assert!(heartbeat.exists(), "the daemon did start");
    // No process with the token (the daemon keeps its parent's argv) ...
    assert!(
        processes_with(&j.token).is_empty(),
        "{:?}",
        processes_with(&j.token)
    );
    // ... and the heartbeat has stopped.
    let before = std::fs::read_to_string(&heartbeat).expect("heartbeat");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        std::fs::read_to_string(&heartbeat).expect("heartbeat"),
        before
    );
    assert_host_fine(fx, &j.token);
}

#[test]
fn host_loopback_is_unreachable() {
    let Some(fx) = fixture() else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr").to_string();
    let j = job(&limits());
    let (outcome, lines) = run_all(&j.spec(fx, "net", &["connect", &addr], &limits()));
    assert_eq!(
        outcome.status,
        Status::Exited { code: 1 },
        "{outcome:?} {lines:?}"
    );
    // ECONNREFUSED: the sandbox's own loopback has nothing listening.
    assert!(lines[0].starts_with("ERR 111 "), "{lines:?}");
    assert_eq!(
        listener.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "the host listener must see no connection"
    );
    assert_host_fine(fx, &j.token);
}

#[test]
fn external_addresses_are_unreachable_at_once() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    // TEST-NET-1 (RFC 5737): never routed anywhere. The program also
    // refuses to connect at all if the sandbox has any route.
    let (outcome, lines) = run_all(&j.spec(fx, "net", &["connect", "192.0.2.1:53"], &limits()));
    assert_eq!(
        outcome.status,
        Status::Exited { code: 1 },
        "{outcome:?} {lines:?}"
    );
    // ENETUNREACH, immediately: no route, so no packet leaves.
    let parts: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(parts[..2], ["ERR", "101"], "{lines:?}");
    let millis: u64 = parts[2].parse().expect("millis");
    assert!(millis < 1000, "{lines:?}");
    let (_, ifaces) = run_all(&j.spec(fx, "net", &["ifaces"], &limits()));
    let names: Vec<&str> = ifaces
        .iter()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    assert_eq!(names, ["lo"], "{ifaces:?}");
    assert_host_fine(fx, &j.token);
}

#[test]
fn dns_lookups_fail() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let (outcome, lines) = run_all(&j.spec(fx, "net", &["dns", "example.com"], &limits()));
    assert_eq!(
        outcome.status,
        Status::Exited { code: 1 },
        "{outcome:?} {lines:?}"
    );
    assert!(lines[0].starts_with("DNS_FAILED"), "{lines:?}");
    assert_host_fine(fx, &j.token);
}

#[test]
fn host_environment_is_invisible_under_proc() {
    let Some(fx) = fixture() else { return };
    assert_eq!(std::env::var(CANARY_NAME).as_deref(), Ok(CANARY_VALUE));
    let j = job(&limits());
    // The program gets the canary reversed, so that its own argv does not contain it.
    let reversed: String = CANARY_VALUE.chars().rev().collect();
    let (outcome, lines) = run_all(&j.spec(fx, "escape", &["environ", &reversed], &limits()));
    assert!(outcome.status.success(), "{outcome:?}");
    eprintln!("{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("CLEAN ")), "{lines:?}");
    // bwrap's options (host paths included) do not show on its argv either.
    let pid1 = lines
        .iter()
        .find_map(|l| l.strip_prefix("PID1_CMDLINE "))
        .expect("pid 1 cmdline");
    assert!(pid1.contains("bwrap --args "), "{pid1}");
    let host_work = j.work.path().to_string_lossy().into_owned();
    assert!(!pid1.contains(&host_work), "{pid1}");
    // It did read something (its own environ at least), so the check is real.
    let read: usize = lines
        .iter()
        .find_map(|l| l.strip_prefix("CLEAN "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(read >= 2, "{lines:?}");
    assert_host_fine(fx, &j.token);
}

#[test]
fn a_job_cannot_read_another_jobs_files() {
    let Some(fx) = fixture() else { return };
    let l = Limits {
        wall: Duration::from_secs(20),
        ..limits()
    };
    let a = job(&l);
    let secret = format!("secret-of-a-{}", a.token);
    let spec_a = a.spec(fx, "bombs", &["secret", &secret], &l);
    let a_work = a.work.path().to_path_buf();
    let handle = std::thread::spawn(move || run_all(&spec_a).0);
    let secret_path = a_work.join("secret.txt");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !secret_path.exists() {
        assert!(Instant::now() < deadline, "job A never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let a_pids: Vec<String> = processes_with(&a.token)
        .into_iter()
        .filter_map(|p| p.split(':').next().map(str::to_string))
        .collect();
    assert!(!a_pids.is_empty());
    let b = job(&limits());
    let secret_host = secret_path.to_string_lossy().into_owned();
    for pid in &a_pids {
        let (outcome, lines) =
            run_all(&b.spec(fx, "escape", &["readother", &secret_host, pid], &limits()));
        assert!(outcome.status.success(), "{outcome:?}");
        assert_eq!(lines, ["NOTHING"]);
    }
    std::fs::write(a_work.join("stop"), b"").expect("stop A");
    let outcome_a = handle.join().expect("job A");
    assert_eq!(
        outcome_a.status,
        Status::Exited { code: 0 },
        "{outcome_a:?}"
    );
    assert_host_fine(fx, &a.token);
    assert_host_fine(fx, &b.token);
}

#[test]
fn writes_outside_work_do_not_reach_the_host() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let (outcome, lines) = run_all(&j.spec(fx, "escape", &["writeout"], &limits()));
    assert!(outcome.status.success(), "{outcome:?}");
    let t = &j.token;
    let wrote = |p: &str| lines.iter().any(|l| l == &format!("WROTE {p}"));
    assert!(!wrote(&format!("/usr/sanhak-escape-{t}")), "{lines:?}");
    assert!(!wrote(&format!("/usr/bin/sanhak-escape-{t}")), "{lines:?}");
    assert!(!wrote(&format!("/sanhak-escape-{t}")), "{lines:?}");
    assert!(!wrote(&format!("/proc/sanhak-escape-{t}")), "{lines:?}");
    assert!(!wrote(&format!("/dev/sanhak-escape-{t}")), "{lines:?}");
    // Shared memory works (a private, sized tmpfs).
    assert!(wrote(&format!("/dev/shm/sanhak-escape-{t}")), "{lines:?}");
    // The private /tmp takes the write; the host /tmp does not see it.
    assert!(wrote(&format!("/tmp/sanhak-escape-{t}")), "{lines:?}");
    assert!(wrote(&format!("/work/sanhak-escape-{t}")), "{lines:?}");
    assert!(!Path::new(&format!("/tmp/sanhak-escape-{t}")).exists());
    assert!(!Path::new(&format!("/usr/sanhak-escape-{t}")).exists());
    assert!(!Path::new(&format!("/sanhak-escape-{t}")).exists());
    assert!(j.work.path().join(format!("sanhak-escape-{t}")).exists());
    assert_host_fine(fx, &j.token);
}

#[test]
fn ptrace_is_denied() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let (outcome, lines) = run_all(&j.spec(fx, "escape", &["ptrace"], &limits()));
    assert!(outcome.status.success(), "{outcome:?}");
    assert_eq!(lines, ["TRACEME DENIED 1", "ATTACH DENIED 1"]);
    assert_host_fine(fx, &j.token);
}

#[test]
fn namespaces_mounts_and_personality_are_denied() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let (outcome, lines) = run_all(&j.spec(fx, "escape", &["namespaces"], &limits()));
    assert!(outcome.status.success(), "{outcome:?} {lines:?}");
    assert_eq!(
        lines,
        [
            "UNSHARE_USER DENIED 1",
            "UNSHARE_NET DENIED 1",
            "CLONE_NEWUSER DENIED 1",
            "CLONE3 DENIED 38",
            "PERSONALITY DENIED 1",
            "MOUNT DENIED 1",
            "THREAD 42",
        ]
    );
    assert_host_fine(fx, &j.token);
}

#[test]
fn setuid_binaries_do_not_grant_root() {
    let Some(fx) = fixture() else { return };
    // A setuid-root copy of `id`, made here (as root) and bound read-only.
    let is_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if is_root {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).expect("chmod");
        let suid_id = dir.path().join("suid-id");
        std::fs::copy("/usr/bin/id", &suid_id).expect("copy id");
        std::fs::set_permissions(&suid_id, PermissionsExt::from_mode(0o4755)).expect("setuid");
        assert_eq!(std::fs::metadata(&suid_id).expect("meta").uid(), 0);
        let j = job(&limits());
        let mut spec = j.sh("/opt/suid/suid-id -u; /opt/suid/suid-id -ru", &limits());
        spec.ro_binds.push(Bind::new(dir.path(), "/opt/suid"));
        let (outcome, lines) = run_all(&spec);
        assert!(outcome.status.success(), "{outcome:?}");
        assert_eq!(
            lines,
            ["1000", "1000"],
            "effective and real uid stay the job's"
        );
        assert_host_fine(fx, &j.token);
    }
    let Some(su) = [
        "/usr/bin/su",
        "/usr/bin/passwd",
        "/usr/bin/newgrp",
        "/usr/bin/mount",
    ]
    .into_iter()
    .find(|p| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o4000 != 0)
    }) else {
        eprintln!("skipping the setuid part: no setuid binary on this host");
        return;
    };
    let j = job(&limits());
    let script = format!(
        "{su} -c 'id -u > /work/su_uid' root </dev/null >/dev/null 2>&1; \
         id -u; grep -E '^(NoNewPrivs|CapEff|CapPrm|CapBnd):' /proc/self/status"
    );
    let (outcome, lines) = run_all(&j.sh(&script, &limits()));
    assert!(outcome.status.success(), "{outcome:?}");
    assert_eq!(lines[0], "1000", "{lines:?}");
    let field = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    assert_eq!(field("CapBnd:"), "0000000000000000");
    let su_uid = std::fs::read_to_string(j.work.path().join("su_uid")).unwrap_or_default();
    assert_ne!(su_uid.trim(), "0");
    assert_host_fine(fx, &j.token);
}

fn output_case(script: &str, max: u64) -> Result<Vec<u8>, OutputError> {
    let fx = fixture().expect("checked by the caller");
    let j = job(&limits());
    let (outcome, _) = run_all(&j.sh(script, &limits()));
    assert!(outcome.status.success(), "{outcome:?}");
    let result = read_output(j.work.path(), "out.bin", max);
    assert_host_fine(fx, &j.token);
    result
}

#[test]
fn planted_outputs_are_refused() {
    if fixture().is_none() {
        return;
    }
    let err = output_case("ln -s /etc/passwd /work/out.bin", 1 << 20).expect_err("symlink");
    assert!(matches!(err, OutputError::NotRegular), "{err:?}");
    assert!(err.to_string().contains("symbolic link"));

    let err = output_case(
        "mkdir /work/real && echo x > /work/real/out.bin && ln -s real /work/d && ln -s d/out.bin /work/out.bin",
        1 << 20,
    )
    .expect_err("symlink chain");
    assert!(matches!(err, OutputError::NotRegular), "{err:?}");

    let err = output_case("echo secret > /work/a && ln /work/a /work/out.bin", 1 << 20)
        .expect_err("hard link");
    assert!(matches!(err, OutputError::HardLinked), "{err:?}");

    let err =
        output_case("head -c 2097152 /dev/zero > /work/out.bin", 1 << 20).expect_err("too large");
    assert!(
        matches!(err, OutputError::TooLarge { limit } if limit == 1 << 20),
        "{err:?}"
    );
    assert!(err.to_string().contains("1 MiB"));

    let err = output_case("exit 0", 1 << 20).expect_err("missing");
    assert!(matches!(err, OutputError::Missing), "{err:?}");

    let err = output_case("mkfifo /work/out.bin", 1 << 20).expect_err("fifo");
    assert!(matches!(err, OutputError::NotRegular), "{err:?}");

    let ok = output_case("printf weights > /work/out.bin", 1 << 20).expect("regular file");
    assert_eq!(ok, b"weights");
}

#[test]
fn a_missing_bwrap_is_a_clear_infrastructure_error() {
    let err = sanhak_sandbox::SandboxError::BwrapMissing.to_string();
    assert!(err.contains(sanhak_sandbox::BWRAP_PACKAGE), "{err}");
}

#[test]
fn a_command_that_cannot_start_is_an_infrastructure_error() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let spec = SandboxSpec::new(vec!["/opt/nowhere/prog".into()], j.work.path());
    let err = run(&spec, &mut |_| LineAction::Continue).expect_err("cannot exec");
    assert!(
        matches!(&err, sanhak_sandbox::SandboxError::BwrapFailed(m) if m.contains("execvp")),
        "{err:?}"
    );
    // A bind that bwrap cannot set up (a mount point inside read-only /usr).
    let mut spec = j.sh("echo never", &limits());
    spec.ro_binds
        .push(Bind::new(&fx.progs, "/usr/sanhak-nowhere/x"));
    let err = run(&spec, &mut |_| LineAction::Continue).expect_err("cannot bind");
    assert!(
        matches!(&err, sanhak_sandbox::SandboxError::BwrapFailed(_)),
        "{err:?}"
    );
    // A command that prints bwrap-like errors and fails is still the command's failure.
    let (outcome, _) = run_all(&j.sh(
        "echo 'bwrap: execvp x: No such file' >&2; exit 1",
        &limits(),
    ));
    assert_eq!(outcome.status, Status::Exited { code: 1 });
    assert_host_fine(fx, &j.token);
}

#[test]
fn a_panicking_callback_does_not_leave_the_job_running() {
    let Some(fx) = fixture() else { return };
    let j = job(&limits());
    let spec = j.spec(fx, "bombs", &["events"], &limits());
    let result = std::panic::catch_unwind(|| {
        let _ = run(&spec, &mut |_| panic!("caller bug"));
    });
    assert!(result.is_err());
    assert_host_fine(fx, &j.token);
}

#[test]
fn jobs_can_run_as_an_unprivileged_host_account() {
    let Some(fx) = fixture() else { return };
    // Only root can switch to another account.
    if !std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
    {
        eprintln!("skipping: not root, cannot run jobs as another host account");
        return;
    }
    let nobody = (65534, 65534);
    let l = limits();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o711)).expect("chmod");
    let work = WorkDir::create_owned(&dir.path().join("work"), &l, Some(nobody)).expect("workdir");
    let token = format!("sanhak-case-hostuser-{}", std::process::id());
    let mut spec = SandboxSpec::new(
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "id -u; echo hi > /work/out.txt".into(),
            "sh".into(),
            token.clone().into(),
        ],
        work.path(),
    );
    spec.limits = l.clone();
    spec.host_user = Some(nobody);
    let (outcome, lines) = run_all(&spec);
    assert!(outcome.status.success(), "{outcome:?} {lines:?}");
    assert_eq!(lines[0], "1000");
    // Inside uid 1000 is host uid 65534, not host root: what it writes is
    // owned by that account on the host.
    let meta = std::fs::metadata(work.path().join("out.txt")).expect("output");
    assert_eq!((meta.uid(), meta.gid()), nobody);
    assert_eq!(
        read_output(work.path(), "out.txt", 100).expect("read"),
        b"hi\n"
    );
    // The hostile programs run the same way.
    let mut spec = SandboxSpec::new(
        vec![
            "/opt/case/escape".into(),
            "ptrace".into(),
            token.clone().into(),
        ],
        work.path(),
    );
    spec.ro_binds.push(Bind::new(&fx.progs, "/opt/case"));
    spec.limits = l;
    spec.host_user = Some(nobody);
    let (outcome, lines) = run_all(&spec);
    assert!(outcome.status.success(), "{outcome:?}");
    assert_eq!(lines, ["TRACEME DENIED 1", "ATTACH DENIED 1"]);
    assert_host_fine(fx, &token);
}
