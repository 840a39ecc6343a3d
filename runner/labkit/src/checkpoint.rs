//! Writing and reading safetensors checkpoints.
//!
//! Checkpoints are safetensors files and nothing else. [`save`] writes
//! atomically (a temporary file, then a rename), so a crash never leaves a
//! half-written checkpoint behind.
//!
//! ```
//! use std::collections::BTreeMap;
//! use labkit::candle::{Device, Tensor};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("model.safetensors");
//! let mut tensors = BTreeMap::new();
//! tensors.insert("fc.weight".to_string(), Tensor::ones((2, 3), labkit::candle::DType::F32, &Device::Cpu)?);
//! let bytes = labkit::checkpoint::save(&tensors, &path)?;
//! assert_eq!(bytes, std::fs::metadata(&path)?.len());
//!
//! let back = labkit::checkpoint::load(&path, 1 << 20)?;
//! assert_eq!(back["fc.weight"].dims(), &[2, 3]);
//! // A size limit protects the reader.
//! assert!(labkit::checkpoint::load(&path, 10).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::Result;

/// Write named tensors as one safetensors file; returns its size in bytes.
pub fn save(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<u64> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)?;
        }
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".partial");
    let tmp = path.with_file_name(tmp_name);
    let mut dense = HashMap::new();
    for (k, t) in tensors {
        dense.insert(k.clone(), t.to_device(&Device::Cpu)?.contiguous()?);
    }
    candle_core::safetensors::save(&dense, &tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(std::fs::metadata(path)?.len())
}

/// Read a safetensors file of at most `max_bytes` bytes onto the CPU.
pub fn load(path: &Path, max_bytes: u64) -> Result<HashMap<String, Tensor>> {
    let len = std::fs::metadata(path)?.len();
    if len > max_bytes {
        candle_core::bail!(
            "{}: {len} bytes is more than the limit of {max_bytes}",
            path.display()
        );
    }
    let bytes = std::fs::read(path)?;
    candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
}
