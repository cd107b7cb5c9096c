//! The host boundary: how the core reads a request.

/// Read access to the request being authorized.
///
/// Header names are lower-case; HTTP/2 pseudo-headers (`:method`, `:path`, `:authority`) are
/// available under their usual names, as Envoy presents them to filters.
pub trait RequestView {
    /// The value of a request header, if present (borrowed: a repeated request copies nothing
    /// it does not keep).
    fn header(&self, name: &str) -> Option<&str>;

    /// The client's address as the host reports it (`ip:port` or an ip), if known.
    fn source_address(&self) -> Option<String> {
        None
    }
}

/// An in-memory request: the test double for [`RequestView`], also used by benchmarks.
#[derive(Debug, Clone, Default)]
pub struct StaticRequest {
    headers: Vec<(String, String)>,
    source: Option<String>,
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

    /// Sets the client address (`ip:port`).
    #[must_use]
    pub fn with_source(mut self, address: &str) -> Self {
        self.source = Some(address.to_owned());
        self
    }

    /// Adds `authorization: Bearer <token>`.
    #[must_use]
    pub fn with_bearer(self, token: &str) -> Self {
        self.with_header("authorization", &format!("Bearer {token}"))
    }
}

impl RequestView for StaticRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn source_address(&self) -> Option<String> {
        self.source.clone()
    }
}

/// The ip of an `ip:port`, `[v6]:port`, or bare ip address.
#[must_use]
pub fn address_ip(address: &str) -> &str {
    if let Some(v6) = address.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default();
    }
    match address.rsplit_once(':') {
        // One colon: ipv4:port. More: a bare IPv6 address.
        Some((ip, _)) if !ip.contains(':') => ip,
        _ => address,
    }
}

/// Query parameters of a path, percent-decoded (`+` as space), in order.
#[must_use]
pub fn query_params(path: &str) -> Vec<(String, String)> {
    let Some((_, query)) = path.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        match b {
            b'%' => {
                if let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) {
                    // Two hex digits make one byte: h * 16 + l < 256.
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_query() {
        assert_eq!(address_ip("10.0.0.1:5000"), "10.0.0.1");
        assert_eq!(address_ip("[::1]:80"), "::1");
        assert_eq!(address_ip("::1"), "::1");
        assert_eq!(address_ip("10.0.0.1"), "10.0.0.1");
        assert_eq!(
            query_params("/a?x=1&y=a%20b+c&z&bad=%zz%4"),
            vec![
                ("x".into(), "1".into()),
                ("y".into(), "a b c".into()),
                ("z".into(), String::new()),
                ("bad".into(), "%zz%4".into()),
            ]
        );
        assert!(query_params("/a").is_empty());
        assert_eq!(query_params("/a?%FF=1")[0].0, "\u{fffd}");
    }
}
