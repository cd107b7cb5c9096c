//! Who is waiting for which tenant's next version. Long-poll requests subscribe here; the
//! listener announces every version published by any replica (NOTIFY), and a periodic read of
//! the latest versions covers notifications lost while the LISTEN connection was down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use tokio::sync::watch;

/// Latest known version per tenant, with waiters, and the latest document read (so that the
/// waiters woken by one version cost one database read, not one each).
#[derive(Debug, Default)]
pub struct Hub {
    tenants: Mutex<HashMap<String, watch::Sender<i64>>>,
    documents: Mutex<HashMap<String, (i64, Bytes)>>,
    /// One database read of a tenant's document at a time: the requests a version wakes wait
    /// for the first one's read instead of each taking a connection for the same row.
    reads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Hub {
    fn with<R>(&self, tenant: &str, f: impl FnOnce(&watch::Sender<i64>) -> R) -> R {
        // A poisoned lock only means another thread panicked while holding it; the map itself
        // is always consistent (single inserts), so keep using it.
        let mut map = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let sender = map
            .entry(tenant.to_owned())
            .or_insert_with(|| watch::channel(0).0);
        f(sender)
    }

    /// A receiver that sees the tenant's latest announced version.
    pub fn subscribe(&self, tenant: &str) -> watch::Receiver<i64> {
        self.with(tenant, watch::Sender::subscribe)
    }

    /// Records that `version` of `tenant` is published; wakes waiters if it is newer.
    pub fn announce(&self, tenant: &str, version: i64) {
        self.with(tenant, |s| {
            s.send_if_modified(|v| {
                if version > *v {
                    *v = version;
                    true
                } else {
                    false
                }
            })
        });
    }

    /// The cached document of `tenant` if it is at least `version`: (version, JSON bytes).
    pub fn document(&self, tenant: &str, version: i64) -> Option<(i64, Bytes)> {
        let docs = self.documents.lock().unwrap_or_else(|e| e.into_inner());
        docs.get(tenant).filter(|(v, _)| *v >= version).cloned()
    }

    /// The lock that lets one request at a time read `tenant`'s document from the database.
    pub fn read_lock(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(reads.entry(tenant.to_owned()).or_default())
    }

    /// Keeps a document read from the database, unless a newer one is cached.
    pub fn keep_document(&self, tenant: &str, version: i64, json: Bytes) {
        let mut docs = self.documents.lock().unwrap_or_else(|e| e.into_inner());
        match docs.get(tenant) {
            Some((v, _)) if *v >= version => {}
            _ => {
                docs.insert(tenant.to_owned(), (version, json));
            }
        }
    }

    /// Reads every tenant's latest published version and announces it (after a reconnect,
    /// and periodically, in case a notification was lost).
    pub async fn catch_up(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        for row in client
            .query(
                "SELECT DISTINCT ON (tenant) tenant, version FROM bundles
                 ORDER BY tenant, version DESC",
                &[],
            )
            .await?
        {
            self.announce(row.get(0), row.get(1));
        }
        Ok(())
    }

    /// The latest version announced for any tenant.
    pub fn latest(&self) -> i64 {
        let map = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(|s| *s.borrow()).max().unwrap_or(0)
    }
}
