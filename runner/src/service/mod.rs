//! The runner side of the runner service: the lab-package cache and the
//! execution of one claimed job (sandboxed training, trusted grading). The
//! HTTP loop that claims jobs and reports results is `sanhak worker` in the
//! app crate; it calls into here from `spawn_blocking`.

pub mod cache;
pub mod exec;
pub mod gpu;
pub mod gpu_check;

pub use cache::{LabCache, LabDirs};
pub use exec::{Executor, JobControl, JobEnd};
pub use gpu::{GpuAssignment, GpuPool, GpuWatch, HostGpu};
