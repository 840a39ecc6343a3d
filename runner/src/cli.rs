//! `sanhak lab …` subcommands. The `sanhak` binary embeds [`LabCommand`] and
//! calls [`LabCommand::run`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::check::{
    check_lab, load_recipe, run_and_grade, CheckOptions, CheckProgress, CheckReport,
};
use crate::codelab::check::{check_code_lab, CodeCheckOptions, CodeCheckProgress, CodeCheckReport};
use crate::codelab::CodeOutcome;
use crate::grade::GradeOutcome;
use crate::lab::{Lab, LabKind};
use crate::programs::program_for;
use crate::train::device::{DEVICE_ENV, DEVICE_UNAVAILABLE_EXIT};
use crate::train::events::{Event, EventSink, FnSink, JsonLinesSink, TeeSink};
use crate::train::{RunOptions, TrainDevice};

/// Step scale of `--quick`.
pub const QUICK_STEP_SCALE: f64 = 0.25;

/// Options shared by the commands that train.
#[derive(Debug, Clone, Args)]
pub struct StepArgs {
    /// Quick run: scale all step counts by 0.25 (tests, smoke checks). The
    /// full run is the default.
    #[arg(long)]
    pub quick: bool,
    /// Scale all step counts by this factor (overrides --quick).
    #[arg(long, value_name = "FACTOR")]
    pub step_scale: Option<f64>,
    /// Ignore shared pretrained models (all-MiniLM-L6-v2) even when
    /// installed: labs that can use one fall back to their own base.
    #[arg(long)]
    pub no_pretrained: bool,
    /// Train on this device: `cpu`, `cuda` or `cuda:N` (CUDA needs a build
    /// with the `cuda` feature). Inside a runner's sandbox the runner sets
    /// it for the job's assigned GPU.
    #[arg(long, env = DEVICE_ENV, default_value = "cpu", value_parser = parse_device)]
    pub device: TrainDevice,
}

fn parse_device(s: &str) -> Result<TrainDevice, String> {
    s.parse()
}

impl StepArgs {
    fn options(&self) -> anyhow::Result<RunOptions> {
        let step_scale = match (self.step_scale, self.quick) {
            (Some(s), _) => s,
            (None, true) => QUICK_STEP_SCALE,
            (None, false) => 1.0,
        };
        if !(step_scale > 0.0 && step_scale <= 1.0) {
            bail!("--step-scale must be in (0, 1], got {step_scale}");
        }
        Ok(RunOptions {
            step_scale,
            device: self.device,
        })
    }

    /// The shared models folder to use, if any.
    fn models_dir(&self, models_dir: &Path) -> Option<PathBuf> {
        (!self.no_pretrained).then(|| models_dir.to_path_buf())
    }

    /// Load a lab with the shared models these options allow.
    fn load_lab(&self, dir: &Path, models_dir: &Path) -> anyhow::Result<Lab> {
        self.with_models(Lab::load(dir)?, models_dir)
    }

    /// Load the public part of a lab (what a training sandbox sees).
    fn load_public_lab(&self, dir: &Path, models_dir: &Path) -> anyhow::Result<Lab> {
        self.with_models(Lab::load_public(dir)?, models_dir)
    }

    fn with_models(&self, lab: Lab, models_dir: &Path) -> anyhow::Result<Lab> {
        Ok(match self.models_dir(models_dir) {
            Some(m) => lab.with_models_dir(m),
            None => lab,
        })
    }
}

