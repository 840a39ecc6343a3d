//! Sanhak: the lab platform for industry–university AI courses.
//!
//! This crate holds the web app, its JSON API and the `sanhak` command line.
//! The library exposes [`web::build_router`] and [`startup::Application`]
//! (which can bind port 0), so tests run exactly what production runs.

pub mod auth;
pub mod bench;
pub mod bench_web;
pub mod cli;
pub mod config;
pub mod coursework;
pub mod db;
pub mod demo;
pub mod domain;
pub mod error;
pub mod files;
pub mod publish;
pub mod queue;
pub mod secrets;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod web;
pub mod worker;
