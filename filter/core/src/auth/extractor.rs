//! Where the token comes from in the request: headers (with a prefix such as `Bearer `),
//! cookies and query parameters, tried in the configured order.

use std::borrow::Cow;

use serde::Deserialize;

use crate::http::request::RequestView;

/// A token source as configured: exactly one of `header`, `cookie`, `query`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSourceConfig {
    /// Header name; with `prefix`, only values starting with it (case-insensitively) count.
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    /// Cookie name.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Query parameter name.
    #[serde(default)]
    pub query: Option<String>,
}

/// A compiled token source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Header { name: String, prefix: String },
    Cookie(String),
    Query(String),
}

impl TokenSource {
    /// `Authorization: Bearer <token>` (RFC 6750 §2.1), the default.
    #[must_use]
    pub fn bearer() -> Self {
        Self::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }
    }
}

/// Why a token source was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenSourceError {
    #[error(
        "token source {0:?} must name exactly one non-empty header, cookie or query (prefix only with header)"
    )]
    NotOneSource(TokenSourceConfig),
    #[error("tokenSources must not be empty")]
    Empty,
}

impl TryFrom<&TokenSourceConfig> for TokenSource {
    type Error = TokenSourceError;

    fn try_from(c: &TokenSourceConfig) -> Result<Self, Self::Error> {
        let nonempty = |s: &String| !s.trim().is_empty();
        match (&c.header, &c.cookie, &c.query) {
            (Some(h), None, None) if nonempty(h) => Ok(Self::Header {
                name: h.to_ascii_lowercase(),
                prefix: c.prefix.clone().unwrap_or_default(),
            }),
            (None, Some(n), None) if nonempty(n) && c.prefix.is_none() => {
                Ok(Self::Cookie(n.clone()))
            }
            (None, None, Some(n)) if nonempty(n) && c.prefix.is_none() => {
                Ok(Self::Query(n.clone()))
            }
            _ => Err(TokenSourceError::NotOneSource(c.clone())),
        }
    }
}

/// Outcome of looking for a token (borrowing from the request and the sources).
#[derive(Debug, PartialEq, Eq)]
pub enum Extracted<'a> {
    /// No credentials at all.
    Missing,
    /// A source header is present but without its prefix (e.g. `Authorization: Basic ...`).
    WrongScheme,
    /// A token, and the header it came from (if it came from a header).
    Token {
        token: Cow<'a, str>,
        header: Option<&'a str>,
    },
}

/// Tries each source in order; the first that holds a token wins.
pub fn extract<'a>(req: &'a dyn RequestView, sources: &'a [TokenSource]) -> Extracted<'a> {
    let mut wrong_scheme = false;
    for source in sources {
        match source {
            TokenSource::Header { name, prefix } => {
                let Some(value) = req.header(name) else {
                    continue;
                };
                let value = value.trim();
                match strip_prefix_ignore_case(value, prefix) {
                    Some(token) if !token.trim().is_empty() => {
                        return Extracted::Token {
                            token: Cow::Borrowed(token.trim()),
                            header: Some(name),
                        };
                    }
                    _ => wrong_scheme = true,
                }
            }
            TokenSource::Cookie(name) => {
                let found = req.header("cookie").and_then(|cookies| {
                    cookies.split(';').find_map(|c| {
                        let (k, v) = c.trim().split_once('=')?;
                        (k == name && !v.is_empty()).then(|| v.trim_matches('"'))
                    })
                });
                if let Some(token) = found {
                    return Extracted::Token {
                        token: Cow::Borrowed(token),
                        header: None,
                    };
                }
            }
            TokenSource::Query(name) => {
                let path = req.header(":path").unwrap_or_default();
                let found = path.split_once('?').and_then(|(_, q)| {
                    q.split('#')
                        .next()
                        .unwrap_or_default()
                        .split('&')
                        .find_map(|kv| {
                            let (k, v) = kv.split_once('=')?;
                            (k == name && !v.is_empty())
                                .then(|| percent_decode(v))
                                .flatten()
                        })
                });
                if let Some(token) = found {
                    return Extracted::Token {
                        token: Cow::Owned(token),
                        header: None,
                    };
                }
            }
        }
    }
    if wrong_scheme {
        Extracted::WrongScheme
    } else {
        Extracted::Missing
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        value.get(prefix.len()..)
    } else {
        None
    }
}

/// `%XX` decoding; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::StaticRequest;

    fn token<'a>(t: &'a str, header: Option<&'a str>) -> Extracted<'a> {
        Extracted::Token {
            token: t.into(),
            header,
        }
    }

    #[test]
    fn finds_bearer_tokens() {
        let src = [TokenSource::bearer()];
        let r = |v: &str| StaticRequest::new("GET", "/").with_header("authorization", v);
        assert_eq!(
            extract(&StaticRequest::new("GET", "/"), &src),
            Extracted::Missing
        );
        assert_eq!(
            extract(&r("Bearer abc"), &src),
            token("abc", Some("authorization"))
        );
        assert_eq!(
            extract(&r("bearer   abc "), &src),
            token("abc", Some("authorization"))
        );
        assert_eq!(
            extract(&r("Basic dXNlcjpwdw=="), &src),
            Extracted::WrongScheme
        );
        assert_eq!(extract(&r("Bearer"), &src), Extracted::WrongScheme);
        assert_eq!(extract(&r("Bearer "), &src), Extracted::WrongScheme);
    }

    #[test]
    fn other_sources_in_order() {
        let src = [
            TokenSource::bearer(),
            TokenSource::Header {
                name: "x-token".into(),
                prefix: String::new(),
            },
            TokenSource::Cookie("session".into()),
            TokenSource::Query("access_token".into()),
        ];
        let base = StaticRequest::new("GET", "/p?a=1&access_token=q%2Etok&b=2");
        assert_eq!(extract(&base, &src), token("q.tok", None));
        let c = base
            .clone()
            .with_header("cookie", "theme=dark; session=c.tok");
        assert_eq!(extract(&c, &src), token("c.tok", None));
        let h = c.clone().with_header("x-token", "h.tok");
        assert_eq!(extract(&h, &src), token("h.tok", Some("x-token")));
        let a = h.with_header("authorization", "Bearer a.tok");
        assert_eq!(extract(&a, &src), token("a.tok", Some("authorization")));
        // A malformed escape is no token.
        let bad = StaticRequest::new("GET", "/p?access_token=%zz");
        assert_eq!(extract(&bad, &src), Extracted::Missing);
    }

    #[test]
    fn config_must_name_one_source() {
        let c = |h: Option<&str>, p: Option<&str>, k: Option<&str>, q: Option<&str>| {
            TokenSourceConfig {
                header: h.map(Into::into),
                prefix: p.map(Into::into),
                cookie: k.map(Into::into),
                query: q.map(Into::into),
            }
        };
        assert!(TokenSource::try_from(&c(Some("X-Tok"), Some("T "), None, None)).is_ok());
        assert!(TokenSource::try_from(&c(None, None, Some("s"), None)).is_ok());
        assert!(TokenSource::try_from(&c(None, None, None, None)).is_err());
        assert!(TokenSource::try_from(&c(Some("a"), None, Some("s"), None)).is_err());
        assert!(TokenSource::try_from(&c(None, Some("p"), None, Some("q"))).is_err());
        assert!(TokenSource::try_from(&c(Some(" "), None, None, None)).is_err());
    }
}