/// Lab package commands.
#[derive(Debug, Clone, Subcommand)]
pub enum LabCommand {
    /// Validate a lab package, run its starter (must score low) and its
    /// solution (must reach the target), and print metrics, wall time and
    /// peak memory.
    Check {
        /// The lab folder (containing lab.toml).
        dir: PathBuf,
        #[command(flatten)]
        steps: StepArgs,
        /// Keep checkpoints in this folder instead of a temporary one.
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Print the report as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Train a recipe locally and grade it.
    Run {
        /// The lab folder.
        dir: PathBuf,
        /// The recipe (TOML) to run.
        #[arg(long)]
        recipe: PathBuf,
        /// Output folder for the checkpoint and events.jsonl.
        #[arg(long, default_value = "lab-run")]
        out: PathBuf,
        #[command(flatten)]
        steps: StepArgs,
    },
    /// Train a recipe without grading, writing JSON-lines events to stdout and
    /// the checkpoint to --out. This is what the runner service starts inside
    /// the sandbox; the trusted grader runs outside it.
    Train {
        /// The lab folder.
        dir: PathBuf,
        /// The recipe (TOML) to run.
        #[arg(long)]
        recipe: PathBuf,
        /// Output folder for model.safetensors.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        steps: StepArgs,
    },
    /// Build a lab's base checkpoint from its shipped data with its fixed seed.
    BuildBase {
        /// Lab id (looked up in the labs folder) or a lab folder.
        lab: String,
        #[command(flatten)]
        steps: StepArgs,
    },
}

fn bar() -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} steps {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb
}

fn on_event(pb: &ProgressBar, e: &Event) {
    match e {
        Event::Started { total_steps, .. } => {
            pb.set_length(*total_steps);
            pb.set_position(0);
        }
        Event::Step { step, loss, .. } => {
            pb.set_position(*step);
            pb.set_message(format!("loss {loss:.4}"));
        }
        Event::Eval { metrics, .. } => {
            let m: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            pb.println(format!(
                "           eval at step {}: {}",
                pb.position(),
                m.join(", ")
            ));
        }
        Event::EarlyStop {
            step, best_step, ..
        } => {
            pb.println(format!(
                "           early stop at step {step} (best at {best_step})"
            ));
        }
        _ => {}
    }
}

fn describe(outcome: &GradeOutcome) -> String {
    match outcome {
        GradeOutcome::Graded(r) => format!(
            "{} {:.4} (public {:.4}, private {:.4}) → {:.1}/{} points",
            r.metric_name, r.metric, r.public.metric, r.private.metric, r.points, r.max_points
        ),
        GradeOutcome::Rejected { reason } => format!("rejected (0 points): {reason}"),
        GradeOutcome::NotGradable { reason } => format!("NOT GRADABLE: {reason}"),
    }
}

fn print_report(r: &CheckReport) {
    println!("lab check {} (step scale {})", r.lab_id, r.step_scale);
    if let Some(v) = &r.variant {
        println!("  pretrained model  {v} (its starter/solution recipes and rubric)");
    }
    println!("  base checkpoint   {} bytes", r.base_bytes);
    println!("  before fine-tune  {}", describe(&r.before));
    for run in [&r.starter, &r.solution] {
        println!(
            "  {:<17} {} [{} steps, {:.1} s]",
            run.name,
            describe(&run.outcome),
            run.steps,
            run.wall_s
        );
    }
    println!("  target            {} ({} points)", r.target, r.max_points);
    match r.peak_rss_mib {
        Some(m) => println!("  wall time {:.1} s, peak memory {m:.0} MiB", r.wall_s),
        None => println!("  wall time {:.1} s", r.wall_s),
    }
    if r.passed() {
        println!("PASSED");
    } else {
        for f in &r.failures {
            println!("  FAIL: {f}");
        }
    }
}

