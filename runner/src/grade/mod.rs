//! The trusted grader. Runs outside the sandbox: loads a submission's
//! checkpoint into the lab's reference architecture (after checking its header
//! against [`Program::checkpoint_spec`]), scores it on the hidden split, maps
//! the metric to points by the lab's rubric and writes feedback.
//!
//! Three outcomes: [`GradeOutcome::Graded`]; [`GradeOutcome::Rejected`] when
//! the submission's checkpoint is not acceptable (a zero, with the reason);
//! [`GradeOutcome::NotGradable`] when the grader itself failed (missing hidden
//! data, a program error): never a zero, the job should be retried or looked at.

pub mod checkpoint;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::lab::{Direction, FeedbackItem, Lab};
use crate::programs::{program_for, Evaluation, Program, ProgramError};
use crate::train::CurveSummary;

/// Result of grading one submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum GradeOutcome {
    Graded(Box<GradeReport>),
    /// The checkpoint was refused: zero points, with the reason.
    Rejected {
        reason: String,
    },
    /// The grader could not grade (infrastructure): not a zero.
    NotGradable {
        reason: String,
    },
}

impl GradeOutcome {
    /// Points, where there are points (`None` for not gradable).
    pub fn points(&self) -> Option<f64> {
        match self {
            GradeOutcome::Graded(r) => Some(r.points),
            GradeOutcome::Rejected { .. } => Some(0.0),
            GradeOutcome::NotGradable { .. } => None,
        }
    }
}

/// Metric and points on one part of the hidden split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PartScore {
    pub examples: usize,
    pub metric: f64,
    pub points: f64,
}

/// Accuracy of one class (on the public part).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    pub class: String,
    pub examples: usize,
    pub accuracy: f64,
}

/// What a student is shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub public_metric: Option<f64>,
    pub private_metric: Option<f64>,
    /// Per-class accuracy on the public part.
    pub per_class: Option<Vec<ClassScore>>,
    /// Confusion matrix on the public part: `[true][predicted]` counts.
    pub confusion: Option<Vec<Vec<u32>>>,
    pub curve: Option<CurveSummary>,
    pub hints: Vec<String>,
}

/// A graded submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradeReport {
    pub lab_id: String,
    pub lab_version: String,
    pub metric_name: String,
    /// Metric on the whole hidden split.
    pub metric: f64,
    /// Points from the whole hidden split's metric.
    pub points: f64,
    pub max_points: f64,
    pub reaches_target: bool,
    /// The part shown on the leaderboard before the deadline.
    pub public: PartScore,
    /// The part that decides the final ranking.
    pub private: PartScore,
    pub feedback: Feedback,
}

/// Whether hidden example `index` of a lab is in the public part. Deterministic
/// (a hash of the lab id and the index), so the split never changes between
/// submissions and students cannot pick it.
pub fn is_public(lab_id: &str, index: usize, fraction: f64) -> bool {
    let mut h = Sha256::new();
    h.update(lab_id.as_bytes());
    h.update(b":public-split:");
    h.update((index as u64).to_le_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_le_bytes(b) as f64 / u64::MAX as f64) < fraction
}

/// Grade a checkpoint file of a submission.
pub fn grade_checkpoint(lab: &Lab, path: &Path, curve: Option<&CurveSummary>) -> GradeOutcome {
    let program = match program_for(lab) {
        Ok(p) => p,
        Err(e) => {
            return GradeOutcome::NotGradable {
                reason: e.to_string(),
            }
        }
    };
    let spec = match program.checkpoint_spec(lab) {
        Ok(s) => s,
        Err(e) => {
            return GradeOutcome::NotGradable {
                reason: e.to_string(),
            }
        }
    };
    let weights = match checkpoint::load_checked(path, &spec, &Device::Cpu) {
        Ok(w) => w,
        Err(e) => {
            return GradeOutcome::Rejected {
                reason: format!("checkpoint rejected: {e}"),
            }
        }
    };
    grade_weights(lab, program.as_ref(), &weights, curve)
}

/// Grade weights already loaded into the reference architecture.
pub fn grade_weights(
    lab: &Lab,
    program: &dyn Program,
    weights: &HashMap<String, Tensor>,
    curve: Option<&CurveSummary>,
) -> GradeOutcome {
    match score(lab, program, weights, curve) {
        Ok(r) => GradeOutcome::Graded(Box::new(r)),
        Err(e) => {
            tracing::error!(lab = %lab.id(), error = %e, "grader failure");
            GradeOutcome::NotGradable {
                reason: e.to_string(),
            }
        }
    }
}

