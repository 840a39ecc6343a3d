//! Checking an untrusted safetensors checkpoint before loading it.
//!
//! [`inspect`] reads only the 8-byte length and the JSON header, and checks
//! them against the reference architecture's [`TensorSpec`]s (names, dtypes,
//! shapes, byte sizes, offsets, total file size) before any tensor memory is
//! allocated. [`load_checked`] then reads the file and rejects NaN/inf weights.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// Largest JSON header accepted (a real header is a few hundred bytes per tensor).
pub const MAX_HEADER_BYTES: u64 = 1 << 20;

/// What one tensor of a checkpoint must look like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn f32(name: impl Into<String>, shape: &[usize]) -> Self {
        Self {
            name: name.into(),
            dtype: "F32".into(),
            shape: shape.to_vec(),
        }
    }

    fn dtype_size(&self) -> Option<u64> {
        match self.dtype.as_str() {
            "F32" | "I32" | "U32" => Some(4),
            "F16" | "BF16" | "I16" | "U16" => Some(2),
            "F64" | "I64" | "U64" => Some(8),
            "U8" | "I8" | "BOOL" => Some(1),
            _ => None,
        }
    }

    /// Size of the tensor's data in bytes.
    pub fn bytes(&self) -> u64 {
        self.shape.iter().map(|d| *d as u64).product::<u64>() * self.dtype_size().unwrap_or(0)
    }
}

/// Why a checkpoint was rejected (the submission's fault, not the grader's).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CheckpointError {
    #[error("cannot read the checkpoint: {0}")]
    Io(String),
    #[error("not a safetensors file: {0}")]
    Malformed(String),
    #[error("header of {0} bytes is larger than the limit of {MAX_HEADER_BYTES}")]
    HeaderTooLarge(u64),
    #[error("file is truncated: header and data need {needed} bytes, the file has {actual}")]
    Truncated { needed: u64, actual: u64 },
    #[error("unexpected tensor `{0}` (not part of this lab's model)")]
    Extra(String),
    #[error("missing tensor `{0}`")]
    Missing(String),
    #[error("tensor `{name}`: expected dtype {expected}, found {found}")]
    WrongDtype {
        name: String,
        expected: String,
        found: String,
    },
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}`: data offsets {begin}..{end} do not match its size of {bytes} bytes or the file")]
    BadOffsets {
        name: String,
        begin: u64,
        end: u64,
        bytes: u64,
    },
    #[error("tensor `{0}` contains NaN or infinite values")]
    NonFinite(String),
}

#[derive(Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// Check the header of `path` against `specs` without reading tensor data.
pub fn inspect(path: &Path, specs: &[TensorSpec]) -> Result<(), CheckpointError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| CheckpointError::Io(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(CheckpointError::Io("not a regular file".into()));
    }
    let actual = meta.len();
    let mut f = std::fs::File::open(path).map_err(|e| CheckpointError::Io(e.to_string()))?;
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8)
        .map_err(|_| CheckpointError::Malformed("shorter than the 8-byte header length".into()))?;
    let n = u64::from_le_bytes(len8);
    if n > MAX_HEADER_BYTES {
        return Err(CheckpointError::HeaderTooLarge(n));
    }
    if 8 + n > actual {
        return Err(CheckpointError::Truncated {
            needed: 8 + n,
            actual,
        });
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| CheckpointError::Io(e.to_string()))?;
    check_header(&header, actual - 8 - n, specs)
}

/// Check a header (the JSON bytes) given the size of the data that follows.
pub fn check_header(
    header: &[u8],
    data_len: u64,
    specs: &[TensorSpec],
) -> Result<(), CheckpointError> {
    let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| CheckpointError::Malformed(format!("header is not a JSON object: {e}")))?;
    let mut entries = BTreeMap::new();
    for (k, v) in raw {
        if k == "__metadata__" {
            continue;
        }
        let e: HeaderEntry = serde_json::from_value(v)
            .map_err(|e| CheckpointError::Malformed(format!("entry `{k}`: {e}")))?;
        entries.insert(k, e);
    }
    let by_name: HashMap<&str, &TensorSpec> = specs.iter().map(|s| (s.name.as_str(), s)).collect();
    if let Some(extra) = entries.keys().find(|k| !by_name.contains_key(k.as_str())) {
        return Err(CheckpointError::Extra(extra.clone()));
    }
    if let Some(missing) = specs.iter().find(|s| !entries.contains_key(&s.name)) {
        return Err(CheckpointError::Missing(missing.name.clone()));
    }
    let mut ranges = Vec::new();
    for spec in specs {
        let e = &entries[&spec.name];
        if e.dtype != spec.dtype {
            return Err(CheckpointError::WrongDtype {
                name: spec.name.clone(),
                expected: spec.dtype.clone(),
                found: e.dtype.clone(),
            });
        }
        if e.shape != spec.shape {
            return Err(CheckpointError::WrongShape {
                name: spec.name.clone(),
                expected: spec.shape.clone(),
                found: e.shape.clone(),
            });
        }
        let (begin, end) = e.data_offsets;
        let bytes = spec.bytes();
        if end < begin || end - begin != bytes || end > data_len {
            return Err(CheckpointError::BadOffsets {
                name: spec.name.clone(),
                begin,
                end,
                bytes,
            });
        }
        ranges.push((begin, end, spec.name.clone()));
    }
    ranges.sort();
    let mut pos = 0;
    for (begin, end, name) in &ranges {
        if *begin != pos {
            return Err(CheckpointError::BadOffsets {
                name: name.clone(),
                begin: *begin,
                end: *end,
                bytes: end - begin,
            });
        }
        pos = *end;
    }
    if pos != data_len {
        return Err(CheckpointError::Malformed(format!(
            "{} bytes of data after the last tensor",
            data_len.saturating_sub(pos)
        )));
    }
    Ok(())
}

/// Inspect, then load the tensors and reject NaN/inf values.
pub fn load_checked(
    path: &Path,
    specs: &[TensorSpec],
    device: &Device,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    inspect(path, specs)?;
    let bytes = std::fs::read(path).map_err(|e| CheckpointError::Io(e.to_string()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    check_finite(&tensors)?;
    Ok(tensors)
}

/// Reject tensors with NaN or infinite values.
pub fn check_finite(tensors: &HashMap<String, Tensor>) -> Result<(), CheckpointError> {
    let mut names: Vec<_> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = &tensors[name];
        if !t.dtype().is_float() {
            continue;
        }
        let finite = t
            .to_dtype(DType::F64)
            .and_then(|x| x.flatten_all())
            .and_then(|x| x.to_vec1::<f64>())
            .map(|v| v.iter().all(|x| x.is_finite()))
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        if !finite {
            return Err(CheckpointError::NonFinite(name.clone()));
        }
    }
    Ok(())
}
