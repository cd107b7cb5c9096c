//! What the fetcher keeps in Postgres: issuers' fetch configuration, their fetched keys
//! (written only when they change) and `issuer_fetch_state` (claims, successes, failures and
//! the staleness cut-off), each write under the issuer's advisory lock.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::error::{FetchError, MAX_ERROR_CHARS, truncate};
use super::schedule::backoff;
use super::vet::UsableKey;
use super::{Fetcher, IssuerConfig, RefreshOutcome};

/// First key of the two-key advisory lock that serialises key writes for one issuer (across
/// replicas); the second key is `hashtext(issuer)`.
const ISSUER_LOCK_SPACE: i32 = 0x6a77_6b73;

impl Fetcher {
    /// The issuer's fetch configuration (every period at least a second).
    pub(super) async fn config(&self, issuer: &str) -> Result<IssuerConfig, FetchError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT jwks_uri, discovery_url, min_refresh_s, max_refresh_s, max_staleness_s
                   FROM issuers WHERE issuer = $1",
                &[&issuer],
            )
            .await?
            .ok_or_else(|| FetchError::UnknownIssuer(issuer.to_owned()))?;
        let secs = |i: usize| -> u64 { u64::try_from(row.get::<_, i32>(i)).unwrap_or(1).max(1) };
        Ok(IssuerConfig {
            jwks_uri: row.get(0),
            discovery_url: row.get(1),
            min_refresh_s: secs(2),
            max_refresh_s: secs(3),
            max_staleness_s: secs(4),
        })
    }

    /// Writes `keys` as the issuer's fetched keys (only what changed) and records the success.
    pub(super) async fn store(
        &self,
        issuer: &str,
        keys: &[UsableKey],
        next_fetch: Duration,
    ) -> Result<RefreshOutcome, FetchError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        lock_issuer(&tx, issuer).await?;
        let existing: HashMap<String, (Value, String)> = tx
            .query(
                "SELECT kid, jwk, origin FROM keys WHERE issuer = $1",
                &[&issuer],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        let mut changed = false;
        let mut stored = 0usize;
        for key in keys {
            match existing.get(&key.kid) {
                Some((_, origin)) if origin != "fetched" => {
                    tracing::warn!(
                        issuer,
                        kid = %key.kid,
                        "fetched key has the kid of an uploaded key; the uploaded key stays"
                    );
                    continue;
                }
                Some((jwk, _)) if *jwk == key.jwk => {}
                Some(_) => {
                    tx.execute(
                        "UPDATE keys SET jwk = $3, added_at = now()
                          WHERE issuer = $1 AND kid = $2 AND origin = 'fetched'",
                        &[&issuer, &key.kid, &key.jwk],
                    )
                    .await?;
                    changed = true;
                }
                None => {
                    tx.execute(
                        "INSERT INTO keys (issuer, kid, jwk, origin) VALUES ($1, $2, $3, 'fetched')",
                        &[&issuer, &key.kid, &key.jwk],
                    )
                    .await?;
                    changed = true;
                }
            }
            stored += 1;
        }
        let gone: Vec<&String> = existing
            .iter()
            .filter(|(kid, (_, origin))| {
                origin == "fetched" && !keys.iter().any(|k| &k.kid == *kid)
            })
            .map(|(kid, _)| kid)
            .collect();
        if !gone.is_empty() {
            tx.execute(
                "DELETE FROM keys WHERE issuer = $1 AND origin = 'fetched' AND kid = ANY($2)",
                &[&issuer, &gone],
            )
            .await?;
            changed = true;
        }
        tx.execute(
            "INSERT INTO issuer_fetch_state
                    (issuer, last_attempt_at, last_success_at, last_error, next_fetch_at)
             VALUES ($1, now(), now(), NULL, now() + make_interval(secs => $2::float8))
             ON CONFLICT (issuer) DO UPDATE SET
                    last_attempt_at = EXCLUDED.last_attempt_at,
                    last_success_at = EXCLUDED.last_success_at,
                    last_error = NULL,
                    next_fetch_at = EXCLUDED.next_fetch_at",
            &[&issuer, &next_fetch.as_secs_f64()],
        )
        .await?;
        tx.commit().await?;
        if changed {
            tracing::info!(issuer, keys = stored, "fetched keys changed");
            Ok(RefreshOutcome::Changed { keys: stored })
        } else {
            Ok(RefreshOutcome::Unchanged { keys: stored })
        }
    }

    /// Records a failed fetch: `last_error`, the backoff, and, once the last success is older
    /// than `max_staleness_s`, drops the issuer's fetched keys.
    pub(super) async fn record_failure(
        &self,
        issuer: &str,
        error: &FetchError,
        failures: u32,
    ) -> Result<(), FetchError> {
        let config = self.config(issuer).await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        lock_issuer(&tx, issuer).await?;
        let since_success: Option<f64> = tx
            .query_opt(
                "SELECT EXTRACT(EPOCH FROM (now() - last_success_at))::float8
                   FROM issuer_fetch_state WHERE issuer = $1",
                &[&issuer],
            )
            .await?
            .and_then(|r| r.get(0));
        let staleness = config.max_staleness_s as f64;
        let stale = since_success.is_none_or(|age| age >= staleness);
        if stale {
            // Checked first: a DELETE of nothing would still announce a change.
            let held: i64 = tx
                .query_one(
                    "SELECT count(*) FROM keys WHERE issuer = $1 AND origin = 'fetched'",
                    &[&issuer],
                )
                .await?
                .get(0);
            if held > 0 {
                let dropped = tx
                    .execute(
                        "DELETE FROM keys WHERE issuer = $1 AND origin = 'fetched'",
                        &[&issuer],
                    )
                    .await?;
                tracing::warn!(
                    issuer,
                    dropped,
                    max_staleness_s = config.max_staleness_s,
                    "issuer unreachable beyond its maximum staleness: its fetched keys are no \
                     longer trusted and were removed"
                );
            }
        }
        let mut delay = backoff(failures, &config);
        if let Some(age) = since_success
            && !stale
        {
            // Come back in time to drop the keys when they turn stale.
            delay = delay.min((staleness - age).ceil().max(1.0));
        }
        tx.execute(
            "INSERT INTO issuer_fetch_state (issuer, last_attempt_at, last_error, next_fetch_at)
             VALUES ($1, now(), $2, now() + make_interval(secs => $3::float8))
             ON CONFLICT (issuer) DO UPDATE SET
                    last_attempt_at = EXCLUDED.last_attempt_at,
                    last_error = EXCLUDED.last_error,
                    next_fetch_at = EXCLUDED.next_fetch_at",
            &[
                &issuer,
                &truncate(&error.to_string(), MAX_ERROR_CHARS),
                &delay,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims the issuers with a `jwks_uri` or discovery URL whose `next_fetch_at` is due (or
    /// unset), moving it `lease` ahead so that replicas sharing the database do not fetch the
    /// same issuer at once; first drops the fetched keys of issuers no longer fetched.
    pub(super) async fn claim_due(&self, lease: Duration) -> Result<Vec<String>, FetchError> {
        let client = self.pool.get().await?;
        self.drop_unfetched(&client).await?;
        Ok(client
            .query(
                "INSERT INTO issuer_fetch_state (issuer, next_fetch_at)
                 SELECT i.issuer, now() + make_interval(secs => $1::float8)
                   FROM issuers i LEFT JOIN issuer_fetch_state s ON s.issuer = i.issuer
                  WHERE (i.jwks_uri IS NOT NULL OR i.discovery_url IS NOT NULL)
                    AND (s.next_fetch_at IS NULL OR s.next_fetch_at <= now())
                 ON CONFLICT (issuer) DO UPDATE SET next_fetch_at = EXCLUDED.next_fetch_at
                  WHERE issuer_fetch_state.next_fetch_at IS NULL
                     OR issuer_fetch_state.next_fetch_at <= now()
                 RETURNING issuer",
                &[&lease.as_secs_f64()],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Deletes the fetched keys of issuers that no longer have a `jwks_uri` or discovery URL
    /// (checked first, so that nothing is written when there are none).
    async fn drop_unfetched(&self, client: &deadpool_postgres::Client) -> Result<(), FetchError> {
        let any: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM keys k JOIN issuers i ON k.issuer = i.issuer
                  WHERE k.origin = 'fetched' AND i.jwks_uri IS NULL AND i.discovery_url IS NULL)",
                &[],
            )
            .await?
            .get(0);
        if any {
            let n = client
                .execute(
                    "DELETE FROM keys k USING issuers i
                      WHERE k.issuer = i.issuer AND k.origin = 'fetched'
                        AND i.jwks_uri IS NULL AND i.discovery_url IS NULL",
                    &[],
                )
                .await?;
            tracing::info!(
                keys = n,
                "dropped fetched keys of issuers no longer fetched"
            );
        }
        Ok(())
    }
}

/// Serialises writes of one issuer's keys and fetch state (across replicas) until `tx` ends.
async fn lock_issuer(
    tx: &deadpool_postgres::Transaction<'_>,
    issuer: &str,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&ISSUER_LOCK_SPACE, &issuer],
    )
    .await
    .map(|_| ())
}
