//! Bearer-token authentication. Tokens are looked up by their SHA-256; no write exists
//! without one, and filter tokens can only read bundles, send decision logs and ask for a
//! key refresh.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::{ApiError, AppState};
use crate::store::{self, Role};

/// A caller holding an admin token.
#[derive(Debug, Clone)]
pub struct AdminCaller {
    pub name: String,
}

/// A caller holding a filter (or admin) token.
#[derive(Debug, Clone)]
pub struct FilterCaller {
    pub name: String,
}

async fn caller(parts: &Parts, state: &AppState) -> Result<(String, Role), ApiError> {
    let token = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or(ApiError::Unauthorized)?;
    store::authenticate(&state.pool, token)
        .await?
        .ok_or(ApiError::Unauthorized)
}

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match caller(parts, state).await? {
            (name, Role::Admin) => Ok(Self { name }),
            (_, Role::Filter) => Err(ApiError::Forbidden),
        }
    }
}

impl FromRequestParts<AppState> for FilterCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        caller(parts, state).await.map(|(name, _)| Self { name })
    }
}
