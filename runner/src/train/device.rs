//! Where a run trains: the CPU, or one CUDA GPU.
//!
//! The runner service names the device in the sandbox's environment
//! (`SANHAK_DEVICE=cuda:0` for a job that holds a GPU, `cpu` otherwise); the
//! `--device` option of `sanhak lab train|run|check|build-base` reads the same
//! variable. Programs load their data and weights on the CPU, move them to
//! this device for training, and write checkpoints from the CPU again, so a
//! checkpoint is the same file whichever device trained it. The trusted
//! grader always evaluates on the CPU.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::TrainError;

/// The environment variable that names the training device.
pub const DEVICE_ENV: &str = "SANHAK_DEVICE";

/// The exit status of `sanhak lab train` when its device cannot be opened:
/// the runner's fault, not the recipe's (`EX_TEMPFAIL`), so the runner
/// reports an infrastructure failure and the job is tried again elsewhere.
pub const DEVICE_UNAVAILABLE_EXIT: i32 = 75;

/// A training device, as `cpu`, `cuda` (the first GPU) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainDevice {
    #[default]
    Cpu,
    /// The CUDA GPU with this ordinal among the visible ones.
    Cuda(usize),
}

impl FromStr for TrainDevice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("device must be `cpu`, `cuda` or `cuda:N`, found {s:?}");
        match s.trim() {
            "cpu" => Ok(TrainDevice::Cpu),
            "cuda" => Ok(TrainDevice::Cuda(0)),
            other => {
                let n = other.strip_prefix("cuda:").ok_or_else(bad)?;
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                n.parse().map(TrainDevice::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl fmt::Display for TrainDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainDevice::Cpu => f.write_str("cpu"),
            TrainDevice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl TrainDevice {
    /// Whether this build can train on CUDA (the runner's `cuda` feature).
    pub fn cuda_built() -> bool {
        candle_core::utils::cuda_is_available()
    }

    /// Opens the device. A CUDA device in a build without the `cuda`
    /// feature, or one the driver cannot open, is a clear error rather than
    /// a silent fall back to the CPU: the job holds a GPU and must use it.
    pub fn open(&self) -> Result<Device, TrainError> {
        match *self {
            TrainDevice::Cpu => Ok(Device::Cpu),
            TrainDevice::Cuda(n) if !Self::cuda_built() => Err(TrainError::Config(format!(
                "training device cuda:{n} was asked for, but this runner was built without \
                 the `cuda` feature (rebuild with `--features cuda`, or train on `cpu`)"
            ))),
            TrainDevice::Cuda(n) => Device::new_cuda(n).map_err(|e| {
                TrainError::Config(format!("cannot open training device cuda:{n}: {e}"))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_names_the_runner_sets() {
        assert_eq!("cpu".parse(), Ok(TrainDevice::Cpu));
        assert_eq!("cuda".parse(), Ok(TrainDevice::Cuda(0)));
        assert_eq!("cuda:0".parse(), Ok(TrainDevice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(TrainDevice::Cuda(3)));
        for bad in [
            "", "gpu", "cuda:", "cuda:-1", "cuda:+1", "cuda:x", "CPU", "metal",
        ] {
            let e = bad.parse::<TrainDevice>().unwrap_err();
            assert!(e.contains("`cpu`, `cuda` or `cuda:N`"), "{bad:?}: {e}");
        }
        for d in [TrainDevice::Cpu, TrainDevice::Cuda(2)] {
            assert_eq!(d.to_string().parse(), Ok(d));
        }
    }

    #[test]
    fn cpu_opens_and_cuda_without_the_feature_is_a_clear_error() {
        assert!(TrainDevice::Cpu.open().unwrap().is_cpu());
        if TrainDevice::cuda_built() {
            return;
        }
        let e = TrainDevice::Cuda(0).open().unwrap_err().to_string();
        assert!(
            e.contains("built without the `cuda` feature"),
            "unexpected error: {e}"
        );
    }
}
