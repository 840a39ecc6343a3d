//! Sanhak runner: lab packages, recipes, candle training programs, the trusted
//! grader and the `sanhak lab …` command line.
//!
//! The pieces, in the order a submission meets them:
//! - [`lab`]: `lab.toml` parsed into typed structs, and the folder checks.
//! - [`recipe`]: a student recipe validated against the lab's schema.
//! - [`programs`]: the training programs (trait [`programs::Program`]) and
//!   [`programs::run_program`], the entry point a sandboxed child calls.
//! - [`train`]: the shared training machinery (optimizer, schedules,
//!   clipping, early stopping, JSON-lines events, checkpoints).
//! - [`grade`]: the trusted grader, run outside the sandbox.
//! - [`codelab`]: code labs: the process protocol with a labkit submission,
//!   the hidden numerical tests and the graded fine-tuning run.
//! - [`check`] and [`cli`]: `sanhak lab check|run|build-base`.
//! - [`bench`]: `sanhak bench train`, candle against PyTorch on each program's shapes.

pub mod bench;
pub mod check;
pub mod cli;
pub mod codelab;
pub mod grade;
pub mod lab;
pub mod nn;
pub mod programs;
pub mod protocol;
pub mod recipe;
pub mod service;
pub mod train;
