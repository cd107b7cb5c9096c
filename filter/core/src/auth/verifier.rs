//! Signature and claim checks for one issuer (RFC 7519 §7.2, RFC 8725).

use serde_json::{Map, Value};

use crate::auth::error::AuthError;
use crate::auth::host_crypto::HostCrypto;
use crate::auth::jwks::KeySet;
use crate::auth::token::UnverifiedToken;

/// A trusted issuer, compiled from configuration.
#[derive(Debug, Clone)]
pub struct Issuer {
    pub iss: String,
    /// Accepted audiences; empty means `aud` is not checked.
    pub audiences: Vec<String>,
    pub keys: KeySet,
    /// Claims that must be present (and not null).
    pub required_claims: Vec<String>,
    /// Longest accepted `exp - iat`, in seconds (then `iat` is required too).
    pub max_lifetime: Option<u64>,
}

/// Time rules shared by all issuers.
#[derive(Debug, Clone, Copy)]
pub struct TimeRules {
    /// Allowed clock skew in seconds for `exp`, `nbf` and `iat`.
    pub leeway: u64,
}

impl Issuer {
    /// Verifies the signature, then the registered claims. `now` is Unix seconds.
    pub fn verify(
        &self,
        token: &UnverifiedToken<'_>,
        now: u64,
        rules: TimeRules,
        host: Option<&dyn HostCrypto>,
    ) -> Result<(), AuthError> {
        let mut candidates = self
            .keys
            .candidates(token.kid.as_deref(), token.alg)
            .peekable();
        if candidates.peek().is_none() {
            return Err(AuthError::NoKey {
                issuer: self.iss.clone(),
                kid: token.kid.clone(),
                alg: token.alg.name(),
            });
        }
        if !candidates.any(|k| k.verify(token.alg, token.signing_input, &token.signature, host)) {
            return Err(AuthError::BadSignature);
        }
        check_times(&token.claims, now, rules)?;
        self.check_audience(&token.claims)?;
        if let Some(missing) = self
            .required_claims
            .iter()
            .find(|c| token.claims.get(c.as_str()).is_none_or(Value::is_null))
        {
            return Err(AuthError::MissingClaim(missing.clone()));
        }
        if let Some(max) = self.max_lifetime {
            let exp = token.claims.get("exp").and_then(numeric_date);
            let iat = token.claims.get("iat").and_then(numeric_date);
            match (exp, iat) {
                (Some(exp), Some(iat)) if exp.saturating_sub(iat) <= max => {}
                _ => return Err(AuthError::Lifetime),
            }
        }
        Ok(())
    }

    fn check_audience(&self, claims: &Map<String, Value>) -> Result<(), AuthError> {
        if self.audiences.is_empty() {
            return Ok(());
        }
        let accepted = |v: &Value| {
            v.as_str()
                .is_some_and(|a| self.audiences.iter().any(|x| x == a))
        };
        let ok = match claims.get("aud") {
            Some(Value::Array(auds)) => auds.iter().any(accepted),
            Some(v) => accepted(v),
            None => false,
        };
        if ok { Ok(()) } else { Err(AuthError::Audience) }
    }
}

/// NumericDate (RFC 7519 §2): seconds, possibly fractional. Negative or non-numeric is `None`.
pub(crate) fn numeric_date(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                // Saturating float→int cast: truncation of the fraction is intended.
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

fn check_times(claims: &Map<String, Value>, now: u64, rules: TimeRules) -> Result<(), AuthError> {
    let exp = claims
        .get("exp")
        .and_then(numeric_date)
        .ok_or(AuthError::NoExpiry)?;
    if now > exp.saturating_add(rules.leeway) {
        return Err(AuthError::Expired);
    }
    let late = now.saturating_add(rules.leeway);
    if let Some(nbf) = claims.get("nbf") {
        match numeric_date(nbf) {
            Some(nbf) if nbf <= late => {}
            _ => return Err(AuthError::NotYetValid),
        }
    }
    if let Some(iat) = claims.get("iat") {
        match numeric_date(iat) {
            Some(iat) if iat <= late => {}
            _ => return Err(AuthError::IssuedInFuture),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn time_rules() {
        let r = TimeRules { leeway: 60 };
        let now = 1_000_000;
        assert_eq!(
            check_times(&claims(json!({"exp": now + 1})), now, r),
            Ok(())
        );
        assert_eq!(
            check_times(&claims(json!({"exp": now - 60})), now, r),
            Ok(())
        );
        assert_eq!(
            check_times(&claims(json!({"exp": now - 61})), now, r),
            Err(AuthError::Expired)
        );
        assert_eq!(
            check_times(&claims(json!({})), now, r),
            Err(AuthError::NoExpiry)
        );
        assert_eq!(
            check_times(&claims(json!({"exp": "soon"})), now, r),
            Err(AuthError::NoExpiry)
        );
        assert_eq!(check_times(&claims(json!({"exp": 1.5e6})), now, r), Ok(()));
        assert_eq!(
            check_times(&claims(json!({"exp": now + 999, "nbf": now + 61})), now, r),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            check_times(&claims(json!({"exp": now + 999, "nbf": now + 60})), now, r),
            Ok(())
        );
        assert_eq!(
            check_times(&claims(json!({"exp": now + 999, "iat": now + 61})), now, r),
            Err(AuthError::IssuedInFuture)
        );
        assert_eq!(
            check_times(&claims(json!({"exp": now + 999, "iat": -5})), now, r),
            Err(AuthError::IssuedInFuture)
        );
    }
}
