//! The typed application state shared by every handler.

use std::sync::Arc;

use axum::extract::FromRef;

use crate::config::Config;
use crate::db::Db;
use crate::queue::Queue;
use crate::web::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub queue: Arc<Queue>,
}

impl FromRef<AppState> for Db {
    fn from_ref(state: &AppState) -> Db {
        state.db.clone()
    }
}

impl FromRef<AppState> for Arc<Config> {
    fn from_ref(state: &AppState) -> Arc<Config> {
        state.config.clone()
    }
}
