//! Decision fixtures for the demo bundle: request → expected status, challenge and determining
//! policies. The same set runs through the real Envoy (end to end) and through the wasmtime
//! host, so the host cannot drift from Envoy's behaviour unnoticed.

use serde_json::json;

use crate::Result;
use crate::devkeys::{DevIssuer, now};

/// One fixture.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    pub token: Option<String>,
    pub status: u16,
    /// Determining policies named in the debug header (403 only).
    pub policies: Option<&'static str>,
    /// Expected `error="..."` in WWW-Authenticate (401 only; `None`: a bare challenge).
    pub error: Option<&'static str>,
}

/// The body the upstream answers in the Envoy configuration (`envoy/test-template.yaml`).
pub const UPSTREAM_BODY: &str = "hello from the upstream\n";

/// The demo fixtures for tokens of `issuer` (trusted by the configuration under test).
pub fn demo_cases(issuer: &DevIssuer) -> Result<Vec<Case>> {
    let other = DevIssuer::generate()?;
    let t = now();
    // alice: {"iss":DEV_ISSUER,"aud":"portcullis-demo","sub":"alice","groups":["admins"],"iat":now,"exp":now+3600}
    let alice = issuer.token("alice", &["admins"]);
    // bob: {"iss":DEV_ISSUER,"aud":"portcullis-demo","sub":"bob","groups":["staff"],"iat":now,"exp":now+3600}
    let bob = issuer.token("bob", &["staff"]);
    // expired: {"iss":DEV_ISSUER,"aud":"portcullis-demo","sub":"bob","exp":now-3600} (beyond the 60 s leeway)
    let expired = issuer.sign(
        &json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "bob", "exp": t - 3600}),
    );
    // wrong_aud: {"iss":DEV_ISSUER,"aud":"someone-else","sub":"bob","exp":now+600}
    let wrong_aud = issuer
        .sign(&json!({"iss": issuer.issuer, "aud": "someone-else", "sub": "bob", "exp": t + 600}));
    // forged: {"iss":DEV_ISSUER,"aud":"portcullis-demo","sub":"bob","exp":now+600}, signed by another key
    let forged = other
        .sign(&json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "bob", "exp": t + 600}));
    // alg_none: header {"alg":"none"} over bob's payload, junk signature
    let alg_none = {
        let real = issuer.token("bob", &[]);
        let rest = real
            .split_once('.')
            .map(|(_, r)| r.to_owned())
            .unwrap_or_default();
        format!("eyJhbGciOiJub25lIn0.{rest}")
    };
    // no_sub: {"iss":DEV_ISSUER,"aud":"portcullis-demo","exp":now+600}
    let no_sub =
        issuer.sign(&json!({"iss": issuer.issuer, "aud": issuer.audience, "exp": t + 600}));

    let case = |name, method, path, token: Option<String>, status, policies, error| Case {
        name,
        method,
        path,
        token,
        status,
        policies,
        error,
    };
    Ok(vec![
        case("no token", "GET", "/api/hello", None, 401, None, None),
        case(
            "garbage token",
            "GET",
            "/api/hello",
            Some("not.a.token".into()),
            401,
            None,
            Some("invalid_token"),
        ),
        case(
            "expired",
            "GET",
            "/api/hello",
            Some(expired),
            401,
            None,
            Some("invalid_token"),
        ),
        case(
            "wrong audience",
            "GET",
            "/api/hello",
            Some(wrong_aud),
            401,
            None,
            Some("invalid_token"),
        ),
        case(
            "forged signature",
            "GET",
            "/api/hello",
            Some(forged),
            401,
            None,
            Some("invalid_token"),
        ),
        case(
            "alg none",
            "GET",
            "/api/hello",
            Some(alg_none),
            401,
            None,
            Some("invalid_token"),
        ),
        case(
            "no subject",
            "GET",
            "/api/hello",
            Some(no_sub),
            401,
            None,
            Some("invalid_token"),
        ),
        case(
            "user reads",
            "GET",
            "/api/hello?x=1",
            Some(bob.clone()),
            200,
            None,
            None,
        ),
        case(
            "user writes",
            "DELETE",
            "/api/items/7",
            Some(bob.clone()),
            403,
            Some(""),
            None,
        ),
        case(
            "user in admin area",
            "GET",
            "/admin/users",
            Some(bob),
            403,
            Some("admin-area-admins-only"),
            None,
        ),
        case(
            "admin writes in admin area",
            "DELETE",
            "/admin/users/9",
            Some(alice),
            200,
            None,
            None,
        ),
    ])
}

/// What a client observed for one fixture.
#[derive(Debug, Clone)]
pub struct Observed {
    pub status: u16,
    pub challenge: Option<String>,
    pub policies: Option<String>,
    pub body: String,
}

impl Case {
    /// Checks an observation against the fixture; `upstream_body` is what the upstream in
    /// this setup answers.
    pub fn check(&self, seen: &Observed, upstream_body: &str) -> std::result::Result<(), String> {
        let fail = |what: String| Err(format!("{}: {what} (saw {seen:?})", self.name));
        if seen.status != self.status {
            return fail(format!("status {} expected", self.status));
        }
        match self.status {
            200 if seen.body != upstream_body => fail("upstream body expected".into()),
            401 => {
                let Some(ch) = &seen.challenge else {
                    return fail("no WWW-Authenticate".into());
                };
                if !ch.starts_with("Bearer realm=\"portcullis\"") {
                    return fail("Bearer challenge expected".into());
                }
                match self.error {
                    Some(code) if !ch.contains(&format!("error=\"{code}\"")) => {
                        fail(format!("error=\"{code}\" expected"))
                    }
                    None if ch.contains("error=") => fail("bare challenge expected".into()),
                    _ => Ok(()),
                }
            }
            403 if seen.body != "access denied\n" => fail("403 body expected".into()),
            403 if seen.policies.as_deref() != self.policies => {
                fail(format!("determining policies {:?} expected", self.policies))
            }
            _ => Ok(()),
        }
    }
}
