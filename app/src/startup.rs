//! Building and running the application: a real server that can bind port 0,
//! so tests drive exactly what production runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;

use crate::auth::store::Store;
use crate::config::Config;
use crate::db::jobs::QueuePolicy;
use crate::db::Db;
use crate::queue::{self, LabCatalog, Queue};
use crate::state::AppState;
use crate::web::{self, metrics::Metrics};

pub struct Application {
    listener: TcpListener,
    router: Router,
    pub state: AppState,
}

/// Connects the database (running migrations) and the session store.
pub async fn prepare_state(config: Config) -> anyhow::Result<(AppState, Store)> {
    let db = Db::connect(config.database_url.expose()).await?;
    db.migrate().await?;
    let store = Store::connect(config.database_url.expose()).await?;
    let labs_dir = config.labs_dir.clone();
    let catalog = tokio::task::spawn_blocking(move || LabCatalog::load(&labs_dir)).await??;
    let q = &config.queue;
    let policy = QueuePolicy {
        lease_ms: q.lease_seconds as i64 * 1000,
        max_attempts: i64::from(q.max_attempts),
        max_running_per_student: i64::from(q.max_running_per_student),
        deadline_window_ms: i64::from(q.deadline_priority_hours) * 3_600_000,
        cpu_rate: q.cpu_charge_rate,
        ..QueuePolicy::default()
    };
    let queue = Arc::new(Queue::new(policy, catalog, q.step_scale));
    let state = AppState {
        db,
        config: Arc::new(config),
        metrics: Arc::new(Metrics::new()?),
        queue,
    };
    crate::publish::load_published(&state).await?;
    Ok((state, store))
}

impl Application {
    /// Prepares everything and binds `config.bind` (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let bind = config.bind;
        let (state, store) = prepare_state(config).await?;
        let cleanup = store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                if let Err(e) = cleanup.delete_expired().await {
                    tracing::warn!(error = %e, "deleting expired sessions failed");
                }
            }
        });
        let expiry_db = state.db.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Err(e) = crate::db::postings::expire_due(&expiry_db).await {
                    tracing::warn!(error = %e, "expiring postings failed");
                }
            }
        });
        let reap_every =
            Duration::from_millis((state.queue.policy.lease_ms / 4).clamp(250, 5_000) as u64);
        queue::spawn_reaper(state.db.clone(), state.queue.clone(), reap_every);
        let router = web::build_router(state.clone(), store);
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("binding {bind}"))?;
        Ok(Application {
            listener,
            router,
            state,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process receives Ctrl-C or SIGTERM. Waiting runner
    /// claims and live streams are ended at once, so the requests in flight
    /// finish quickly.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let queue = self.state.queue.clone();
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            queue.stop();
        })
        .await
        .context("serving HTTP")
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
