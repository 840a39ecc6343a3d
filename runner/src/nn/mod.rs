//! Neural-network models written on candle, with gradients that reach every
//! trainable tensor.
//!
//! - [`gpt`]: a byte-level tiny GPT (vocabulary 256), its loss in nats and
//!   bits per byte, and sampling.
//! - [`bert`]: a BERT-family encoder that loads Hugging Face folders
//!   (`config.json`, `model.safetensors`, `tokenizer.json`), mean pooling,
//!   sentence embeddings and a classification head, trained fully, head-only
//!   or with LoRA ([`bert::FineTuneMode`]).
//! - [`lora`]: a LoRA linear layer and its merge; [`linear::Proj`] is the
//!   projection every model uses, plain or LoRA-wrapped.
//! - [`init`]: seeded, PyTorch-equivalent initialisation (candle's CPU RNG
//!   cannot be seeded) and seeded dropout.
//! - [`fetch`]: `sanhak model fetch minilm`'s implementation.
//! - [`bench`]: timing of GPT training steps (`sanhak bench train`).
//!
//! Only differentiable candle ops are used: `ops::layer_norm_slow` and
//! `ops::softmax(x, D::Minus1)`, never the fused `LayerNorm`, `softmax_last_dim`
//! or `rms_norm` fast paths, which have no backward pass in candle-nn 0.11.
//! To freeze weights, load them as plain tensors; trainable weights are
//! `Var`s in a `VarMap`.

pub mod bench;
pub mod bert;
pub mod fetch;
pub mod gpt;
#[cfg(test)]
mod gradcheck;
pub mod init;
pub mod linear;
pub mod lora;

use std::path::PathBuf;

/// Errors of the model code that is not pure tensor arithmetic: loading
/// folders, tokenizing, fetching.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid model config: {message}")]
    Config { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model weights: {0}")]
    Weights(String),
    #[error("fetch: {0}")]
    Fetch(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, NnError>;

impl NnError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NnError::Io {
            path: path.into(),
            source,
        }
    }
}
