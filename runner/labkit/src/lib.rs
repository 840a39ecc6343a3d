//! `labkit`: the small SDK that Sanhak code-lab submissions compile against.
//!
//! A code lab asks students to implement one piece of a model in Rust (for
//! the `lora-from-scratch` lab, a LoRA linear layer and its merge). Their
//! crate depends on `labkit`, implements a labkit trait, and its `main.rs` is
//! three lines that hand control to the lab harness:
//!
//! ```no_run
//! # use labkit::prelude::*;
//! # struct MyLora;
//! # impl LoraLayer for MyLora {
//! #     fn new(_: FrozenLinear, _: LoraConfig, _: &mut SeededRng) -> Result<Self> { unimplemented!() }
//! #     fn forward(&self, _: &Tensor) -> Result<Tensor> { unimplemented!() }
//! #     fn merge(&self) -> Result<Tensor> { unimplemented!() }
//! #     fn lora_a(&self) -> &Var { unimplemented!() }
//! #     fn lora_b(&self) -> &Var { unimplemented!() }
//! # }
//! const FINE_TUNE: FineTune = FineTune { rank: 4, alpha: 8.0, learning_rate: 3e-3, steps: 300, batch_size: 32 };
//! fn main() {
//!     labkit::harness::main::<MyLora>(FINE_TUNE)
//! }
//! ```
//!
//! The pieces:
//! - [`lora`]: the [`lora::LoraLayer`] trait the harness calls, the frozen
//!   base layer [`lora::FrozenLinear`] and [`lora::LoraConfig`].
//! - [`init`]: [`init::SeededRng`], a seeded random generator (candle's own
//!   CPU generator cannot be seeded, and grades must be reproducible).
//! - [`data`]: the training data the harness reads ([`data::FeatureSet`]) and
//!   a seeded [`data::BatchSampler`].
//! - [`events`]: JSON-lines progress events on stdout ([`events::Reporter`]).
//! - [`checkpoint`]: writing and reading safetensors checkpoints.
//! - [`harness`]: the process protocol the runner speaks with a submission
//!   (`numerics` and `train` subcommands).
//!
//! labkit re-exports the candle crates it is built against ([`candle`] and
//! [`candle_nn`]), so submissions use exactly the same versions.
//!
//! Nothing a submission prints is trusted: the grader runs outside the
//! sandbox, recomputes expected values itself and validates every file a
//! submission writes (names, shapes, dtypes, NaN, sizes).

pub mod checkpoint;
pub mod data;
pub mod events;
pub mod harness;
pub mod init;
pub mod lora;

pub use candle_core as candle;
pub use candle_nn;

/// The candle result type used throughout labkit.
pub type Result<T> = candle_core::Result<T>;

/// What a submission usually needs: `use labkit::prelude::*;`.
pub mod prelude {
    pub use crate::harness::FineTune;
    pub use crate::init::SeededRng;
    pub use crate::lora::{FrozenLinear, LoraConfig, LoraLayer};
    pub use crate::Result;
    pub use candle_core::{bail, DType, Device, Module, Tensor, Var, D};
}
