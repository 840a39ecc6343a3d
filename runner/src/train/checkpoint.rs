//! Writing safetensors checkpoints (atomically: temporary file, then rename).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Tensor;

use super::TrainError;

/// Write named tensors as one safetensors file and return its size in bytes.
pub fn save_checkpoint(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<u64, TrainError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| TrainError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let tmp = path.with_extension("safetensors.partial");
    // Contiguous CPU copies: safetensors stores dense row-major data.
    let mut dense = HashMap::new();
    for (k, t) in tensors {
        dense.insert(
            k.clone(),
            t.to_device(&candle_core::Device::Cpu)?.contiguous()?,
        );
    }
    candle_core::safetensors::save(&dense, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = std::fs::metadata(path)
        .map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    Ok(bytes)
}
