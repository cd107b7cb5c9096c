//! Shared test support: one private Postgres cluster per test binary (initdb/pg_ctl, stopped
//! by a watchdog when the binary exits), a fresh database per test, and a running service.

use std::error::Error;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use harness::postgres::Cluster;
use policy_sync::api::ApiSettings;
use policy_sync::jwks_fetch::FetchSettings;
use policy_sync::service::{self, Running, ServeConfig};
use policy_sync::signing::Signer;
use policy_sync::store::{self, Role};

pub type TestResult = Result<(), Box<dyn Error>>;
pub type Res<T> = Result<T, Box<dyn Error>>;

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The binary's cluster, started on first use.
pub fn cluster() -> Res<&'static Cluster> {
    let c = CLUSTER.get_or_init(|| {
        let c = Cluster::start().map_err(|e| e.to_string())?;
        c.stop_when_process_exits().map_err(|e| e.to_string())?;
        Ok(c)
    });
    c.as_ref().map_err(|e| e.clone().into())
}

/// A new, empty database (not migrated); returns its URL.
pub fn empty_database() -> Res<String> {
    let n = NEXT_DB.fetch_add(1, Ordering::SeqCst);
    Ok(cluster()?.create_database(&format!("t{}_{n}", std::process::id()))?)
}

/// A new database with the migrations applied.
pub async fn database() -> Res<String> {
    let url = empty_database()?;
    let pool = policy_sync::db::pool(&url, 2)?;
    policy_sync::db::migrate(&pool).await?;
    Ok(url)
}

/// The signing key every test service uses (a fixed seed, so documents can be checked).
pub fn signer() -> Signer {
    Signer::new(ed25519_dalek::SigningKey::from_bytes(&[42; 32]))
}

/// A running service with an admin and a filter token.
pub struct Service {
    pub running: Running,
    pub base: String,
    pub url: String,
    pub admin: String,
    pub filter: String,
    pub http: reqwest::Client,
}

/// Starts a service on a free loopback port against `url`.
pub async fn service(url: &str) -> Res<Service> {
    service_with(url, None, Duration::from_secs(10)).await
}

pub async fn service_with(url: &str, replica: Option<&str>, max_wait: Duration) -> Res<Service> {
    service_configured(url, |c| {
        c.replica_url = replica.map(str::to_owned);
        c.api.max_wait = max_wait;
    })
    .await
}

/// A service whose configuration `configure` changes from the tests' default.
pub async fn service_configured(
    url: &str,
    configure: impl FnOnce(&mut ServeConfig),
) -> Res<Service> {
    let mut config = ServeConfig {
        listen: "127.0.0.1:0".parse()?,
        metrics_listen: None,
        database_url: url.to_owned(),
        replica_url: None,
        pool: policy_sync::db::PoolSettings {
            size: 8,
            ..policy_sync::db::PoolSettings::default()
        },
        signer: signer(),
        api: ApiSettings {
            max_wait: Duration::from_secs(10),
            ..ApiSettings::default()
        },
        fetch: FetchSettings::default(),
    };
    configure(&mut config);
    let running = service::start(config).await?;
    let pool = running.state.pool.clone();
    let n = NEXT_DB.fetch_add(1, Ordering::SeqCst);
    let admin = store::create_token(&pool, &format!("admin-{n}"), Role::Admin).await?;
    let filter = store::create_token(&pool, &format!("filter-{n}"), Role::Filter).await?;
    Ok(Service {
        base: format!("http://{}", running.addr),
        running,
        url: url.to_owned(),
        admin,
        filter,
        http: reqwest::Client::builder().no_gzip().build()?,
    })
}

impl Service {
    /// The `/metrics` page.
    pub async fn metrics(&self) -> Res<String> {
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?;
        Ok(r.text().await?)
    }

    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
    }

    pub fn as_filter(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.filter)
    }

    /// PUT a policy through the admin API; returns (status, body).
    pub async fn put_policy(
        &self,
        tenant: &str,
        id: &str,
        text: &str,
    ) -> Res<(u16, serde_json::Value)> {
        let r = self
            .admin(
                reqwest::Method::PUT,
                &format!("/v1/admin/tenants/{tenant}/policies/{id}"),
            )
            .json(&serde_json::json!({ "text": text }))
            .send()
            .await?;
        Ok((r.status().as_u16(), r.json().await?))
    }

    /// The published versions, newest first (admin API).
    pub async fn versions(&self) -> Res<Vec<serde_json::Value>> {
        Ok(self
            .admin(reqwest::Method::GET, "/v1/admin/versions?limit=1000")
            .send()
            .await?
            .json()
            .await?)
    }

    /// Rolls back to `to` through the admin API; returns the answer.
    pub async fn rollback(&self, to: i64) -> Res<serde_json::Value> {
        Ok(self
            .admin(reqwest::Method::POST, "/v1/admin/rollback")
            .json(&serde_json::json!({ "to": to }))
            .send()
            .await?
            .json()
            .await?)
    }

    /// The tenant's latest document, checked against the test signing key.
    pub async fn document(
        &self,
        tenant: &str,
        after: i64,
    ) -> Res<(u16, Option<portcullis_core::bundle::signed::BundleDocument>)> {
        let r = self
            .as_filter(
                reqwest::Method::GET,
                &format!("/v1/bundles/{tenant}?after={after}&wait=0"),
            )
            .send()
            .await?;
        let status = r.status().as_u16();
        if status != 200 {
            return Ok((status, None));
        }
        let signed: portcullis_core::bundle::signed::SignedBundle = r.json().await?;
        Ok((status, Some(signed.verify(&signer().public_key())?)))
    }
}

/// A permit policy of the demo kind.
pub const PERMIT_GET: &str = r#"permit(principal, action == Action::"GET", resource);"#;
