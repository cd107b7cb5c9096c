//! The admin API (`/v1/admin/...`, admin tokens only). Writes go through [`crate::store`]
//! (checked before they commit) and then publish at once; the answer carries the version
//! that holds the change.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{AdminCaller, ApiError, AppState, JsonBody};
use crate::publish::{self, PublishError, Published};
use crate::source::{PolicyRow, TenantSource};
use crate::store::{self, IssuerSpec};

/// Publishes what was just committed and reports the version that holds it.
async fn published(
    state: &AppState,
    caller: &AdminCaller,
    what: &str,
) -> Result<Response, ApiError> {
    tracing::info!(caller = %caller.name, "{what}");
    let reason = format!("{what} (by {})", caller.name);
    let version = state.publish(&reason).await.map(|p| p.version());
    if version.is_none() {
        // Committed but not published yet: the publisher retries on its own.
        state.wake_publisher.notify_one();
    }
    Ok(Json(serde_json::json!({"ok": true, "version": version})).into_response())
}

pub async fn list_tenants(
    State(s): State<AppState>,
    _c: AdminCaller,
) -> Result<Response, ApiError> {
    Ok(Json(store::list_tenants(&s.pool).await?).into_response())
}

pub async fn put_tenant(
    State(s): State<AppState>,
    c: AdminCaller,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let created = store::put_tenant(&s.pool, &tenant).await?;
    let mut r = published(&s, &c, &format!("tenant {tenant} created")).await?;
    if created {
        *r.status_mut() = StatusCode::CREATED;
    }
    Ok(r)
}

pub async fn delete_tenant(
    State(s): State<AppState>,
    c: AdminCaller,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    store::delete_tenant(&s.pool, &tenant).await?;
    published(&s, &c, &format!("tenant {tenant} deleted")).await
}

pub async fn list_policies(
    State(s): State<AppState>,
    _c: AdminCaller,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(store::list_policies(&s.pool, &tenant).await?).into_response())
}

