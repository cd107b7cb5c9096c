//! Postgres: the connection pool and the embedded migrations.

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
            other => Self::Connect(other.to_string()),
        }
    }
}

/// A pool of `size` connections to `url` (a libpq-style URL or key=value string).
pub fn pool(url: &str, size: usize) -> Result<Pool, DbError> {
    let config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        // The error text never contains the password; the URL is not echoed.
        DbError::Url(e.to_string())
    })?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .wait_timeout(Some(std::time::Duration::from_secs(10)))
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
