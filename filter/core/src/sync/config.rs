//! The `sync` section of the plugin configuration: where policy-sync is, what to follow and
//! how to behave when it cannot be reached. Compiled once by `TryFrom` into [`SyncSettings`];
//! anything wrong refuses the whole configuration (the filter does not start).

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

use crate::authz::tenants::DEFAULT_SET;
use crate::bundle::signed::{key_id, parse_public_key};
use crate::duration::ConfigDuration;

/// `sync` as written in the plugin configuration.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncConfig {
    /// The Envoy cluster that reaches policy-sync (in Istio `outbound|PORT||HOST`).
    pub cluster: String,
    /// The `:authority` of calls to policy-sync.
    pub authority: String,
    /// The tenants to follow. Default: `default` and every configured tenant.
    #[serde(default)]
    pub tenants: Option<Vec<String>>,
    /// policy-sync's read-only filter token.
    pub token: String,
    /// Accepted bundle signing keys (Ed25519 public keys, base64url), several at once while
    /// keys rotate; a document's `keyId` picks one.
    pub signing_keys: Vec<String>,
    /// How long one long-poll waits for a newer version. Default `"30s"`.
    #[serde(default = "default_wait")]
    pub wait: ConfigDuration,
    /// How long past `wait` a call may take before it counts as failed. Default `"5s"`.
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// Retry backoff after a failure: from `initial`, doubling to `max`, with full jitter.
    #[serde(default)]
    pub retry: RetryConfig,
    /// How long the bundle in force may go without a successful answer from policy-sync.
    /// Default `"10m"`.
    #[serde(default = "default_max_staleness")]
    pub max_staleness: ConfigDuration,
    /// What happens past `maxStaleness`. Default `failClosed`.
    #[serde(default)]
    pub when_stale: WhenStale,
    /// How long the poller's lease lasts without renewal: a worker that stops renewing is
    /// replaced within this time. Default `"10s"`.
    #[serde(default = "default_lease")]
    pub lease: ConfigDuration,
    /// Shortest time between two key refreshes asked for one issuer. Default `"10s"`.
    #[serde(default = "default_key_refresh")]
    pub key_refresh_interval: ConfigDuration,
    /// Decision logs shipped to policy-sync.
    #[serde(default)]
    pub decision_log: DecisionLogConfig,
}

/// Retry backoff.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryConfig {
    /// First delay. Default `"200ms"`.
    #[serde(default = "default_retry_initial")]
    pub initial: ConfigDuration,
    /// Longest delay. Default `"30s"`.
    #[serde(default = "default_retry_max")]
    pub max: ConfigDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial: default_retry_initial(),
            max: default_retry_max(),
        }
    }
}

/// What the filter does once the bundle in force is older than `maxStaleness`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum WhenStale {
    /// Answer 503 with `Retry-After` until policy-sync answers again.
    #[default]
    FailClosed,
    /// Keep deciding with the bundle in force (counted and logged).
    KeepServing,
}

/// Decision-log shipping.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecisionLogConfig {
    /// Share of allowed requests logged, 0 to 1. Default 0: denials only.
    #[serde(default)]
    pub sample_allows: f64,
    /// Entries queued per Envoy before new ones are dropped (and counted). Default 10000.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Entries per `POST /v1/decisions`. Default 500 (policy-sync takes at most 1000).
    #[serde(default = "default_batch")]
    pub batch: usize,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        Self {
            sample_allows: 0.0,
            queue: default_queue(),
            batch: default_batch(),
        }
    }
}

fn secs(n: u64) -> ConfigDuration {
    ConfigDuration(Duration::from_secs(n))
}
fn default_wait() -> ConfigDuration {
    secs(30)
}
fn default_timeout() -> ConfigDuration {
    secs(5)
}
fn default_max_staleness() -> ConfigDuration {
    secs(600)
}
fn default_lease() -> ConfigDuration {
    secs(10)
}
fn default_key_refresh() -> ConfigDuration {
    secs(10)
}
fn default_retry_initial() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(200))
}
fn default_retry_max() -> ConfigDuration {
    secs(30)
}
fn default_queue() -> usize {
    10_000
}
fn default_batch() -> usize {
    500
}

/// One accepted signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    pub id: String,
    pub key: VerifyingKey,
}

