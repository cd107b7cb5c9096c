//! The host boundary: how the core reads a request.

/// Read access to the request being authorized.
///
/// Header names are lower-case; HTTP/2 pseudo-headers (`:method`, `:path`, `:authority`) are
/// available under their usual names, as Envoy presents them to filters.
pub trait RequestView {
    /// The value of a request header, if present.
    fn header(&self, name: &str) -> Option<String>;
}

/// An in-memory request: the test double for [`RequestView`], also used by benchmarks.
#[derive(Debug, Clone, Default)]
pub struct StaticRequest {
    headers: Vec<(String, String)>,
}

impl StaticRequest {
    /// A request with the given method and path.
    #[must_use]
    pub fn new(method: &str, path: &str) -> Self {
        Self::default()
            .with_header(":method", method)
            .with_header(":path", path)
    }

    /// Adds a header (the name is lower-cased).
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Adds `authorization: Bearer <token>`.
    #[must_use]
    pub fn with_bearer(self, token: &str) -> Self {
        self.with_header("authorization", &format!("Bearer {token}"))
    }
}

impl RequestView for StaticRequest {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}