pub async fn get_policy(
    State(s): State<AppState>,
    _c: AdminCaller,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(store::get_policy(&s.pool, &tenant, &id).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyBody {
    text: String,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

pub async fn put_policy(
    State(s): State<AppState>,
    c: AdminCaller,
    Path((tenant, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<PolicyBody>,
) -> Result<Response, ApiError> {
    let row = PolicyRow {
        id: id.clone(),
        text: body.text,
        enabled: body.enabled,
    };
    store::put_policies(&s.pool, &tenant, &[row]).await?;
    published(&s, &c, &format!("policy {id} of tenant {tenant} written")).await
}

/// Several policies in one transaction: `[{"id", "text", "enabled"}]`.
pub async fn put_policies(
    State(s): State<AppState>,
    c: AdminCaller,
    Path(tenant): Path<String>,
    JsonBody(rows): JsonBody<Vec<PolicyRow>>,
) -> Result<Response, ApiError> {
    store::put_policies(&s.pool, &tenant, &rows).await?;
    published(
        &s,
        &c,
        &format!("{} policies of tenant {tenant} written", rows.len()),
    )
    .await
}

pub async fn delete_policy(
    State(s): State<AppState>,
    c: AdminCaller,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    store::delete_policy(&s.pool, &tenant, &id).await?;
    published(&s, &c, &format!("policy {id} of tenant {tenant} deleted")).await
}

pub async fn get_schema(
    State(s): State<AppState>,
    _c: AdminCaller,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    match store::get_schema(&s.pool, &tenant).await? {
        Some(text) => Ok(Json(serde_json::json!({ "text": text })).into_response()),
        None => Err(ApiError::NotFound(format!(
            "tenant {tenant:?} has no schema"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaBody {
    text: String,
}

pub async fn put_schema(
    State(s): State<AppState>,
    c: AdminCaller,
    Path(tenant): Path<String>,
    JsonBody(body): JsonBody<SchemaBody>,
) -> Result<Response, ApiError> {
    store::put_schema(&s.pool, &tenant, Some(&body.text)).await?;
    published(&s, &c, &format!("schema of tenant {tenant} written")).await
}

pub async fn delete_schema(
    State(s): State<AppState>,
    c: AdminCaller,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    store::put_schema(&s.pool, &tenant, None).await?;
    published(&s, &c, &format!("schema of tenant {tenant} removed")).await
}

pub async fn list_entities(
    State(s): State<AppState>,
    _c: AdminCaller,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(store::list_entities(&s.pool, &tenant).await?).into_response())
}

/// Entities in Cedar's JSON format: one object or an array.
pub async fn put_entities(
    State(s): State<AppState>,
    c: AdminCaller,
    Path(tenant): Path<String>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    let entities = match body {
        serde_json::Value::Array(a) => a,
        one @ serde_json::Value::Object(_) => vec![one],
        _ => {
            return Err(ApiError::BadRequest(
                "expected an entity or an array of entities".into(),
            ));
        }
    };
    let n = store::put_entities(&s.pool, &tenant, &entities).await?;
    published(&s, &c, &format!("{n} entities of tenant {tenant} written")).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UidQuery {
    uid: String,
}

pub async fn delete_entity(
    State(s): State<AppState>,
    c: AdminCaller,
    Path(tenant): Path<String>,
    Query(q): Query<UidQuery>,
) -> Result<Response, ApiError> {
    store::delete_entity(&s.pool, &tenant, &q.uid).await?;
    published(
        &s,
        &c,
        &format!("entity {} of tenant {tenant} deleted", q.uid),
    )
    .await
}

pub async fn list_issuers(
    State(s): State<AppState>,
    _c: AdminCaller,
) -> Result<Response, ApiError> {
    Ok(Json(store::list_issuers(&s.pool).await?).into_response())
}

pub async fn put_issuer(
    State(s): State<AppState>,
    c: AdminCaller,
    JsonBody(spec): JsonBody<IssuerSpec>,
) -> Result<Response, ApiError> {
    store::put_issuer(&s.pool, &spec).await?;
    published(&s, &c, &format!("issuer {} written", spec.issuer)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssQuery {
    iss: String,
}

pub async fn delete_issuer(
    State(s): State<AppState>,
    c: AdminCaller,
    Query(q): Query<IssQuery>,
) -> Result<Response, ApiError> {
    store::delete_issuer(&s.pool, &q.iss).await?;
    published(&s, &c, &format!("issuer {} deleted", q.iss)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysQuery {
    iss: Option<String>,
}

pub async fn list_keys(
    State(s): State<AppState>,
    _c: AdminCaller,
    Query(q): Query<KeysQuery>,
) -> Result<Response, ApiError> {
    Ok(Json(store::list_keys(&s.pool, q.iss.as_deref()).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    issuer: String,
    jwk: serde_json::Value,
}

pub async fn add_key(
    State(s): State<AppState>,
    c: AdminCaller,
    JsonBody(body): JsonBody<KeyBody>,
) -> Result<Response, ApiError> {
    let kid = store::add_key(&s.pool, &body.issuer, &body.jwk).await?;
    published(
        &s,
        &c,
        &format!("key {kid} of issuer {} uploaded", body.issuer),
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyQuery {
    iss: String,
    kid: String,
}

pub async fn delete_key(
    State(s): State<AppState>,
    c: AdminCaller,
    Query(q): Query<KeyQuery>,
) -> Result<Response, ApiError> {
    store::delete_key(&s.pool, &q.iss, &q.kid).await?;
    published(
        &s,
        &c,
        &format!("key {} of issuer {} deleted", q.kid, q.iss),
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionsQuery {
    limit: Option<i64>,
}

pub async fn list_versions(
    State(s): State<AppState>,
    _c: AdminCaller,
    Query(q): Query<VersionsQuery>,
) -> Result<Response, ApiError> {
    Ok(Json(store::list_versions(&s.pool, q.limit.unwrap_or(100)).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    to: i64,
}

#[derive(Debug, Serialize)]
struct RollbackAnswer {
    version: i64,
    changed: bool,
}

pub async fn rollback(
    State(s): State<AppState>,
    c: AdminCaller,
    JsonBody(body): JsonBody<RollbackBody>,
) -> Result<Response, ApiError> {
    tracing::info!(caller = %c.name, to = body.to, "rollback");
    match publish::rollback(&s.pool, &s.signer, body.to).await {
        Ok(p) => {
            let changed = matches!(p, Published::New { .. });
            s.record(&p);
            Ok(Json(RollbackAnswer {
                version: p.version(),
                changed,
            })
            .into_response())
        }
        Err(PublishError::NoSuchVersion(v)) => {
            Err(ApiError::NotFound(format!("version {v} not found")))
        }
        Err(PublishError::Invalid(p)) => Err(ApiError::Invalid(p)),
        Err(PublishError::Db(e)) => Err(e.into()),
    }
}

/// Checks policies (and optionally a schema and entities) without storing anything; with
/// `tenant`, against that tenant's stored schema unless one is given.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValidateBody {
    #[serde(default)]
    tenant: Option<String>,
    policies: Vec<PolicyRow>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    entities: Vec<serde_json::Value>,
}

pub async fn validate(
    State(s): State<AppState>,
    _c: AdminCaller,
    JsonBody(body): JsonBody<ValidateBody>,
) -> Result<Response, ApiError> {
    let schema = match (&body.schema, &body.tenant) {
        (Some(text), _) => Some(text.clone()),
        (None, Some(tenant)) => store::get_schema(&s.pool, tenant).await?,
        (None, None) => None,
    };
    let src = TenantSource {
        policies: body.policies,
        schema,
        entities: body.entities,
    };
    match src.bundle(0) {
        Ok(_) => Ok(Json(serde_json::json!({"valid": true})).into_response()),
        Err(p) => Err(ApiError::Invalid(p)),
    }
}