fn score(
    lab: &Lab,
    program: &dyn Program,
    weights: &HashMap<String, Tensor>,
    curve: Option<&CurveSummary>,
) -> Result<GradeReport, ProgramError> {
    let g = &program.grading(lab)?;
    let eval = program.evaluate(lab, weights, &g.split, true)?;
    let public_mask: Vec<bool> = (0..eval.examples.len())
        .map(|i| is_public(lab.id(), i, g.public_fraction))
        .collect();
    let metric = eval
        .metric()
        .ok_or_else(|| ProgramError::Other("the hidden split is empty".into()))?;
    let part = |public: bool| -> Result<PartScore, ProgramError> {
        let m = eval
            .metric_where(|i| public_mask[i] == public)
            .ok_or_else(|| ProgramError::Other("a part of the hidden split is empty".into()))?;
        Ok(PartScore {
            examples: public_mask.iter().filter(|p| **p == public).count(),
            metric: m,
            points: g.points_for(m),
        })
    };
    let public = part(true)?;
    let private = part(false)?;
    let points = g.points_for(metric);
    let want = |item: FeedbackItem| g.feedback.contains(&item);
    let mut feedback = Feedback {
        public_metric: want(FeedbackItem::PublicMetric).then_some(public.metric),
        private_metric: want(FeedbackItem::PrivateMetric).then_some(private.metric),
        ..Feedback::default()
    };
    if want(FeedbackItem::PerClass) || want(FeedbackItem::ConfusionMatrix) {
        if let Some((per_class, confusion)) = class_breakdown(&eval, &public_mask) {
            if want(FeedbackItem::PerClass) {
                feedback.per_class = Some(per_class);
            }
            if want(FeedbackItem::ConfusionMatrix) {
                feedback.confusion = Some(confusion);
            }
        }
    }
    if want(FeedbackItem::TrainingCurve) {
        feedback.curve = curve.cloned();
    }
    if want(FeedbackItem::Hints) && points < g.points {
        feedback.hints = hints(lab, points, curve);
    }
    Ok(GradeReport {
        lab_id: lab.id().to_string(),
        lab_version: lab.manifest.version.clone(),
        metric_name: g.metric.clone(),
        metric,
        points,
        max_points: g.points,
        reaches_target: g.reaches_target(metric),
        public,
        private,
        feedback,
    })
}

/// Per-class accuracy and confusion matrix on the public part.
fn class_breakdown(eval: &Evaluation, public: &[bool]) -> Option<(Vec<ClassScore>, Vec<Vec<u32>>)> {
    let names = eval.class_names.as_ref()?;
    let k = names.len();
    let mut confusion = vec![vec![0u32; k]; k];
    for (i, e) in eval.examples.iter().enumerate() {
        if !public[i] {
            continue;
        }
        if let (Some(l), Some(p)) = (e.label, e.predicted) {
            if l < k && p < k {
                confusion[l][p] += 1;
            }
        }
    }
    let per_class = names
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let n: u32 = confusion[c].iter().sum();
            ClassScore {
                class: name.clone(),
                examples: n as usize,
                accuracy: if n == 0 {
                    0.0
                } else {
                    f64::from(confusion[c][c]) / f64::from(n)
                },
            }
        })
        .collect();
    Some((per_class, confusion))
}

/// What to try next: the lab's own hints, then hints read from the curve.
fn hints(lab: &Lab, points: f64, curve: Option<&CurveSummary>) -> Vec<String> {
    let mut out: Vec<String> = lab
        .manifest
        .grading
        .hints
        .iter()
        .filter(|h| points < h.below_points)
        .map(|h| h.text.clone())
        .collect();
    if let Some(c) = curve {
        if c.diverged {
            out.push("The loss became NaN or infinite: lower the learning rate or turn on gradient clipping.".into());
        } else if let (Some(first), Some(last)) = (c.first_loss, c.final_loss) {
            if last > 0.8 * first {
                out.push(
                    "The training loss barely fell: raise the learning rate, train for more steps, or unfreeze more layers."
                        .into(),
                );
            } else if last > first {
                out.push("The training loss rose: the learning rate is probably too high.".into());
            }
        }
        // The eval metric at its best (by the lab's direction) against where training ended.
        let higher_is_better = lab.manifest.grading.direction == Direction::Higher;
        let better = |a: f64, b: f64| if higher_is_better { a.max(b) } else { a.min(b) };
        if let (Some(best), Some(last)) = (
            c.evals.iter().map(|e| e.1).fold(None, |m: Option<f64>, x| {
                Some(m.map_or(x, |m| better(m, x)))
            }),
            c.evals.last(),
        ) {
            let worsened_by = if higher_is_better {
                best - last.1
            } else {
                last.1 - best
            };
            if worsened_by > 0.03 && c.early_stopped_at.is_none() {
                out.push("The validation metric was best before the end of training: try early stopping, fewer steps or more weight decay.".into());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_split_is_deterministic_and_sized() {
        let a: Vec<bool> = (0..2000).map(|i| is_public("lab-a", i, 0.3)).collect();
        let b: Vec<bool> = (0..2000).map(|i| is_public("lab-a", i, 0.3)).collect();
        assert_eq!(a, b);
        let n = a.iter().filter(|x| **x).count();
        assert!((500..700).contains(&n), "{n}");
        let c: Vec<bool> = (0..2000).map(|i| is_public("lab-b", i, 0.3)).collect();
        assert_ne!(a, c);
    }
}
