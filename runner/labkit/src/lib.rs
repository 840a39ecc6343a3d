//! labkit.
