//! The hidden numerical tests of the `lora` harness.
//!
//! The grader draws test cases from a secret seed (shapes, weights, inputs,
//! adapters), writes them to a safetensors file, runs the submission's
//! `numerics` subcommand, and compares what it wrote with values the grader
//! computes itself with the runner's own LoRA ([`crate::nn::lora::LoraLinear`],
//! in f64). The submission's output is untrusted: it is size-capped and
//! parsed as safetensors, and every tensor's dtype, shape and values are
//! checked; anything missing or malformed fails the test that needed it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use labkit::harness::names;

use super::process::{ExitKind, ProcessOutcome};
use super::sandboxed::{run_job, Isolation, Job};
use super::spec::NumericsSpec;
use super::CodeLabError;
use crate::nn::lora::LoraLinear;
use crate::train::events::Event;

/// One hidden test case.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    /// `[..., in]`, f32.
    pub x: Tensor,
    /// `[out, in]`.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// `[rank, in]`, the adapter set before forward/merge/gradients.
    pub lora_a: Tensor,
    /// `[out, rank]`.
    pub lora_b: Tensor,
    pub alpha: f64,
    /// Upstream gradient, the shape of the output.
    pub grad_out: Tensor,
    /// A 3-D input (`[batch, time, in]`).
    pub batched: bool,
}

impl Case {
    fn rank(&self) -> usize {
        self.lora_a.dims()[0]
    }

    fn describe(&self) -> String {
        format!(
            "case {} (x {:?}, weight {:?}{}, rank {}, alpha {})",
            self.name,
            self.x.dims(),
            self.weight.dims(),
            if self.bias.is_some() {
                " with bias"
            } else {
                ""
            },
            self.rank(),
            self.alpha
        )
    }
}

fn uniform(rng: &mut StdRng, shape: &[usize], bound: f32) -> candle_core::Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-bound..bound)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// (name, x shape, out width, rank, alpha, with bias)
type CasePlan = (&'static str, &'static [usize], usize, usize, f64, bool);

/// The hidden cases for `seed`: 2-D and 3-D inputs, with and without bias,
/// ranks 1 to 8, a rank equal to the input width, and scales above and below 1.
pub fn make_cases(seed: u64) -> candle_core::Result<Vec<Case>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let plan: &[CasePlan] = &[
        ("c0", &[4, 6], 5, 2, 4.0, true),
        ("c1", &[3, 33], 17, 1, 1.5, true),
        ("c2", &[6, 64], 48, 8, 16.0, false),
        ("c3", &[5, 4], 9, 4, 2.0, true),
        ("b0", &[2, 5, 16], 8, 4, 8.0, true),
        ("b1", &[3, 2, 12], 7, 3, 0.75, false),
    ];
    let mut cases = Vec::new();
    for &(name, xs, out, rank, alpha, bias) in plan {
        let inp = *xs.last().unwrap_or(&1);
        let wb = 1.0 / (inp as f32).sqrt();
        let mut ys = xs.to_vec();
        if let Some(l) = ys.last_mut() {
            *l = out;
        }
        // Jitter alpha so the scale cannot be guessed from the rank.
        let alpha = alpha * (1.0 + 0.25 * rng.gen_range(0.0..1.0));
        cases.push(Case {
            name: name.to_string(),
            x: uniform(&mut rng, xs, 1.0)?,
            weight: uniform(&mut rng, &[out, inp], wb)?,
            bias: if bias {
                Some(uniform(&mut rng, &[out], 0.5)?)
            } else {
                None
            },
            lora_a: uniform(&mut rng, &[rank, inp], 0.5)?,
            lora_b: uniform(&mut rng, &[out, rank], 0.5)?,
            alpha,
            grad_out: uniform(&mut rng, &ys, 1.0)?,
            batched: xs.len() == 3,
        });
    }
    Ok(cases)
}

/// Write the cases as the `numerics` input file.
pub fn write_inputs(cases: &[Case], path: &Path) -> Result<u64, CodeLabError> {
    let mut t = BTreeMap::new();
    for c in cases {
        let key = |n: &str| format!("{}.{n}", c.name);
        t.insert(key(names::X), c.x.clone());
        t.insert(key(names::WEIGHT), c.weight.clone());
        if let Some(b) = &c.bias {
            t.insert(key(names::BIAS), b.clone());
        }
        t.insert(key(names::LORA_A), c.lora_a.clone());
        t.insert(key(names::LORA_B), c.lora_b.clone());
        t.insert(
            key(names::ALPHA),
            Tensor::new(&[c.alpha as f32], &Device::Cpu)?,
        );
        t.insert(key(names::GRAD_OUT), c.grad_out.clone());
    }
    Ok(labkit::checkpoint::save(&t, path)?)
}

