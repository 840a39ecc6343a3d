//! `sanhak gpu-check` (hidden): the checks `scripts/gpu-check` runs on a GPU
//! host, through the worker's own code (GPU inventory, [`GpuPool`],
//! [`GpuAssignment`], [`GpuWatch`], [`Executor`] and the sandbox), without
//! the app:
//!
//! - `recipe`: one recipe job of a lab, run by the executor in bubblewrap
//!   with its GPU's device nodes and the CUDA libraries bound;
//! - `packed`: two GPU memory holders whose declarations fit on one GPU, in
//!   two sandboxes at once: both must land on the same GPU and finish;
//! - `hog`: a holder that allocates more than it declares, beside one that
//!   keeps to its declaration: the watchdog must stop the first, alone.
//!
//! The holders are `sanhak gpu-check hold` in the sandbox: they allocate GPU
//! memory with candle's CUDA device and keep it for a while.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use sanhak_sandbox::{self as sandbox, Bind, LineAction, SandboxSpec, WorkDir};

use super::exec::{limits_for, GUEST_TRAINER};
use super::gpu::{self, GpuAssignment, GpuJob, GpuPool, GpuSetting, GpuWatch};
use super::{Executor, JobControl, JobEnd, LabCache};
use crate::lab::Lab;
use crate::protocol::{self, JobSpec, LabFile, LabPackage, Resources, SubmissionKind};

/// `sanhak gpu-check …`
#[derive(Debug, Clone, Subcommand)]
pub enum GpuCheckCommand {
    /// Run the recipe, packing and memory-hog checks and print a table.
    Run(RunArgs),
    /// Allocate GPU memory on `cuda:0` and keep it (run inside a sandbox by `run`).
    Hold {
        /// MB to allocate.
        #[arg(long)]
        mb: u64,
        /// How long to keep it, in seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

/// Options of `sanhak gpu-check run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The recipe lab to train (e.g. labs/fashion-transfer).
    #[arg(long)]
    pub lab: PathBuf,
    /// Scale of the lab's step counts.
    #[arg(long, default_value_t = 0.1)]
    pub step_scale: f64,
    /// GPU memory each job declares, in MB.
    #[arg(long, default_value_t = 4096)]
    pub declared_mb: u64,
    /// What a well-behaved holder allocates (the CUDA context adds a few
    /// hundred MB on top), in MB.
    #[arg(long, default_value_t = 1024)]
    pub fair_mb: u64,
    /// What the hog allocates, in MB (more than --declared-mb).
    #[arg(long, default_value_t = 8192)]
    pub hog_mb: u64,
    /// How long holders keep their memory, in seconds.
    #[arg(long, default_value_t = 15)]
    pub hold_seconds: u64,
    /// GPUs, as `sanhak worker --gpus` takes them.
    #[arg(long, default_value = "auto")]
    pub gpus: GpuSetting,
    /// CUDA library folders, as `sanhak worker --gpu-lib-dir` takes them.
    #[arg(long, value_delimiter = ',')]
    pub gpu_lib_dir: Vec<PathBuf>,
    /// Scratch folder (work folders, lab cache).
    #[arg(long)]
    pub work: PathBuf,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct CheckRow {
    pub check: &'static str,
    pub job: String,
    pub gpus: String,
    pub declared_mb: u64,
    pub wall_s: f64,
    pub gpu_s: f64,
    pub passed: bool,
    pub detail: String,
}

impl GpuCheckCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            GpuCheckCommand::Hold { mb, seconds } => hold(mb, seconds),
            GpuCheckCommand::Run(args) => {
                let rows = run_checks(&args)?;
                print!("{}", table(&rows));
                if rows.iter().all(|r| r.passed) {
                    Ok(())
                } else {
                    bail!("some GPU checks failed")
                }
            }
        }
    }
}