/// `sync`, checked.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub cluster: String,
    pub authority: String,
    /// Followed tenants, `default` first when followed.
    pub tenants: Vec<String>,
    pub token: String,
    pub signing_keys: Vec<SigningKey>,
    pub wait: Duration,
    pub timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_staleness: Duration,
    pub when_stale: WhenStale,
    pub lease: Duration,
    pub key_refresh_interval: Duration,
    pub sample_allows: f64,
    pub queue: usize,
    pub batch: usize,
}

/// Why `sync` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SyncConfigError {
    #[error("sync.{0} must not be empty")]
    Empty(&'static str),
    #[error("sync.{field}: {value:?} {why}")]
    Invalid {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("sync.signingKeys: {0:?} is not a base64url Ed25519 public key (32 bytes)")]
    SigningKey(String),
    #[error(
        "sync.tenants: {0:?} is neither \"default\" nor a configured tenant, or is listed twice"
    )]
    Tenant(String),
    #[error("sync.{field} must be between {min:?} and {max:?}, got {got:?}")]
    Range {
        field: &'static str,
        min: Duration,
        max: Duration,
        got: Duration,
    },
    #[error(
        "sync.maxStaleness ({staleness:?}) must exceed wait + timeout ({poll:?}): a healthy poll would look stale"
    )]
    Staleness { staleness: Duration, poll: Duration },
    #[error("sync.decisionLog.{0} is out of range: {1}")]
    DecisionLog(&'static str, String),
}

