//! `bundle`: checking a bundle file offline, and printing a tenant's latest published
//! document.

use std::path::Path;

use policy_sync::{db, publish};
use portcullis_core::{Bundle, BundleWire};

use super::args::{BundleCommand, TenantArg};
use super::common::pool;
use super::failure::{Exit, Failure, Outcome};

pub(crate) async fn run(url: Option<&String>, command: BundleCommand) -> Outcome {
    match command {
        BundleCommand::Validate { file } => validate_bundle(&file),
        BundleCommand::Show { tenant, signed } => show(url, &tenant, signed).await,
    }
}

/// The tenant's latest published document, or with `signed` its signed envelope.
async fn show(url: Option<&String>, tenant: &TenantArg, signed: bool) -> Outcome {
    let pool = pool(url)?;
    let c = pool.get().await.map_err(db::DbError::from)?;
    let (_, doc) = publish::latest(&c, &tenant.tenant).await?.ok_or_else(|| {
        Failure::new(
            Exit::NotFound,
            format!("no version of tenant {} is published", tenant.tenant),
        )
    })?;
    if signed {
        return serde_json::to_string_pretty(&doc)
            .map_err(|e| Failure::new(Exit::Failed, e.to_string()));
    }
    let value: serde_json::Value = serde_json::from_str(&doc.payload)
        .map_err(|e| Failure::new(Exit::Failed, e.to_string()))?;
    serde_json::to_string_pretty(&value).map_err(|e| Failure::new(Exit::Failed, e.to_string()))
}

/// Checks a bundle file as the filter would.
fn validate_bundle(file: &Path) -> Outcome {
    let text = std::fs::read(file)
        .map_err(|e| Failure::new(Exit::Usage, format!("cannot read {}: {e}", file.display())))?;
    let wire: BundleWire = serde_json::from_slice(&text).map_err(|e| {
        Failure::new(
            Exit::Usage,
            format!("{} is not a bundle: {e}", file.display()),
        )
    })?;
    let bundle = Bundle::try_from(&wire)
        .map_err(|e| Failure::new(Exit::Invalid, format!("{}: {e}", file.display())))?;
    Ok(format!(
        "{}: bundle version {} is valid: {} policies, {} entities, {}",
        file.display(),
        bundle.version,
        bundle.policies.len(),
        bundle.entities.iter().count(),
        if bundle.schema.is_some() {
            "validated against its schema"
        } else {
            "no schema"
        }
    ))
}
