//! Which paths need a token: required (default), optional, or public.

use serde::Deserialize;

/// How a route treats authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
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

/// A route as configured: exactly one of `path` (exact) or `prefix`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
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

/// Compiled routes; the first match wins, no match means `Required`.
#[derive(Debug, Clone, Default)]
pub struct Routes(Vec<(Matcher, AuthMode)>);

impl Routes {
    /// The mode for a path (without query string).
    #[must_use]
    pub fn mode(&self, path: &str) -> AuthMode {
        self.0
            .iter()
            .find(|(m, _)| match m {
                Matcher::Exact(p) => p == path,
                Matcher::Prefix(p) => path.starts_with(p.as_str()),
            })
            .map_or(AuthMode::Required, |(_, mode)| *mode)
    }
}

impl TryFrom<&[RouteConfig]> for Routes {
    type Error = String;

    fn try_from(routes: &[RouteConfig]) -> Result<Self, Self::Error> {
        routes
            .iter()
            .map(|r| {
                let m = match (&r.path, &r.prefix) {
                    (Some(p), None) if p.starts_with('/') => Matcher::Exact(p.clone()),
                    (None, Some(p)) if p.starts_with('/') => Matcher::Prefix(p.clone()),
                    _ => {
                        return Err(format!(
                            "route {r:?} must have exactly one of `path` or `prefix`, starting with '/'"
                        ));
                    }
                };
                Ok((m, r.auth))
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
        assert_eq!(r.mode("/healthz"), AuthMode::Public);
        assert_eq!(r.mode("/healthz/x"), AuthMode::Required);
        assert_eq!(r.mode("/docs/a"), AuthMode::Optional);
        assert_eq!(r.mode("/docs/private/a"), AuthMode::Required);
        assert_eq!(r.mode("/api"), AuthMode::Required);
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
