//! `serve`: runs the service until interrupted.

use std::time::Duration;

use policy_sync::api::ApiSettings;
use policy_sync::db;
use policy_sync::jwks_fetch::FetchSettings;
use policy_sync::service::{self, ServeConfig};

use super::args::ServeArgs;
use super::common::{database_url, signer};
use super::failure::{Exit, Failure, Outcome};

pub(crate) async fn run(url: Option<&String>, args: ServeArgs) -> Outcome {
    let database_url = database_url(url)?.clone();
    let config = ServeConfig {
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        database_url,
        replica_url: args.replica_url,
        pool: db::PoolSettings {
            size: usize::from(args.pool_size),
            wait: Duration::from_millis(args.pool_wait_ms),
            statement_timeout: Duration::from_millis(args.statement_timeout_ms),
        },
        signer: signer(&args.key)?,
        api: ApiSettings {
            max_wait: Duration::from_secs(args.max_wait),
            decision_retention_days: args.decision_retention_days,
            max_waiters: usize::try_from(args.max_waiters).unwrap_or(usize::MAX),
            max_waiters_per_token: usize::try_from(args.max_waiters_per_token)
                .unwrap_or(usize::MAX),
            ..ApiSettings::default()
        },
        fetch: FetchSettings {
            min_on_demand_interval: Duration::from_secs(args.refresh_interval),
            ..FetchSettings::default()
        },
    };
    let running = service::start(config)
        .await
        .map_err(|e| Failure::new(Exit::Failed, e.to_string()))?;
    println!("policy-sync listening on http://{}", running.addr);
    if let Some(at) = running.metrics_addr {
        println!("health and metrics on http://{at}");
    }
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| Failure::new(Exit::Failed, e.to_string()))?;
    running.abort();
    Ok("stopped".into())
}
