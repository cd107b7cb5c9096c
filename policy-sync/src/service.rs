//! `policy-sync serve`: the background work (publisher, LISTEN connection, JWKS fetching,
//! decision-log partitions) and the HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;

use crate::api::{self, ApiSettings, AppState};
use crate::db;
use crate::hub::Hub;
use crate::jwks_fetch::{FetchSettings, Fetcher};
use crate::listener;
use crate::metrics::Metrics;
use crate::signing::Signer;

/// Everything `serve` needs.
#[derive(Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// A second listener serving only `/healthz`, `/readyz` and `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    pub database_url: String,
    pub replica_url: Option<String>,
    pub pool: db::PoolSettings,
    pub signer: Signer,
    pub api: ApiSettings,
    pub fetch: FetchSettings,
}

/// A started service: its state (for tests) and the address it listens on.
#[derive(Debug)]
pub struct Running {
    pub state: AppState,
    pub addr: SocketAddr,
    /// Where the operations listener is, if there is one.
    pub metrics_addr: Option<SocketAddr>,
    pub server: tokio::task::JoinHandle<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops the server and every background task.
    pub fn abort(&self) {
        self.server.abort();
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("JWKS fetcher: {0}")]
    Fetcher(String),
}

/// Migrates, publishes what is there, starts the background tasks and the HTTP server.
pub async fn start(config: ServeConfig) -> Result<Running, ServeError> {
    let pool = db::pool_with(&config.database_url, &config.pool)?;
    let applied = db::migrate(&pool).await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "migrations applied");
    }
    let read_pool = config
        .replica_url
        .as_deref()
        .map(|u| db::pool_with(u, &config.pool))
        .transpose()?;
    let metrics = Metrics::new()?;
    let hub = Arc::new(Hub::default());
    let wake = Arc::new(Notify::new());
    let signer = Arc::new(config.signer);
    tracing::info!(key_id = signer.key_id(), public_key = %signer.public_key_text(), "signing bundles");
    let fetcher = Arc::new(
        Fetcher::new(pool.clone(), metrics.clone(), config.fetch)
            .map_err(|e| ServeError::Fetcher(e.to_string()))?,
    );
    let state = AppState {
        pool: pool.clone(),
        read_pool,
        signer: Arc::clone(&signer),
        hub: Arc::clone(&hub),
        metrics: metrics.clone(),
        wake_publisher: Arc::clone(&wake),
        fetcher: Arc::clone(&fetcher),
        parking: Arc::new(api::Parking::new(
            config.api.max_waiters,
            config.api.max_waiters_per_token,
        )),
        settings: config.api.clone(),
    };
    // Publish whatever the database holds before answering anyone.
    state.publish("start").await;
    let mut tasks = vec![
        tokio::spawn(listener::run(
            config.database_url.clone(),
            Arc::clone(&hub),
            Arc::clone(&wake),
            metrics.clone(),
        )),
        tokio::spawn(publisher(state.clone())),
        tokio::spawn(refresh_versions(state.clone())),
        tokio::spawn(decision_partitions(
            pool.clone(),
            config.api.decision_retention_days,
        )),
    ];
    tasks.push(tokio::spawn(async move { fetcher.run().await }));
    // Both ports are bound before either serves: a port taken fails the start as a whole.
    let (listener, addr) = bind(config.listen).await?;
    let operations = match config.metrics_listen {
        Some(at) => Some(bind(at).await?),
        None => None,
    };
    let metrics_addr = operations.as_ref().map(|(_, a)| *a);
    if let Some((listener, at)) = operations {
        tasks.push(serve(
            listener,
            api::operations(state.clone()),
            "operations",
        ));
        tracing::info!(addr = %at, "health and metrics listening");
    }
    let server = serve(listener, api::app(state.clone()), "HTTP");
    tracing::info!(%addr, "policy-sync listening");
    Ok(Running {
        state,
        addr,
        metrics_addr,
        server,
        tasks,
    })
}

/// Serves `router` on `listener` until the task is aborted; `what` names it in the log if it
/// stops on its own.
fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    what: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the {what} server stopped");
        }
    })
}

/// A bound listener and the address it took (port 0: a free one).
async fn bind(at: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServeError> {
    let failed = |e: std::io::Error| ServeError::Listen {
        addr: at,
        reason: e.to_string(),
    };
    let listener = tokio::net::TcpListener::bind(at).await.map_err(failed)?;
    let addr = listener.local_addr().map_err(failed)?;
    Ok((listener, addr))
}

/// Publishes whenever woken (NOTIFY, an API write), and every 30 s in any case; retries
/// after a second while Postgres is unreachable.
async fn publisher(state: AppState) {
    loop {
        tokio::select! {
            () = state.wake_publisher.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        if state.publish("change").await.is_none() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Learns the latest versions every few seconds, in case a notification was lost.
async fn refresh_versions(state: AppState) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let Ok(c) = state.pool.get().await else {
            continue;
        };
        if state.hub.catch_up(&c).await.is_ok() {
            state.metrics.latest_version.set(state.hub.latest());
        }
    }
}

/// Keeps today's and tomorrow's decision-log partitions and drops those past retention.
async fn decision_partitions(pool: Pool, retention_days: i32) {
    loop {
        match maintain_partitions(&pool, retention_days).await {
            Ok(dropped) if dropped > 0 => {
                tracing::info!(dropped, "old decision-log partitions dropped");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "decision-log partition upkeep failed"),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Creates today's and tomorrow's partitions; drops those older than `retention_days`.
pub async fn maintain_partitions(pool: &Pool, retention_days: i32) -> Result<i32, db::DbError> {
    let c = pool.get().await?;
    c.execute(
        "SELECT portcullis_decision_partition((now() AT TIME ZONE 'UTC')::date + d)
         FROM generate_series(0, 1) AS d",
        &[],
    )
    .await?;
    Ok(c.query_one(
        "SELECT portcullis_drop_decision_partitions($1)",
        &[&retention_days],
    )
    .await?
    .get(0))
}