/// Visible ASCII only: a value that can go into a header or a cluster name as it is.
fn visible(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn range(
    field: &'static str,
    got: ConfigDuration,
    min: Duration,
    max: Duration,
) -> Result<Duration, SyncConfigError> {
    if (min..=max).contains(&got.0) {
        Ok(got.0)
    } else {
        Err(SyncConfigError::Range {
            field,
            min,
            max,
            got: got.0,
        })
    }
}

impl SyncSettings {
    /// Checks `cfg`; `configured` are the tenant ids the configuration declares.
    pub fn new(cfg: &SyncConfig, configured: &[&str]) -> Result<Self, SyncConfigError> {
        let text = |field: &'static str, value: &str| {
            if value.is_empty() {
                Err(SyncConfigError::Empty(field))
            } else if !visible(value) || value.len() > 1024 {
                Err(SyncConfigError::Invalid {
                    field,
                    value: value.to_owned(),
                    why: "must be visible ASCII without spaces, at most 1024 bytes",
                })
            } else {
                Ok(value.to_owned())
            }
        };
        let cluster = text("cluster", &cfg.cluster)?;
        let authority = text("authority", &cfg.authority)?;
        let token = text("token", &cfg.token)?;
        if cfg.signing_keys.is_empty() {
            return Err(SyncConfigError::Empty("signingKeys"));
        }
        let mut signing_keys: Vec<SigningKey> = Vec::with_capacity(cfg.signing_keys.len());
        for k in &cfg.signing_keys {
            let key = parse_public_key(k).ok_or_else(|| SyncConfigError::SigningKey(k.clone()))?;
            let id = key_id(&key);
            if signing_keys.iter().any(|s| s.id == id) {
                return Err(SyncConfigError::Invalid {
                    field: "signingKeys",
                    value: k.clone(),
                    why: "is listed twice",
                });
            }
            signing_keys.push(SigningKey { id, key });
        }
        let tenants = match &cfg.tenants {
            None => std::iter::once(DEFAULT_SET)
                .chain(configured.iter().copied())
                .map(str::to_owned)
                .collect(),
            Some(list) => {
                if list.is_empty() {
                    return Err(SyncConfigError::Empty("tenants"));
                }
                let mut out: Vec<String> = Vec::with_capacity(list.len());
                for t in list {
                    let known = t == DEFAULT_SET || configured.contains(&t.as_str());
                    if !known || out.contains(t) {
                        return Err(SyncConfigError::Tenant(t.clone()));
                    }
                    out.push(t.clone());
                }
                out
            }
        };
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let wait = range("wait", cfg.wait, s(1), s(300))?;
        let timeout = range("timeout", cfg.timeout, ms(100), s(60))?;
        let retry_initial = range("retry.initial", cfg.retry.initial, ms(10), s(60))?;
        let retry_max = range("retry.max", cfg.retry.max, retry_initial, s(3600))?;
        let max_staleness = range("maxStaleness", cfg.max_staleness, s(1), s(7 * 86_400))?;
        if max_staleness <= wait + timeout {
            return Err(SyncConfigError::Staleness {
                staleness: max_staleness,
                poll: wait + timeout,
            });
        }
        let lease = range("lease", cfg.lease, s(2), s(300))?;
        let key_refresh_interval = range(
            "keyRefreshInterval",
            cfg.key_refresh_interval,
            ms(100),
            s(3600),
        )?;
        let log = &cfg.decision_log;
        if !(0.0..=1.0).contains(&log.sample_allows) {
            return Err(SyncConfigError::DecisionLog(
                "sampleAllows",
                format!("{} (0 to 1)", log.sample_allows),
            ));
        }
        if log.queue > 1_000_000 {
            return Err(SyncConfigError::DecisionLog(
                "queue",
                format!("{} (at most 1000000)", log.queue),
            ));
        }
        if !(1..=1000).contains(&log.batch) {
            return Err(SyncConfigError::DecisionLog(
                "batch",
                format!("{} (1 to 1000)", log.batch),
            ));
        }
        Ok(Self {
            cluster,
            authority,
            tenants,
            token,
            signing_keys,
            wait,
            timeout,
            retry_initial,
            retry_max,
            max_staleness,
            when_stale: cfg.when_stale,
            lease,
            key_refresh_interval,
            sample_allows: log.sample_allows,
            queue: log.queue,
            batch: log.batch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey as Secret;

    fn public(seed: u8) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Secret::from_bytes(&[seed; 32]).verifying_key().as_bytes())
    }

    fn config(extra: serde_json::Value) -> Result<SyncConfig, serde_json::Error> {
        let mut base = serde_json::json!({
            "cluster": "outbound|8080||policy-sync.portcullis.svc.cluster.local",
            "authority": "policy-sync.portcullis.svc:8080",
            "token": "ps_filter_abc",
            "signingKeys": [public(1)],
        });
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(base)
    }

    #[test]
    fn defaults_follow_every_configured_tenant() {
        let s = SyncSettings::new(&config(serde_json::json!({})).unwrap(), &["acme"]).unwrap();
        assert_eq!(s.tenants, ["default", "acme"]);
        assert_eq!(s.wait, Duration::from_secs(30));
        assert_eq!(s.max_staleness, Duration::from_secs(600));
        assert_eq!(s.when_stale, WhenStale::FailClosed);
        assert_eq!(s.sample_allows, 0.0);
        assert_eq!(s.signing_keys.len(), 1);
    }

    #[test]
    fn refuses_what_is_wrong() {
        let bad = [
            (
                serde_json::json!({"cluster": ""}),
                "sync.cluster must not be empty",
            ),
            (serde_json::json!({"token": "a b"}), "sync.token"),
            (
                serde_json::json!({"signingKeys": []}),
                "sync.signingKeys must not be empty",
            ),
            (
                serde_json::json!({"signingKeys": ["short"]}),
                "not a base64url Ed25519",
            ),
            (
                serde_json::json!({"signingKeys": [public(1), public(1)]}),
                "listed twice",
            ),
            (
                serde_json::json!({"tenants": ["nobody"]}),
                "\"nobody\" is neither",
            ),
            (
                serde_json::json!({"tenants": ["acme", "acme"]}),
                "\"acme\" is neither",
            ),
            (
                serde_json::json!({"tenants": []}),
                "sync.tenants must not be empty",
            ),
            (
                serde_json::json!({"wait": "0s"}),
                "sync.wait must be between",
            ),
            (
                serde_json::json!({"retry": {"initial": "5s", "max": "1s"}}),
                "sync.retry.max",
            ),
            (
                serde_json::json!({"maxStaleness": "30s"}),
                "must exceed wait + timeout",
            ),
            (
                serde_json::json!({"lease": "1s"}),
                "sync.lease must be between",
            ),
            (
                serde_json::json!({"decisionLog": {"sampleAllows": 1.5}}),
                "sampleAllows",
            ),
            (
                serde_json::json!({"decisionLog": {"batch": 0}}),
                "decisionLog.batch",
            ),
            (
                serde_json::json!({"decisionLog": {"queue": 2_000_000}}),
                "decisionLog.queue",
            ),
        ];
        for (extra, want) in bad {
            let cfg = config(extra.clone()).unwrap();
            let err = SyncSettings::new(&cfg, &["acme"]).unwrap_err().to_string();
            assert!(err.contains(want), "{extra}: {err}");
        }
        assert!(config(serde_json::json!({"whenStale": "failOpen"})).is_err());
        assert!(config(serde_json::json!({"tokn": "x"})).is_err());
    }
}
