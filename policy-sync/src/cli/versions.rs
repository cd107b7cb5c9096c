//! `versions` and `rollback`: the published versions, and restoring an earlier one.

use policy_sync::publish::{self, PublishError, Published};
use policy_sync::store;

use super::args::KeyArgs;
use super::common::{pool, signer};
use super::failure::{Exit, Failure, Outcome};

/// `versions`: the latest `limit` versions, newest first.
pub(crate) async fn list(url: Option<&String>, limit: i64) -> Outcome {
    let pool = pool(url)?;
    let all = store::list_versions(&pool, limit).await?;
    Ok(all
        .iter()
        .map(|v| {
            format!(
                "{}\t{}\t{}\t{}",
                v.version,
                v.published_at,
                v.tenants.join(","),
                v.reason
            )
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// `rollback`: publishes the content of version `to` as a new version.
pub(crate) async fn rollback(url: Option<&String>, to: i64, key: &KeyArgs) -> Outcome {
    let signer = signer(key)?;
    let pool = pool(url)?;
    match publish::rollback(&pool, &signer, to).await {
        Ok(Published::New { version, .. }) => Ok(format!(
            "rolled back to version {to}: published as version {version}"
        )),
        Ok(Published::Unchanged { version }) => Ok(format!(
            "version {version} already has the content of version {to}; nothing published"
        )),
        Err(PublishError::NoSuchVersion(v)) => Err(Failure::new(
            Exit::NotFound,
            format!("version {v} not found"),
        )),
        Err(PublishError::Invalid(problems)) => Err(Failure {
            code: Exit::Invalid,
            message: "refused: the restored state does not validate".into(),
            problems,
        }),
        Err(PublishError::Db(e)) => Err(e.into()),
    }
}
