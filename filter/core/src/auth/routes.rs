//! Which paths need a token: required (default), optional, or public.

use serde::Deserialize;

/// How a route treats authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum AuthMode {
    /// A valid token is required (401 otherwise).
    #[default]
    Required,
    /// A token is verified if present (an invalid one is a 401); without one the request is
    /// authorized as the anonymous principal.
    Optional,
    /// No token is looked at; the request is authorized as the anonymous principal.
    Public,
}

/// A route as configured: exactly one of `path` (exact) or `prefix`, optionally limited to
/// some hosts.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// Hosts (`:authority` without port, case-insensitive) the route applies to: exact names
    /// or `*.example.com` for any subdomain. Default: every host.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    pub auth: AuthMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    Exact(String),
    Prefix(String),
}

/// A host pattern: an exact name or `*.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatcher {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

impl HostMatcher {
    /// Whether `host` (no port) matches, case-insensitively.
    #[must_use]
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h.eq_ignore_ascii_case(host),
            Self::Suffix(s) => {
                host.len() > s.len()
                    && host
                        .get(host.len() - s.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Route {
    hosts: Vec<HostMatcher>,
    path: Matcher,
    mode: AuthMode,
}

/// Compiled routes; the first match wins, no match means `Required`.
#[derive(Debug, Clone, Default)]
pub struct Routes(Vec<Route>);

/// The host name of an `:authority` value: without port or IPv6 brackets' port.
#[must_use]
pub fn host_name(authority: &str) -> &str {
    if authority.starts_with('[') {
        // [v6]:port
        return authority
            .find(']')
            .and_then(|end| authority.get(..=end))
            .unwrap_or(authority);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _port)| host)
}

impl Routes {
    /// The mode for a request's `:authority` and path (without query string).
    #[must_use]
    pub fn mode(&self, authority: &str, path: &str) -> AuthMode {
        let host = host_name(authority);
        self.0
            .iter()
            .find(|r| {
                (r.hosts.is_empty() || r.hosts.iter().any(|h| h.matches(host)))
                    && match &r.path {
                        Matcher::Exact(p) => p == path,
                        Matcher::Prefix(p) => path.starts_with(p.as_str()),
                    }
            })
            .map_or(AuthMode::Required, |r| r.mode)
    }
}

/// Why a route (or a tenant's host) was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("route host {0:?} must be a host name, optionally starting with \"*.\" (no port)")]
    Host(String),
    #[error("route {0:?} must have exactly one of `path` or `prefix`, starting with '/'")]
    Matcher(RouteConfig),
}

/// Compiles a configured host pattern.
pub fn host_matcher(h: &str) -> Result<HostMatcher, RouteError> {
    let (suffix, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h),
    };
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':'));
    if !valid {
        return Err(RouteError::Host(h.to_owned()));
    }
    let name = name.to_ascii_lowercase();
    Ok(if suffix {
        HostMatcher::Suffix(format!(".{name}"))
    } else {
        HostMatcher::Exact(name)
    })
}

impl TryFrom<&[RouteConfig]> for Routes {
    type Error = RouteError;

    fn try_from(routes: &[RouteConfig]) -> Result<Self, Self::Error> {
        routes
            .iter()
            .map(|r| {
                let m = match (&r.path, &r.prefix) {
                    (Some(p), None) if p.starts_with('/') => Matcher::Exact(p.clone()),
                    (None, Some(p)) if p.starts_with('/') => Matcher::Prefix(p.clone()),
                    _ => return Err(RouteError::Matcher(r.clone())),
                };
                let hosts = r
                    .hosts
                    .iter()
                    .map(|h| host_matcher(h))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Route {
                    hosts,
                    path: m,
                    mode: r.auth,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: Option<&str>, prefix: Option<&str>, auth: AuthMode) -> RouteConfig {
        RouteConfig {
            hosts: Vec::new(),
            path: path.map(Into::into),
            prefix: prefix.map(Into::into),
            auth,
        }
    }

    #[test]
    fn first_match_wins() {
        let r = Routes::try_from(
            &[
                route(Some("/healthz"), None, AuthMode::Public),
                route(None, Some("/docs/private"), AuthMode::Required),
                route(None, Some("/docs"), AuthMode::Optional),
            ][..],
        )
        .unwrap();
        assert_eq!(r.mode("any", "/healthz"), AuthMode::Public);
        assert_eq!(r.mode("any", "/healthz/x"), AuthMode::Required);
        assert_eq!(r.mode("any", "/docs/a"), AuthMode::Optional);
        assert_eq!(r.mode("any", "/docs/private/a"), AuthMode::Required);
        assert_eq!(r.mode("any", "/api"), AuthMode::Required);
    }

    #[test]
    fn hosts_limit_routes() {
        let mut docs = route(None, Some("/"), AuthMode::Public);
        docs.hosts = vec!["docs.example.com".into(), "*.Static.Example.com".into()];
        let r = Routes::try_from(&[docs][..]).unwrap();
        assert_eq!(r.mode("docs.example.com", "/x"), AuthMode::Public);
        assert_eq!(r.mode("DOCS.example.com:8443", "/x"), AuthMode::Public);
        assert_eq!(r.mode("a.static.example.com", "/x"), AuthMode::Public);
        assert_eq!(r.mode("static.example.com", "/x"), AuthMode::Required);
        assert_eq!(r.mode("evilstatic.example.com", "/x"), AuthMode::Required);
        assert_eq!(r.mode("api.example.com", "/x"), AuthMode::Required);
        assert_eq!(r.mode("docs.example.com.evil", "/x"), AuthMode::Required);
        assert_eq!(r.mode("", "/x"), AuthMode::Required);
        assert_eq!(host_name("[::1]:80"), "[::1]");
        assert_eq!(host_name("a:1"), "a");
        for bad in ["", "*.", "a b", "x/y", "*x.com"] {
            let mut r = route(None, Some("/"), AuthMode::Public);
            r.hosts = vec![bad.into()];
            assert!(Routes::try_from(&[r][..]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_ambiguous_routes() {
        for bad in [
            route(None, None, AuthMode::Public),
            route(Some("/a"), Some("/b"), AuthMode::Public),
            route(Some("a"), None, AuthMode::Public),
        ] {
            assert!(Routes::try_from(&[bad][..]).is_err());
        }
    }
}