#[cfg(feature = "cuda")]
fn hold(mb: u64, seconds: u64) -> anyhow::Result<()> {
    use candle_core::{DType, Device, Tensor};
    let dev = Device::new_cuda(0).context("opening cuda:0")?;
    // f32: 4 bytes each.
    let n = usize::try_from(mb * 1024 * 256).context("too many MB")?;
    let t = Tensor::ones(n, DType::F32, &dev).context("allocating")?;
    // Read one value back so the allocation is really done before we report it.
    let first = t.narrow(0, n.saturating_sub(1), 1)?.to_vec1::<f32>()?;
    let last = first.first().copied().unwrap_or(0.0);
    println!("{{\"held_mb\":{mb},\"last\":{last}}}");
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    drop(t);
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn hold(_mb: u64, _seconds: u64) -> anyhow::Result<()> {
    bail!("this sanhak was built without the `cuda` feature")
}

/// Regular files of a lab folder as a package (dot-files and `target/`
/// skipped), with the lab's own idea of which are trusted-only.
fn package_of(lab: &Lab) -> anyhow::Result<(LabPackage, Vec<(LabFile, PathBuf)>)> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, PathBuf)>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let s = name.to_string_lossy();
            if s.starts_with('.') || s == "target" {
                continue;
            }
            let ty = e.file_type()?;
            if ty.is_dir() {
                walk(root, &rel.join(&name), out)?;
            } else if ty.is_file() {
                out.push((rel.join(&name), e.path()));
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    walk(lab.dir(), Path::new(""), &mut found).context("reading the lab folder")?;
    let mut files = Vec::new();
    for (rel, abs) in found {
        let bytes = std::fs::read(&abs).with_context(|| format!("reading {}", abs.display()))?;
        let path = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        files.push((
            LabFile {
                path,
                sha256: protocol::sha256_hex(&bytes),
                bytes: bytes.len() as u64,
                trusted: lab.is_trusted_path(&rel),
            },
            abs,
        ));
    }
    files.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    let listing: Vec<LabFile> = files.iter().map(|(f, _)| f.clone()).collect();
    let package = LabPackage {
        id: lab.id().to_owned(),
        version: lab.manifest.version.clone(),
        hash: LabPackage::hash_of(&listing),
        files: listing,
    };
    Ok((package, files))
}

/// Runs the three checks.
pub fn run_checks(args: &RunArgs) -> anyhow::Result<Vec<CheckRow>> {
    if !gpu::CUDA_BUILT {
        bail!("this sanhak was built without the `cuda` feature: build it as the GPU hosts guide says");
    }
    let inventory = gpu::inventory(&args.gpus, true, &|| gpu::nvidia_smi(&gpu::INVENTORY_QUERY));
    let Some(first) = inventory.gpus.first().cloned() else {
        bail!("no GPU to check: {}", inventory.note);
    };
    if args.hog_mb <= args.declared_mb || 2 * args.declared_mb > first.gpu.memory_mb {
        bail!(
            "--hog-mb must exceed --declared-mb, and two declarations must fit on GPU {}",
            first.gpu.index
        );
    }
    let library_dirs = if args.gpu_lib_dir.is_empty() {
        gpu::default_library_dirs()
    } else {
        args.gpu_lib_dir.clone()
    };
    let trainer = std::env::current_exe().context("locating the sanhak binary")?;
    std::fs::create_dir_all(&args.work).context("creating the scratch folder")?;
    let work = std::path::absolute(&args.work).context("resolving the scratch folder")?;
    let mut executor = Executor::new(trainer.clone(), None, work.join("jobs"), work.join("rlibs"));
    executor.library_dirs = library_dirs.clone();
    // Only the first GPU, so that the packing is visible.
    let pool = GpuPool::new(vec![first]);
    let watch = Arc::new(GpuWatch::host());
    watch
        .clone()
        .spawn(gpu::WATCH_POLL)
        .context("starting the GPU memory watchdog")?;

    let mut rows = Vec::new();
    rows.push(recipe_check(args, &executor, &pool, &watch, &work)?);

    let holder = |name: &str, mb: u64| Holder {
        job: name.to_owned(),
        allocate_mb: mb,
        declared_mb: args.declared_mb,
        seconds: args.hold_seconds,
    };
    let ctx = HoldContext {
        trainer: &trainer,
        library_dirs: &library_dirs,
        pool: &pool,
        watch: &watch,
        work: &work,
    };
    let packed = run_holders(
        &ctx,
        &[
            holder("packed-1", args.fair_mb),
            holder("packed-2", args.fair_mb),
        ],
    )?;
    let same_gpu = packed.iter().all(|r| r.gpus == packed[0].gpus);
    for mut r in packed {
        r.check = "packed";
        r.passed = r.passed && same_gpu;
        if !same_gpu {
            r.detail
                .push_str("; the two jobs were not given the same GPU");
        }
        rows.push(r);
    }
    let hog = run_holders(
        &ctx,
        &[holder("fair", args.fair_mb), holder("hog", args.hog_mb)],
    )?;
    for mut r in hog {
        r.check = "hog";
        if r.job == "hog" {
            // Passing means: stopped by the watchdog with the fault message.
            r.passed = r.detail.starts_with("stopped: used ");
        }
        rows.push(r);
    }
    Ok(rows)
}

