//! Where the token comes from in the request.

use crate::request::RequestView;

/// Outcome of looking for a token.
#[derive(Debug, PartialEq, Eq)]
pub enum Extracted {
    /// No credentials at all.
    Missing,
    /// An `Authorization` header that is not a bearer token.
    WrongScheme,
    Token(String),
}

/// Takes the token from `Authorization: Bearer <token>` (scheme case-insensitive, RFC 6750 §2.1).
pub fn bearer(req: &dyn RequestView) -> Extracted {
    let Some(value) = req.header("authorization") else {
        return Extracted::Missing;
    };
    let value = value.trim();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim_start();
            if token.is_empty() {
                Extracted::WrongScheme
            } else {
                Extracted::Token(token.to_owned())
            }
        }
        _ => Extracted::WrongScheme,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::StaticRequest;

    #[test]
    fn finds_bearer_tokens() {
        let r = |v: &str| StaticRequest::new("GET", "/").with_header("authorization", v);
        assert_eq!(bearer(&StaticRequest::new("GET", "/")), Extracted::Missing);
        assert_eq!(bearer(&r("Bearer abc")), Extracted::Token("abc".into()));
        assert_eq!(bearer(&r("bearer   abc ")), Extracted::Token("abc".into()));
        assert_eq!(bearer(&r("Basic dXNlcjpwdw==")), Extracted::WrongScheme);
        assert_eq!(bearer(&r("Bearer")), Extracted::WrongScheme);
        assert_eq!(bearer(&r("Bearer ")), Extracted::WrongScheme);
    }
}
