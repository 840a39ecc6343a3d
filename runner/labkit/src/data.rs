//! Training data for the harness: feature vectors with class labels.
//!
//! The runner prepares a lab's public splits for a submission. For the
//! `lora-from-scratch` lab, each image has already been passed through the
//! frozen convolutional layers of the base model, so a split is a matrix of
//! features `[n, d]` (`f32`) and a vector of labels `[n]` (`u32`), stored in a
//! safetensors file under the names `features` and `labels`.
//!
//! ```
//! use std::collections::BTreeMap;
//! use labkit::candle::{Device, Tensor};
//! use labkit::data::{BatchSampler, FeatureSet};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("train.safetensors");
//! let mut t = BTreeMap::new();
//! t.insert("features".to_string(), Tensor::zeros((4, 3), labkit::candle::DType::F32, &Device::Cpu)?);
//! t.insert("labels".to_string(), Tensor::new(&[0u32, 1, 1, 0], &Device::Cpu)?);
//! labkit::checkpoint::save(&t, &path)?;
//!
//! let set = FeatureSet::load(&path, 2)?;
//! assert_eq!((set.len(), set.dim()), (4, 3));
//!
//! // Seeded mini-batches: every example once per epoch, in a seeded order.
//! let mut sampler = BatchSampler::new(set.len(), 2, 7);
//! let mut seen: Vec<usize> = (0..2).flat_map(|_| sampler.next_batch()).collect();
//! seen.sort();
//! assert_eq!(seen, vec![0, 1, 2, 3]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use candle_core::{DType, Tensor};

use crate::init::SeededRng;
use crate::Result;

/// Largest split file read (features of a few thousand examples).
pub const MAX_SPLIT_BYTES: u64 = 256 * 1024 * 1024;

/// A labelled split of feature vectors.
#[derive(Debug, Clone)]
pub struct FeatureSet {
    /// `[n, d]`, `f32`.
    pub features: Tensor,
    /// `[n]`, `u32` class indices.
    pub labels: Tensor,
    /// The labels as a vector.
    pub label_vec: Vec<usize>,
}

impl FeatureSet {
    /// Load a split and check it: `features` is `[n, d]` `f32` and finite,
    /// `labels` is `[n]` `u32` with every label below `classes`.
    pub fn load(path: &Path, classes: usize) -> Result<FeatureSet> {
        let t = crate::checkpoint::load(path, MAX_SPLIT_BYTES)?;
        let get = |name: &str| {
            t.get(name).cloned().ok_or_else(|| {
                candle_core::Error::Msg(format!("{}: no tensor `{name}`", path.display()))
            })
        };
        let features = get("features")?;
        let labels = get("labels")?;
        if features.dtype() != DType::F32 || features.rank() != 2 {
            candle_core::bail!(
                "{}: `features` must be a 2-D f32 tensor, found {:?} {:?}",
                path.display(),
                features.dtype(),
                features.dims()
            );
        }
        let n = features.dims()[0];
        if labels.dtype() != DType::U32 || labels.dims() != [n] {
            candle_core::bail!(
                "{}: `labels` must be a u32 vector of {n}, found {:?} {:?}",
                path.display(),
                labels.dtype(),
                labels.dims()
            );
        }
        if n == 0 {
            candle_core::bail!("{}: the split is empty", path.display());
        }
        let finite = features
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            candle_core::bail!("{}: `features` has NaN or infinite values", path.display());
        }
        let label_vec: Vec<usize> = labels
            .to_vec1::<u32>()?
            .iter()
            .map(|&l| l as usize)
            .collect();
        if let Some(bad) = label_vec.iter().find(|&&l| l >= classes) {
            candle_core::bail!(
                "{}: label {bad} is not below the {classes} classes",
                path.display()
            );
        }
        Ok(FeatureSet {
            features,
            labels,
            label_vec,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.label_vec.len()
    }

    pub fn is_empty(&self) -> bool {
        self.label_vec.is_empty()
    }

    /// Feature width `d`.
    pub fn dim(&self) -> usize {
        self.features.dims()[1]
    }

    /// The examples at `indices`: (`[k, d]` features, `[k]` labels).
    pub fn batch(&self, indices: &[usize]) -> Result<(Tensor, Tensor)> {
        let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_vec(idx, indices.len(), self.features.device())?;
        Ok((
            self.features.index_select(&idx, 0)?,
            self.labels.index_select(&idx, 0)?,
        ))
    }
}

/// Seeded mini-batches: each epoch visits every example once, in an order
/// shuffled by the seed. Batches never straddle two epochs.
#[derive(Debug, Clone)]
pub struct BatchSampler {
    order: Vec<usize>,
    pos: usize,
    batch: usize,
    rng: SeededRng,
}

impl BatchSampler {
    pub fn new(n: usize, batch: usize, seed: u64) -> Self {
        let mut s = Self {
            order: (0..n).collect(),
            pos: n,
            batch: batch.clamp(1, n.max(1)),
            rng: SeededRng::new(seed ^ 0xBA7C_4E55),
        };
        s.shuffle();
        s
    }

    fn shuffle(&mut self) {
        for i in (1..self.order.len()).rev() {
            let j = self.rng.below(i + 1);
            self.order.swap(i, j);
        }
        self.pos = 0;
    }

    /// The next batch of example indices.
    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.order.is_empty() {
            return Vec::new();
        }
        if self.pos + self.batch > self.order.len() {
            self.shuffle();
        }
        let out = self.order[self.pos..self.pos + self.batch].to_vec();
        self.pos += self.batch;
        out
    }
}