fn recipe_check(
    args: &RunArgs,
    executor: &Executor,
    pool: &GpuPool,
    watch: &Arc<GpuWatch>,
    work: &Path,
) -> anyhow::Result<CheckRow> {
    let lab = Lab::load(&args.lab).context("loading the lab")?;
    let (package, files) = package_of(&lab)?;
    let cache = LabCache::new(work.join("lab-cache"));
    for (file, abs) in &files {
        let bytes = std::fs::read(abs)?;
        cache.put_blob(file, &bytes)?;
    }
    let dirs = cache.materialize(&package)?;
    let recipe = std::fs::read_to_string(args.lab.join("starter/recipe.toml"))
        .context("reading the lab's starter recipe")?;
    let job = JobSpec {
        job_id: "gpu-check-recipe".into(),
        lease: String::new(),
        attempt: 1,
        lab: protocol::LabRef {
            id: package.id.clone(),
            version: package.version.clone(),
            package_hash: package.hash.clone(),
        },
        kind: SubmissionKind::Recipe,
        content_hash: protocol::sha256_hex(recipe.as_bytes()),
        content: recipe,
        resources: Resources {
            gpu_count: 1,
            gpu_memory_mb: args.declared_mb,
            ..resources_of(&lab)
        },
        step_scale: args.step_scale,
    };
    let lease = pool
        .reserve(1, args.declared_mb)
        .context("the GPU has no room for the recipe job")?;
    let stop = Arc::new(AtomicBool::new(false));
    let entry = Arc::new(GpuJob::new(&job.job_id, args.declared_mb, 1, stop.clone()));
    watch.register(&entry);
    let assignment = GpuAssignment {
        gpus: lease.gpus(),
        watch: Some(entry),
    };
    let mut steps = 0u64;
    let mut on_event = |e: protocol::JobEvent| {
        if e.data.get("event").and_then(|v| v.as_str()) == Some("step") {
            steps += 1;
        }
    };
    let mut on_phase = |_| {};
    let mut ctl = JobControl {
        on_event: &mut on_event,
        on_phase: &mut on_phase,
        stop: &stop,
        gpu: &assignment,
    };
    let t0 = Instant::now();
    let end = executor.run(&job, &dirs, &mut ctl);
    let wall_s = t0.elapsed().as_secs_f64();
    let gpus = gpu_list(&assignment);
    let (passed, gpu_s, detail) = match end {
        JobEnd::Complete(c) => (
            true,
            c.usage.gpu_seconds,
            format!(
                "graded {:?}: {}; {steps} step events, trained on {}={}",
                c.outcome,
                c.message,
                gpu::DEVICE_ENV,
                assignment.device()
            ),
        ),
        JobEnd::Fail(f) => (
            false,
            f.usage.gpu_seconds,
            format!("failed ({:?}): {}", f.fault, f.message),
        ),
        JobEnd::Cancelled => (false, 0.0, "cancelled".into()),
    };
    Ok(CheckRow {
        check: "recipe",
        job: job.job_id,
        gpus,
        declared_mb: args.declared_mb,
        wall_s,
        gpu_s,
        passed,
        detail,
    })
}

fn resources_of(lab: &Lab) -> Resources {
    let l = &lab.manifest.limits;
    Resources {
        cpu_slots: l.threads.max(1),
        gpu_count: 0,
        gpu_memory_mb: 0,
        wall_seconds: l.wall_seconds,
        memory_mb: l.memory_mb,
    }
}

fn gpu_list(a: &GpuAssignment) -> String {
    a.gpus
        .iter()
        .map(|g| g.gpu.index.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

struct Holder {
    job: String,
    allocate_mb: u64,
    declared_mb: u64,
    seconds: u64,
}

struct HoldContext<'a> {
    trainer: &'a Path,
    library_dirs: &'a [PathBuf],
    pool: &'a GpuPool,
    watch: &'a Arc<GpuWatch>,
    work: &'a Path,
}

/// Runs holders at once, each in its own sandbox on GPUs from the pool.
fn run_holders(ctx: &HoldContext<'_>, holders: &[Holder]) -> anyhow::Result<Vec<CheckRow>> {
    let mut leases = Vec::new();
    for h in holders {
        let lease = ctx
            .pool
            .reserve(1, h.declared_mb)
            .with_context(|| format!("no GPU has {} MB free for {}", h.declared_mb, h.job))?;
        leases.push(lease);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = holders
            .iter()
            .zip(&leases)
            .map(|(h, lease)| {
                let gpus = lease.gpus();
                s.spawn(move || run_holder(ctx, h, gpus))
            })
            .collect();
        handles
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| anyhow::anyhow!("a holder's thread panicked"))?
            })
            .collect()
    })
}

