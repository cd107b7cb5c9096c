//! Setting a deployment up: `migrate` (the database schema) and `keygen` (the bundle
//! signing key).

use std::path::Path;

use policy_sync::db;
use policy_sync::signing::{KeyError, Signer};

use super::common::pool;
use super::failure::{Exit, Failure, Outcome};

/// `migrate`: applies the embedded migrations.
pub(crate) async fn migrate(url: Option<&String>) -> Outcome {
    let applied = db::migrate(&pool(url)?).await?;
    Ok(if applied.is_empty() {
        "the database is up to date".into()
    } else {
        format!("applied migrations {applied:?}")
    })
}

/// `keygen`: writes a new signing key to `out` (which must not exist).
pub(crate) fn keygen(out: &Path) -> Outcome {
    let signer = Signer::generate();
    signer.write_new(out).map_err(|e| {
        let code = if matches!(e, KeyError::Exists(_)) {
            Exit::Usage
        } else {
            Exit::Failed
        };
        Failure::new(code, e.to_string())
    })?;
    Ok(format!(
        "wrote the signing key to {} (keep it secret)\nkey id:     {}\npublic key: {}",
        out.display(),
        signer.key_id(),
        signer.public_key_text()
    ))
}
