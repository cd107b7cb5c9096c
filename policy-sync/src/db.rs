//! Postgres: the connection pool and the embedded migrations.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use sha2::{Digest as _, Sha256};
use tokio_postgres::NoTls;

/// The embedded migrations, applied in order; never edit one that has shipped.
const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "schema", include_str!("../migrations/0001_schema.sql"))];

/// Advisory lock key that serialises migrations across replicas starting together.
const MIGRATION_LOCK: i64 = 0x706f_7274_6d69_6772;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
    #[error("cannot reach Postgres: {0}")]
    Connect(String),
    #[error("every database connection is busy")]
    PoolBusy,
    #[error("Postgres: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("migration {version} was changed after it was applied (checksum differs)")]
    MigrationChanged { version: i32 },
    #[error("the database has migration {0}, newer than this policy-sync knows; upgrade it")]
    TooNew(i32),
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => Self::Query(e),
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                Self::PoolBusy
            }
            other => Self::Connect(other.to_string()),
        }
    }
}

/// How the service uses Postgres: pool size, how long a request waits for a connection, and
/// how long one statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub size: usize,
    /// A request that finds every connection busy waits this long, then is answered 503 with
    /// `Retry-After` (never left hanging).
    pub wait: Duration,
    /// Every statement of every connection is cancelled by Postgres past this (a lock held
    /// elsewhere, a slow disk): the request gets 503 and its connection is free again.
    pub statement_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            size: 16,
            wait: Duration::from_millis(500),
            statement_timeout: Duration::from_secs(5),
        }
    }
}

/// A pool of `size` connections to `url` (a libpq-style URL or key=value string), with the
/// default wait and statement timeout.
pub fn pool(url: &str, size: usize) -> Result<Pool, DbError> {
    pool_with(
        url,
        &PoolSettings {
            size,
            ..PoolSettings::default()
        },
    )
}

/// A pool to `url` as `settings` say.
pub fn pool_with(url: &str, settings: &PoolSettings) -> Result<Pool, DbError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        // The error text never contains the password; the URL is not echoed.
        DbError::Url(e.to_string())
    })?;
    // Set per session, so it holds for every statement whatever the server's default; an
    // `options` the URL gives is kept, and a timeout it sets comes after ours and wins.
    let timeout = format!(
        "-c statement_timeout={}",
        settings.statement_timeout.as_millis().max(1)
    );
    let options = match config.get_options() {
        Some(given) => format!("{timeout} {given}"),
        None => timeout,
    };
    config.options(&options);
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(settings.size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(Duration::from_secs(5)))
        .wait_timeout(Some(settings.wait))
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// Applies the migrations that are missing, each in its own transaction, under an advisory
/// lock. Returns the versions applied now.
pub async fn migrate(pool: &Pool) -> Result<Vec<i32>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS portcullis_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             checksum text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: Vec<(i32, String)> = tx
        .query("SELECT version, checksum FROM portcullis_migrations", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let newest = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
    if let Some((v, _)) = applied.iter().find(|(v, _)| *v > newest) {
        return Err(DbError::TooNew(*v));
    }
    let mut done = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        let checksum = hex(&Sha256::digest(sql.as_bytes()));
        match applied.iter().find(|(v, _)| v == version) {
            Some((_, sum)) if *sum == checksum => continue,
            Some(_) => return Err(DbError::MigrationChanged { version: *version }),
            None => {}
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO portcullis_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[version, name, &checksum],
        )
        .await?;
        done.push(*version);
    }
    tx.commit().await?;
    Ok(done)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