fn run_holder(
    ctx: &HoldContext<'_>,
    h: &Holder,
    gpus: Vec<gpu::HostGpu>,
) -> anyhow::Result<CheckRow> {
    let stop = Arc::new(AtomicBool::new(false));
    let entry = Arc::new(GpuJob::new(&h.job, h.declared_mb, 1, stop.clone()));
    ctx.watch.register(&entry);
    let assignment = GpuAssignment {
        gpus,
        watch: Some(entry),
    };
    let job = JobSpec {
        job_id: h.job.clone(),
        lease: String::new(),
        attempt: 1,
        lab: protocol::LabRef {
            id: "gpu-check".into(),
            version: String::new(),
            package_hash: String::new(),
        },
        kind: SubmissionKind::Code,
        content: String::new(),
        content_hash: String::new(),
        resources: Resources {
            cpu_slots: 1,
            gpu_count: 1,
            gpu_memory_mb: h.declared_mb,
            wall_seconds: h.seconds + 120,
            memory_mb: 4096,
        },
        step_scale: 1.0,
    };
    let limits = limits_for(&job);
    let folder = ctx.work.join("jobs").join(&h.job);
    let _ = WorkDir::remove_stale(&folder);
    std::fs::create_dir_all(ctx.work.join("jobs"))?;
    let dir = WorkDir::create(&folder, &limits).context("creating the work folder")?;
    let command: Vec<OsString> = vec![
        GUEST_TRAINER.into(),
        "gpu-check".into(),
        "hold".into(),
        "--mb".into(),
        h.allocate_mb.to_string().into(),
        "--seconds".into(),
        h.seconds.to_string().into(),
    ];
    let mut spec = SandboxSpec::new(command, dir.path());
    spec.limits = limits;
    spec.cancel = Some(stop.clone());
    spec.ro_binds.push(Bind::new(ctx.trainer, GUEST_TRAINER));
    spec.env.push(("SANHAK_LOG".into(), "warn".into()));
    spec.add_library_dirs(ctx.library_dirs);
    assignment.apply(&mut spec);
    let mut printed = String::new();
    let t0 = Instant::now();
    let outcome = sandbox::run(&spec, &mut |line| {
        printed = line.to_owned();
        LineAction::Continue
    })
    .context("running the holder in the sandbox")?;
    let wall_s = t0.elapsed().as_secs_f64();
    let (passed, detail) = match assignment.overuse() {
        Some(message) => (false, format!("stopped: {message}")),
        None if stop.load(Ordering::SeqCst) => (false, "stopped".into()),
        None if outcome.status.success() => (true, format!("finished; printed {printed}")),
        None => {
            let last = outcome
                .stderr_tail
                .lines()
                .last()
                .unwrap_or("")
                .trim()
                .to_owned();
            (
                false,
                format!("{}: {last}", outcome.status.describe(&spec.limits)),
            )
        }
    };
    Ok(CheckRow {
        check: "",
        job: h.job.clone(),
        gpus: gpu_list(&assignment),
        declared_mb: h.declared_mb,
        wall_s,
        gpu_s: wall_s * assignment.gpus.len() as f64,
        passed,
        detail: format!("{detail} (asked for {} MB)", h.allocate_mb),
    })
}

/// The table `scripts/gpu-check` prints.
pub fn table(rows: &[CheckRow]) -> String {
    let mut out = format!(
        "{:<7} {:<18} {:<4} {:>9} {:>8} {:>8}  {:<4}  {}\n",
        "check", "job", "gpu", "declared", "wall s", "gpu s", "ok", "detail"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<7} {:<18} {:<4} {:>9} {:>8.1} {:>8.1}  {:<4}  {}\n",
            r.check,
            r.job,
            r.gpus,
            r.declared_mb,
            r.wall_s,
            r.gpu_s,
            if r.passed { "yes" } else { "NO" },
            r.detail
        ));
    }
    out
}
