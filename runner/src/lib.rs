//! Sanhak runner.
