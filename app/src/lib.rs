//! Sanhak web app.