/// A tensor as shape and f64 values.
#[derive(Debug, Clone, PartialEq)]
pub struct Values {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Values {
    fn of(t: &Tensor) -> candle_core::Result<Values> {
        Ok(Values {
            shape: t.dims().to_vec(),
            data: t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
        })
    }
}

/// What the grader expects for one case (computed in f64).
#[derive(Debug, Clone)]
pub struct Expected {
    /// The base output (the adapted layer at initialisation, B = 0).
    pub init_y: Values,
    pub y: Values,
    pub merged: Values,
    pub grad_a: Values,
    pub grad_b: Values,
}

/// The reference values of a case, from the runner's own LoRA layer.
pub fn expected(case: &Case) -> candle_core::Result<Expected> {
    let dev = Device::Cpu;
    let f = |t: &Tensor| t.to_dtype(DType::F64);
    let (w, x, g) = (f(&case.weight)?, f(&case.x)?, f(&case.grad_out)?);
    let b = case.bias.as_ref().map(f).transpose()?;
    let init_y = crate::nn::linear::linear_forward(&x, &w, b.as_ref())?;
    let vm = VarMap::new();
    let lora = LoraLinear::new(
        &w,
        b.as_ref(),
        case.rank(),
        case.alpha,
        VarBuilder::from_varmap(&vm, DType::F64, &dev),
    )?;
    let vars = {
        let data = vm
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("varmap lock".into()))?;
        let get = |n: &str| {
            data.get(n)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("reference has no {n}")))
        };
        (get("lora_a")?, get("lora_b")?)
    };
    vars.0.set(&f(&case.lora_a)?)?;
    vars.1.set(&f(&case.lora_b)?)?;
    let y = candle_core::Module::forward(&lora, &x)?;
    let merged = lora.merge()?;
    let grads = (&y * &g)?.sum_all()?.backward()?;
    let grad = |v: &candle_core::Var| {
        grads
            .get(v.as_tensor())
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("reference: no gradient".into()))
    };
    Ok(Expected {
        init_y: Values::of(&init_y)?,
        y: Values::of(&y)?,
        merged: Values::of(&merged)?,
        grad_a: Values::of(&grad(&vars.0)?)?,
        grad_b: Values::of(&grad(&vars.1)?)?,
    })
}

/// The result of one hidden test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub name: String,
    pub passed: bool,
    pub points: f64,
    pub max_points: f64,
    /// What was checked, or the first thing that was wrong and a hint.
    pub message: String,
}

/// The numerical tests of one submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NumericsReport {
    pub tests: Vec<TestResult>,
    pub points: f64,
    pub max_points: f64,
    /// How the submission's process ended.
    pub exit: ExitKind,
    pub wall_s: f64,
    /// Peak resident memory of the submission's process, in MiB.
    pub peak_rss_mib: Option<f64>,
}

/// The submission's output file, parsed but untrusted.
pub struct Outputs {
    tensors: BTreeMap<String, Values>,
    /// Tensors present but unusable: name → why.
    bad: BTreeMap<String, String>,
}

/// Largest output file accepted: the expected tensors plus a generous header.
pub fn max_output_bytes(cases: &[Case]) -> u64 {
    let mut n = 0u64;
    for c in cases {
        let (out, inp) = (c.weight.dims()[0], c.weight.dims()[1]);
        let y = c.grad_out.elem_count() as u64;
        n +=
            2 * (c.lora_a.elem_count() + c.lora_b.elem_count()) as u64 + 2 * y + (out * inp) as u64;
    }
    4 * n + (1 << 20)
}

