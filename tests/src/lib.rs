//! Sanhak end-to-end test helpers.
