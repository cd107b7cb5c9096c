//! What a verified token adds to (or removes from) the request before it goes upstream.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// A claim copied into a request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    /// Path into the claims (`"sub"`, or `"realm_access.roles"` for nested objects).
    pub claim: Vec<String>,
    /// Lower-case header name.
    pub header: String,
}

/// An issuer's outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    pub claim_headers: Vec<ClaimHeader>,
    /// Header carrying the token's payload segment (base64url JSON).
    pub payload_header: Option<String>,
    /// Keep the token in the request to the upstream.
    pub forward: bool,
}

impl Outputs {
    /// Every header these outputs write (the filter removes client copies of all of them).
    pub fn written(&self) -> impl Iterator<Item = &str> {
        self.claim_headers
            .iter()
            .map(|c| c.header.as_str())
            .chain(self.payload_header.as_deref())
    }

    /// The headers to set for a token with these claims; claims that are absent, or whose text
    /// would not be a valid header value, are left out.
    #[must_use]
    pub fn render(&self, claims: &Map<String, Value>, token: &str) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(self.claim_headers.len() + 1);
        for c in &self.claim_headers {
            if let Some(text) = lookup(claims, &c.claim).and_then(header_text) {
                out.push((c.header.clone(), text));
            }
        }
        if let Some(h) = &self.payload_header
            && let Some(payload) = token.split('.').nth(1)
        {
            out.push((h.clone(), payload.to_owned()));
        }
        out
    }
}

fn lookup<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(claims.get(first)?, |v, k| v.get(k))
}

/// Strings as they are, numbers and booleans as JSON, arrays of those joined with commas,
/// objects as compact JSON (base64url, so any content stays a valid header value).
fn header_text(v: &Value) -> Option<String> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(_) | Value::Bool(_) => v.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Some(s.clone()),
                Value::Number(_) | Value::Bool(_) => Some(i.to_string()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?
            .join(","),
        Value::Object(_) => URL_SAFE_NO_PAD.encode(v.to_string()),
        Value::Null => return None,
    };
    // RFC 9110 field values: visible ASCII, spaces and tabs; no CR, LF or NUL.
    text.bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
        .then_some(text)
}

/// Checks a configured header name: a lower-case HTTP token, not a pseudo-header, not one
/// that would change routing or framing.
pub fn valid_header_name(name: &str) -> bool {
    const RESERVED: [&str; 7] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "authorization",
    ];
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b)
        })
        && !RESERVED.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_claims() {
        let claims = json!({
            "sub": "alice", "n": 7, "ok": true, "groups": ["a", "b"],
            "realm": {"roles": ["x"]}, "evil": "a\r\nx-admin: 1", "mixed": ["a", {"b": 1}],
        });
        let claims = claims.as_object().unwrap();
        let h = |claim: &str, header: &str| ClaimHeader {
            claim: claim.split('.').map(str::to_owned).collect(),
            header: header.to_owned(),
        };
        let out = Outputs {
            claim_headers: vec![
                h("sub", "x-sub"),
                h("n", "x-n"),
                h("ok", "x-ok"),
                h("groups", "x-groups"),
                h("realm.roles", "x-roles"),
                h("evil", "x-evil"),
                h("mixed", "x-mixed"),
                h("absent", "x-absent"),
            ],
            payload_header: Some("x-payload".into()),
            forward: true,
        };
        let got = out.render(claims, "h.cGF5bG9hZA.s");
        let want: Vec<(String, String)> = [
            ("x-sub", "alice"),
            ("x-n", "7"),
            ("x-ok", "true"),
            ("x-groups", "a,b"),
            ("x-roles", "x"),
            ("x-payload", "cGF5bG9hZA"),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn header_names() {
        assert!(valid_header_name("x-user-id"));
        for bad in ["", "X-User", ":path", "host", "authorization", "a b", "a\n"] {
            assert!(!valid_header_name(bad), "{bad:?}");
        }
    }
}
