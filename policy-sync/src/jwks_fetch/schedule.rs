//! When an issuer is fetched next: after a success, as long as its response may be cached
//! (within the issuer's bounds); after failures, a doubling backoff.

use std::time::Duration;

use reqwest::header::{AGE, CACHE_CONTROL, HeaderMap};

use super::IssuerConfig;

/// The freshness lifetime a response's `Cache-Control` grants, in seconds: `max-age` less
/// `Age`; 0 with `no-cache`; `None` with `no-store` or without `max-age`.
pub(super) fn max_age(headers: &HeaderMap) -> Option<u64> {
    let mut max_age = None;
    let mut no_store = false;
    let mut no_cache = false;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            if name.eq_ignore_ascii_case("no-store") {
                no_store = true;
            } else if name.eq_ignore_ascii_case("no-cache") {
                no_cache = true;
            } else if name.eq_ignore_ascii_case("max-age")
                && let Some(secs) = arg.and_then(|a| a.parse::<u64>().ok())
            {
                max_age = Some(secs);
            }
        }
    }
    if no_store {
        return None;
    }
    if no_cache {
        return Some(0);
    }
    let age = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    max_age.map(|m| m.saturating_sub(age))
}

/// Seconds until the next fetch after a success: the freshness lifetime (or `max_refresh_s`)
/// clamped to `[min_refresh_s, max_refresh_s]`, and never beyond `max_staleness_s`.
pub(super) fn success_delay(max_age: Option<u64>, config: &IssuerConfig) -> Duration {
    let secs = max_age
        .unwrap_or(config.max_refresh_s)
        .max(config.min_refresh_s)
        .min(config.max_refresh_s)
        .min(config.max_staleness_s)
        .max(1);
    Duration::from_secs(secs)
}

/// Seconds until the retry after `failures` consecutive failures: `min_refresh_s` doubled per
/// further failure, capped at `max_refresh_s`.
pub(super) fn backoff(failures: u32, config: &IssuerConfig) -> f64 {
    let doublings = failures.saturating_sub(1).min(40);
    let secs = config
        .min_refresh_s
        .saturating_mul(1u64 << doublings)
        .min(config.max_refresh_s)
        .max(1);
    secs as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn config(min: u64, max: u64, staleness: u64) -> IssuerConfig {
        IssuerConfig {
            jwks_uri: None,
            discovery_url: None,
            min_refresh_s: min,
            max_refresh_s: max,
            max_staleness_s: staleness,
        }
    }

    fn headers(pairs: &[(reqwest::header::HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(n.clone(), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cache_control() {
        assert_eq!(max_age(&headers(&[])), None);
        assert_eq!(
            max_age(&headers(&[(CACHE_CONTROL, "public, max-age=300")])),
            Some(300)
        );
        assert_eq!(
            max_age(&headers(&[(CACHE_CONTROL, "Max-Age=\"30\"")])),
            Some(30)
        );
        assert_eq!(
            max_age(&headers(&[(CACHE_CONTROL, "max-age=300"), (AGE, "100")])),
            Some(200)
        );
        assert_eq!(
            max_age(&headers(&[(CACHE_CONTROL, "max-age=300, no-store")])),
            None
        );
        assert_eq!(max_age(&headers(&[(CACHE_CONTROL, "no-cache")])), Some(0));
        assert_eq!(max_age(&headers(&[(CACHE_CONTROL, "max-age=abc")])), None);
    }

    #[test]
    fn delays() {
        let c = config(10, 100, 1000);
        assert_eq!(success_delay(None, &c), Duration::from_secs(100));
        assert_eq!(success_delay(Some(5), &c), Duration::from_secs(10));
        assert_eq!(success_delay(Some(50), &c), Duration::from_secs(50));
        assert_eq!(success_delay(Some(5000), &c), Duration::from_secs(100));
        assert_eq!(
            success_delay(None, &config(10, 100, 30)),
            Duration::from_secs(30)
        );
        assert_eq!(backoff(1, &c), 10.0);
        assert_eq!(backoff(2, &c), 20.0);
        assert_eq!(backoff(4, &c), 80.0);
        assert_eq!(backoff(5, &c), 100.0);
        assert_eq!(backoff(u32::MAX, &c), 100.0);
    }
}
