//! The GPU memory watchdog against real sandboxes, without a GPU: a fake
//! `nvidia-smi` reports GPU memory for the real host pids of processes inside
//! two bubblewrap sandboxes. The watchdog must charge each process to its own
//! job through the process tree, stop the job over its declaration (with the
//! fault message) and leave the other one alone.
//!
//! Skipped (with a message) when bwrap is not installed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sanhak_runner::service::gpu::{self, GpuJob, GpuWatch};
use sanhak_sandbox::{bwrap_path, run, LineAction, SandboxSpec, Status, WorkDir};

/// Host pids whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

fn sleeper(work: &std::path::Path, seconds: &str, job: &GpuJob) -> SandboxSpec {
    let mut spec = SandboxSpec::new(
        vec!["/bin/sleep".into(), seconds.into()],
        work.to_path_buf(),
    );
    spec.cancel = Some(job.stop.clone());
    // What `GpuAssignment::apply` does for a GPU job, minus the device nodes
    // this machine does not have.
    spec.pid = Some(job.pid.clone());
    spec
}

#[test]
fn the_job_over_its_gpu_memory_is_stopped_and_its_neighbour_finishes() {
    if bwrap_path().is_none() {
        eprintln!("skipping: bubblewrap (bwrap) is not installed");
        return;
    }
    // Unique argv, so that the fake nvidia-smi finds exactly these processes.
    let (hog_arg, fair_arg) = ("300.0417", "1.0417");
    let fake_smi = move || {
        let mut out = String::new();
        for pid in pids_running(&["/bin/sleep", hog_arg]) {
            out.push_str(&format!("{pid}, 9000\n"));
        }
        for pid in pids_running(&["/bin/sleep", fair_arg]) {
            out.push_str(&format!("{pid}, 1500\n"));
        }
        // A process of the host itself (pid 1 is never a job's).
        out.push_str("1, 50000\n");
        Ok(out)
    };
    let watch = Arc::new(GpuWatch::new(
        Box::new(fake_smi),
        Box::new(gpu::proc_parent),
    ));
    watch
        .clone()
        .spawn(Duration::from_millis(100))
        .expect("watchdog thread");

    let root = tempfile::tempdir().expect("tempdir");
    let limits = sanhak_sandbox::Limits::default();
    let hog_dir = WorkDir::create(&root.path().join("hog"), &limits).expect("work");
    let fair_dir = WorkDir::create(&root.path().join("fair"), &limits).expect("work");
    let hog = Arc::new(GpuJob::new(
        "hog",
        4000,
        1,
        Arc::new(AtomicBool::new(false)),
    ));
    let fair = Arc::new(GpuJob::new(
        "fair",
        4000,
        1,
        Arc::new(AtomicBool::new(false)),
    ));
    watch.register(&hog);
    watch.register(&fair);

    let hog_spec = sleeper(hog_dir.path(), hog_arg, &hog);
    let fair_spec = sleeper(fair_dir.path(), fair_arg, &fair);
    let (hog_out, fair_out) = std::thread::scope(|s| {
        let h = s.spawn(|| run(&hog_spec, &mut |_| LineAction::Continue));
        let f = s.spawn(|| run(&fair_spec, &mut |_| LineAction::Continue));
        (
            h.join().expect("hog thread").expect("hog sandbox"),
            f.join().expect("fair thread").expect("fair sandbox"),
        )
    });

    assert_eq!(hog_out.status, Status::Stopped, "{hog_out:?}");
    let message = hog
        .overuse()
        .expect("the hog was stopped for its GPU memory");
    assert!(
        message.starts_with("used 9000 MB of GPU memory, more than the 4000 MB the lab declares"),
        "{message}"
    );
    assert!(hog.stop.load(Ordering::SeqCst));

    assert!(fair_out.status.success(), "{fair_out:?}");
    assert!(fair.overuse().is_none());
    assert!(!fair.stop.load(Ordering::SeqCst));

    // The sandboxes cleared their pids when bwrap exited.
    assert_eq!(hog.pid.load(Ordering::SeqCst), 0);
    assert_eq!(fair.pid.load(Ordering::SeqCst), 0);
    assert!(pids_running(&["/bin/sleep", hog_arg]).is_empty());
}