fn print_code_report(r: &CodeCheckReport) {
    println!(
        "lab check {} (code lab, step scale {})",
        r.lab_id, r.step_scale
    );
    println!("  base checkpoint   {} bytes", r.base_bytes);
    println!("  before fine-tune  {}", describe(&r.before));
    for run in [&r.starter, &r.solution] {
        let mem = run
            .peak_rss_mib
            .map(|m| format!(", peak {m:.0} MiB"))
            .unwrap_or_default();
        match &run.outcome {
            CodeOutcome::Graded(g) => {
                println!(
                    "  {:<17} {:.1}/{} points [{:.1} s{mem}]",
                    run.name, g.points, g.max_points, run.wall_s
                );
                for line in &g.feedback {
                    println!("      {line}");
                }
            }
            CodeOutcome::NotGradable { reason } => {
                println!("  {:<17} NOT GRADABLE: {reason}", run.name)
            }
        }
    }
    println!(
        "  fine-tuning target {} ({} points in all)",
        r.fine_tune_target, r.max_points
    );
    match r.peak_rss_mib {
        Some(m) => println!(
            "  wall time {:.1} s (build {:.1} s), peak memory of the checker {m:.0} MiB",
            r.wall_s, r.build_s
        ),
        None => println!("  wall time {:.1} s (build {:.1} s)", r.wall_s, r.build_s),
    }
    if r.passed() {
        println!("PASSED");
    } else {
        for f in &r.failures {
            println!("  FAIL: {f}");
        }
    }
}

/// `lab check` of a code lab: builds the starter and the solution with cargo
/// (a normal compile; in the runner service the sandbox compiles instead).
fn check_code(
    dir: &Path,
    step_scale: f64,
    work_dir: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let opts = CodeCheckOptions {
        step_scale,
        work_dir,
        binaries: None,
    };
    let pb = bar();
    let report = check_code_lab(dir, &opts, &mut |p| match p {
        CodeCheckProgress::Phase(name) => {
            pb.set_prefix(name.to_string());
            pb.suspend(|| eprintln!("== {name}"));
        }
        CodeCheckProgress::Event(e) => on_event(&pb, e),
    })
    .with_context(|| format!("lab check {}", dir.display()))?;
    pb.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_code_report(&report);
    }
    if !report.passed() {
        bail!("lab check failed: {}", report.failures.join("; "));
    }
    Ok(())
}

fn resolve_lab(lab: &str, labs_dir: &Path) -> PathBuf {
    let p = Path::new(lab);
    if p.join(crate::lab::MANIFEST_FILE).is_file() {
        p.to_path_buf()
    } else {
        labs_dir.join(lab)
    }
}

