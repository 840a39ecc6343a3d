//! The training loop that programs share: steps, events, evaluation,
//! divergence and early stopping. A program supplies the model side through
//! [`Trainee`]; [`fit`] drives it with an [`Optimizer`].

use std::time::Instant;

use candle_core::{DType, Tensor};

use super::ProgramError;
use crate::lab::Direction;
use crate::train::events::{Event, EventSink};
use crate::train::{metrics1, EarlyStopping, EvalVerdict, Optimizer};

/// The model side of a training run.
pub(crate) trait Trainee {
    /// A copy of the weights, kept when early stopping sees a new best.
    type Snapshot;
    /// The mean loss of the next training batch (training mode), on the
    /// optimizer's vars.
    fn batch_loss(&mut self) -> Result<Tensor, ProgramError>;
    /// The validation metric of the current weights.
    fn validate(&mut self) -> Result<f64, ProgramError>;
    /// A detached copy of the current weights.
    fn snapshot(&self) -> Result<Self::Snapshot, ProgramError>;
}

/// How [`fit`] runs.
pub(crate) struct FitPlan {
    pub program: &'static str,
    pub metric: &'static str,
    pub direction: Direction,
    pub total_steps: u64,
    pub eval_every: u64,
    pub patience: Option<u64>,
    pub seed: u64,
}

/// What [`fit`] returns.
pub(crate) struct Fitted<S> {
    /// The best evaluated weights with early stopping on, else the last.
    pub weights: S,
    /// The validation metric of `weights`, when evaluated.
    pub valid_metric: Option<f64>,
    pub steps: u64,
}

/// Train until `plan.total_steps`, early stopping or a non-finite loss,
/// emitting `started`, `step`, `eval` and `early_stop` events.
pub(crate) fn fit<T: Trainee>(
    trainee: &mut T,
    opt: &mut Optimizer,
    plan: &FitPlan,
    sink: &mut dyn EventSink,
) -> Result<Fitted<T::Snapshot>, ProgramError> {
    let t0 = Instant::now();
    let trainable_params = opt.vars().iter().map(|v| v.elem_count() as u64).sum();
    sink.emit(Event::Started {
        program: plan.program.into(),
        seed: plan.seed,
        total_steps: plan.total_steps,
        trainable_params,
    });
    let mut early = EarlyStopping::new(plan.patience, plan.direction);
    let mut best = None;
    let mut last_valid = None;
    let eval_every = plan.eval_every.max(1);
    let mut step = 0;
    while step < plan.total_steps {
        step += 1;
        let loss = trainee.batch_loss()?;
        let loss_v = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !loss_v.is_finite() {
            sink.emit(Event::Step {
                step,
                loss: loss_v,
                lr: opt.lr_at(step),
                grad_norm: f64::NAN,
                elapsed_s: t0.elapsed().as_secs_f64(),
            });
            sink.emit(Event::Log {
                message: format!("loss became {loss_v} at step {step}; training stopped"),
            });
            break;
        }
        let stats = opt.backward_step(&loss)?;
        sink.emit(Event::Step {
            step,
            loss: loss_v,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            elapsed_s: t0.elapsed().as_secs_f64(),
        });
        if step % eval_every == 0 || step == plan.total_steps {
            let metric = trainee.validate()?;
            last_valid = Some(metric);
            sink.emit(Event::Eval {
                step,
                metrics: metrics1(plan.metric, metric),
                elapsed_s: t0.elapsed().as_secs_f64(),
            });
            match early.observe(step, metric) {
                EvalVerdict::Improved if early.enabled() => best = Some(trainee.snapshot()?),
                EvalVerdict::Stop => {
                    let (best_step, best_metric) = early.best().unwrap_or((step, metric));
                    sink.emit(Event::EarlyStop {
                        step,
                        best_step,
                        best_metric,
                    });
                    break;
                }
                _ => {}
            }
        }
    }
    let (weights, valid_metric) = match best {
        Some(b) => (b, early.best().map(|(_, m)| m)),
        None => (trainee.snapshot()?, last_valid),
    };
    Ok(Fitted {
        weights,
        valid_metric,
        steps: step,
    })
}
