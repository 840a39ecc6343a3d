//! Reading uncompressed IDX files (the MNIST family's format).

use std::path::Path;

use super::ProgramError;

/// Largest IDX file accepted.
const MAX_IDX_BYTES: u64 = 256 * 1024 * 1024;

/// A u8 IDX array: dimensions and data.
#[derive(Debug, Clone)]
pub struct IdxU8 {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Read a u8 IDX file (magic 0x00000800 | ndim), checking sizes.
pub fn read_idx_u8(path: &Path) -> Result<IdxU8, ProgramError> {
    let err = |message: String| ProgramError::Data {
        path: path.to_path_buf(),
        message,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| err(e.to_string()))?
        .len();
    if len > MAX_IDX_BYTES {
        return Err(err(format!("{len} bytes is larger than the limit")));
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(err("not an unsigned-byte IDX file".into()));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 || ndim > 4 || bytes.len() < 4 + 4 * ndim {
        return Err(err(format!("bad dimension count {ndim}")));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    let data = bytes[4 + 4 * ndim..].to_vec();
    if data.len() != n {
        return Err(err(format!(
            "dimensions {dims:?} need {n} bytes, found {}",
            data.len()
        )));
    }
    Ok(IdxU8 { dims, data })
}