impl LabCommand {
    /// Runs the command, printing to stdout. Lab ids given to `build-base`
    /// are looked up in `labs_dir`; shared pretrained models (`sanhak model
    /// fetch`) are looked up in `models_dir`.
    pub fn run(self, labs_dir: &Path, models_dir: &Path) -> anyhow::Result<()> {
        match self {
            LabCommand::Check {
                dir,
                steps,
                work_dir,
                json,
            } => {
                if Lab::load(&dir)?.manifest.kind == LabKind::Code {
                    return check_code(&dir, steps.options()?.step_scale, work_dir, json);
                }
                let opts = CheckOptions {
                    run: steps.options()?,
                    work_dir,
                    models_dir: steps.models_dir(models_dir),
                };
                let pb = bar();
                let report = check_lab(&dir, &opts, &mut |p| match p {
                    CheckProgress::Phase(name) => {
                        pb.set_prefix(name.to_string());
                        pb.suspend(|| eprintln!("== {name}"));
                    }
                    CheckProgress::Event(e) => on_event(&pb, e),
                })
                .with_context(|| format!("lab check {}", dir.display()))?;
                pb.finish_and_clear();
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print_report(&report);
                }
                if !report.passed() {
                    bail!("lab check failed: {}", report.failures.join("; "));
                }
                Ok(())
            }
            LabCommand::Run {
                dir,
                recipe,
                out,
                steps,
            } => {
                let opts = steps.options()?;
                let lab = steps.load_lab(&dir, models_dir)?;
                let recipe = load_recipe(&lab, &recipe)?;
                std::fs::create_dir_all(&out)
                    .with_context(|| format!("create {}", out.display()))?;
                let events_path = out.join("events.jsonl");
                let file = std::fs::File::create(&events_path)
                    .with_context(|| format!("create {}", events_path.display()))?;
                let mut jsonl = JsonLinesSink::new(std::io::BufWriter::new(file));
                let pb = bar();
                pb.set_prefix("training");
                let mut show = FnSink(|e: &Event| on_event(&pb, e));
                let mut tee = TeeSink {
                    first: &mut jsonl,
                    second: &mut show,
                };
                let run = run_and_grade(
                    &lab,
                    &recipe,
                    "recipe",
                    &out,
                    &opts,
                    &mut tee as &mut dyn EventSink,
                )?;
                pb.finish_and_clear();
                let mut w = jsonl.into_inner();
                w.flush()?;
                println!("{}: {}", run.name, describe(&run.outcome));
                println!(
                    "{} steps in {:.1} s; events in {}",
                    run.steps,
                    run.wall_s,
                    events_path.display()
                );
                if let GradeOutcome::Graded(r) = &run.outcome {
                    for h in &r.feedback.hints {
                        println!("  hint: {h}");
                    }
                }
                println!("{}", serde_json::to_string_pretty(&run.outcome)?);
                Ok(())
            }
            LabCommand::Train {
                dir,
                recipe,
                out,
                steps,
            } => {
                let opts = steps.options()?;
                // A device that will not open is the runner's fault: say so
                // by the exit status before anything of the recipe runs.
                if let Err(e) = opts.device.open() {
                    eprintln!("error: {e}");
                    std::process::exit(DEVICE_UNAVAILABLE_EXIT);
                }
                let lab = steps.load_public_lab(&dir, models_dir)?;
                let recipe = load_recipe(&lab, &recipe)?;
                let stdout = std::io::stdout();
                let mut sink = JsonLinesSink::new(stdout.lock());
                crate::programs::run_program(&lab, &recipe, &out, &opts, &mut sink)?;
                Ok(())
            }
            LabCommand::BuildBase { lab, steps } => {
                let opts = steps.options()?;
                let dir = resolve_lab(&lab, labs_dir);
                let lab = steps.load_lab(&dir, models_dir)?;
                let program = program_for(&lab)?;
                let pb = bar();
                pb.set_prefix("base");
                let t0 = Instant::now();
                let mut sink = FnSink(|e: &Event| on_event(&pb, e));
                let report = program.build_base(&lab, &opts, &mut sink)?;
                pb.finish_and_clear();
                println!(
                    "wrote {} ({} bytes) after {} steps in {:.1} s; base validation {} {:.4}",
                    report.checkpoint.display(),
                    report.bytes,
                    report.steps,
                    t0.elapsed().as_secs_f64(),
                    program.metric_name(),
                    report.valid_metric
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: LabCommand,
    }

    #[test]
    fn commands_parse() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["lab", "check", "labs/x", "--quick"]).unwrap();
        match cli.command {
            LabCommand::Check { steps, .. } => {
                assert_eq!(steps.options().unwrap().step_scale, QUICK_STEP_SCALE)
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "lab",
            "run",
            "labs/x",
            "--recipe",
            "r.toml",
            "--step-scale",
            "0.5",
        ])
        .unwrap();
        match cli.command {
            LabCommand::Run { steps, recipe, .. } => {
                assert_eq!(steps.options().unwrap().step_scale, 0.5);
                assert_eq!(recipe, PathBuf::from("r.toml"));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["lab", "build-base", "fashion-transfer"]).unwrap();
        assert!(matches!(cli.command, LabCommand::BuildBase { .. }));
        let bad = Cli::try_parse_from([
            "lab",
            "run",
            "labs/x",
            "--recipe",
            "r.toml",
            "--step-scale",
            "3",
        ])
        .unwrap();
        if let LabCommand::Run { steps, .. } = bad.command {
            assert!(steps.options().is_err(), "a step scale above 1 is refused");
        }
        assert!(
            Cli::try_parse_from(["lab", "train", "labs/x"]).is_err(),
            "--recipe and --out are required"
        );
    }
}