/// Parse the output file: regular file, size cap, safetensors, f32 tensors.
pub fn read_outputs(path: &Path, max_bytes: u64) -> Result<Outputs, String> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|_| "your program wrote no output file".to_string())?;
    if !meta.file_type().is_file() {
        return Err("the output is not a regular file".into());
    }
    if meta.len() > max_bytes {
        return Err(format!(
            "the output file has {} bytes, more than the {max_bytes} allowed",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the output file: {e}"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("the output file is not a valid safetensors file: {e}"))?;
    let mut tensors = BTreeMap::new();
    let mut bad = BTreeMap::new();
    for name in st.names() {
        let Ok(view) = st.tensor(name) else {
            continue;
        };
        if view.dtype() != safetensors::Dtype::F32 {
            bad.insert(
                name.to_string(),
                format!("has dtype {:?}, expected F32", view.dtype()),
            );
            continue;
        }
        let data: Vec<f64> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect();
        tensors.insert(
            name.to_string(),
            Values {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(Outputs { tensors, bad })
}

impl Outputs {
    /// The tensor `<case>.<name>` with the expected shape and finite values.
    fn get(&self, case: &Case, name: &str, shape: &[usize]) -> Result<&Values, String> {
        let key = format!("{}.{name}", case.name);
        if let Some(why) = self.bad.get(&key) {
            return Err(format!("{}: `{name}` {why}", case.describe()));
        }
        let v = self.tensors.get(&key).ok_or_else(|| {
            format!(
                "{}: your program did not produce `{name}` (it failed or panicked on this case; see its error output)",
                case.describe()
            )
        })?;
        if v.shape != shape {
            return Err(format!(
                "{}: `{name}` has shape {:?}, expected {shape:?}",
                case.describe(),
                v.shape
            ));
        }
        if v.data.iter().any(|x| !x.is_finite()) {
            return Err(format!(
                "{}: `{name}` contains NaN or infinite values",
                case.describe()
            ));
        }
        Ok(v)
    }

    /// Compare `<case>.<name>` with `want`.
    fn close(&self, case: &Case, name: &str, want: &Values, tol: f64) -> Result<(), String> {
        let got = self.get(case, name, &want.shape)?;
        let (mut worst, mut abs) = (0.0f64, 0.0f64);
        for (g, w) in got.data.iter().zip(&want.data) {
            let e = (g - w).abs() / (1.0 + w.abs());
            if e > worst {
                worst = e;
                abs = (g - w).abs();
            }
        }
        if worst > tol {
            return Err(format!(
                "{}: `{name}` is off by up to {abs:.3e} (relative error {worst:.1e}, tolerance {tol:.0e})",
                case.describe()
            ));
        }
        Ok(())
    }
}

fn check_init(case: &Case, out: &Outputs, want: &Expected, tol: f64) -> Result<(), String> {
    let (o, i) = case.weight.dims2().map_err(|e| e.to_string())?;
    let r = case.rank();
    let a = out.get(case, names::INIT_A, &[r, i])?;
    let bound = 1.0 / (i as f64).sqrt();
    if a.data.iter().any(|v| v.abs() > bound * (1.0 + 1e-5)) {
        return Err(format!(
            "{}: A at initialisation has values outside ±1/√in = ±{bound:.4}",
            case.describe()
        ));
    }
    let mean_abs = a.data.iter().map(|v| v.abs()).sum::<f64>() / a.data.len().max(1) as f64;
    if !(0.25 * bound..=0.75 * bound).contains(&mean_abs) {
        return Err(format!(
            "{}: A at initialisation does not look uniform in ±1/√in (mean |A| is {mean_abs:.4}, expected about {:.4}); a zero A gives B no gradient",
            case.describe(),
            bound / 2.0
        ));
    }
    let b = out.get(case, names::INIT_B, &[o, r])?;
    if b.data.iter().any(|v| *v != 0.0) {
        return Err(format!(
            "{}: B at initialisation must be exactly zero",
            case.describe()
        ));
    }
    out.close(case, names::INIT_Y, &want.init_y, tol)
        .map_err(|e| {
            format!("{e}; at initialisation the layer must compute exactly the base layer")
        })
}

fn test_hint(test: &str) -> &'static str {
    match test {
        "init" => "A starts uniform in ±1/√in and B at zero, so the adapted layer starts equal to the base.",
        "forward" => "forward must add (α/r)·(x Aᵀ)Bᵀ to the base output x Wᵀ + b.",
        "batched" => "forward must also work on 3-D inputs [batch, time, in]: use broadcast_matmul, or reshape to 2-D and back.",
        "merge" => "merge must return W + (α/r)·B A as a plain tensor.",
        "gradients" => "gradients must reach A and B through forward: compute the update from the Vars themselves, not from detached copies.",
        _ => "",
    }
}

fn test_description(test: &str) -> &'static str {
    match test {
        "init" => "initialisation: A uniform in ±1/√in, B zero, output equal to the base",
        "forward" => "forward on 2-D inputs",
        "batched" => "forward on 3-D inputs",
        "merge" => "merged weight",
        "gradients" => "gradients of A and B",
        _ => "",
    }
}

/// Score the outputs against the expected values.
pub fn score(
    spec: &NumericsSpec,
    cases: &[Case],
    expected: &[Expected],
    outputs: Result<&Outputs, String>,
) -> Vec<TestResult> {
    let tol = spec.tolerance;
    super::spec::LORA_TESTS
        .iter()
        .filter_map(|&test| spec.points.get(test).map(|p| (test, *p)))
        .map(|(test, max_points)| {
            let verdict = match &outputs {
                Err(why) => Err(why.clone()),
                Ok(out) => cases
                    .iter()
                    .zip(expected)
                    .try_for_each(|(c, want)| match test {
                        "init" => check_init(c, out, want, tol),
                        "forward" if !c.batched => out.close(c, names::Y, &want.y, tol),
                        "batched" if c.batched => out.close(c, names::Y, &want.y, tol),
                        "merge" => out.close(c, names::MERGED, &want.merged, tol),
                        "gradients" => out
                            .close(c, names::GRAD_A, &want.grad_a, tol)
                            .and_then(|_| out.close(c, names::GRAD_B, &want.grad_b, tol)),
                        _ => Ok(()),
                    }),
            };
            let n = cases
                .iter()
                .filter(|c| match test {
                    "forward" => !c.batched,
                    "batched" => c.batched,
                    _ => true,
                })
                .count();
            match verdict {
                Ok(()) => TestResult {
                    name: test.to_string(),
                    passed: true,
                    points: max_points,
                    max_points,
                    message: format!("{}: passed on {n} hidden cases", test_description(test)),
                },
                Err(why) => TestResult {
                    name: test.to_string(),
                    passed: false,
                    points: 0.0,
                    max_points,
                    message: format!(
                        "{}: failed. {why}. Hint: {}",
                        test_description(test),
                        test_hint(test)
                    ),
                },
            }
        })
        .collect()
}

/// Run the hidden numerical tests on a submission binary with `threads`
/// threads (the lab's `[limits] threads`), as a plain child process: for
/// the lab author's own binaries (see [`run_numerics_isolated`]). `Err` is an
/// infrastructure failure (not gradable); everything the submission does
/// wrong, including crashing or hanging, is a failed test in the report.
pub fn run_numerics(
    spec: &NumericsSpec,
    binary: &Path,
    work: &Path,
    threads: u32,
    on_event: &mut dyn FnMut(&Event),
) -> Result<NumericsReport, CodeLabError> {
    run_numerics_isolated(
        spec,
        binary,
        work,
        threads,
        DEFAULT_MEMORY_BYTES,
        &Isolation::Trusted,
        on_event,
    )
}

/// Memory of a numerics run when the lab gives none.
pub const DEFAULT_MEMORY_BYTES: u64 = 2 << 30;

/// The input and output files of a numerics run, inside its folders.
const INPUT_FILE: &str = "numerics-in.safetensors";
const OUTPUT_FILE: &str = "numerics-out.safetensors";

/// [`run_numerics`] under `isolation`: in the sandbox the binary reads the
/// cases from a read-only folder and writes its output to `/work`, which the
/// grader reads back (regular file, size cap) into `work`. `memory_bytes`
/// caps the sandboxed run.
pub fn run_numerics_isolated(
    spec: &NumericsSpec,
    binary: &Path,
    work: &Path,
    threads: u32,
    memory_bytes: u64,
    isolation: &Isolation,
    on_event: &mut dyn FnMut(&Event),
) -> Result<NumericsReport, CodeLabError> {
    std::fs::create_dir_all(work).map_err(|e| CodeLabError::io(work, e))?;
    let cases = make_cases(spec.seed)?;
    let expected: Vec<Expected> = cases.iter().map(expected).collect::<Result<_, _>>()?;
    let input_dir = work.join("input");
    std::fs::create_dir_all(&input_dir).map_err(|e| CodeLabError::io(&input_dir, e))?;
    write_inputs(&cases, &input_dir.join(INPUT_FILE))?;
    let out = work.join(OUTPUT_FILE);
    let max_bytes = max_output_bytes(&cases);
    let seed = spec.seed.to_string();
    let job = Job {
        binary,
        input_dir: &input_dir,
        output_dir: work,
        outputs: &[(OUTPUT_FILE, max_bytes)],
        limit: Duration::from_secs(spec.timeout_seconds),
        threads,
        memory_bytes,
    };
    let ran = run_job(
        isolation,
        &job,
        &|input: &Path, output: &Path| {
            vec![
                "numerics".to_string(),
                "--inputs".into(),
                input.join(INPUT_FILE).display().to_string(),
                "--out".into(),
                output.join(OUTPUT_FILE).display().to_string(),
                "--seed".into(),
                seed.clone(),
            ]
        },
        on_event,
    )?;
    let proc: ProcessOutcome = ran.process;
    let outputs = match ran.refused.get(OUTPUT_FILE) {
        Some(why) => Err(why.clone()),
        None if proc.exit == ExitKind::Success => read_outputs(&out, max_bytes),
        None => Err(proc.describe_failure()),
    };
    let tests = score(
        spec,
        &cases,
        &expected,
        outputs.as_ref().map_err(Clone::clone),
    );
    let points = tests.iter().map(|t| t.points).sum();
    let max_points = tests.iter().map(|t| t.max_points).sum();
    Ok(NumericsReport {
        tests,
        points,
        max_points,
        exit: proc.exit,
        wall_s: proc.wall_s,
        peak_rss_mib: proc.peak_rss_mib,
    })
}
