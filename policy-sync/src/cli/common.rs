//! What the commands share: reading input files, the database pool and the signing key.

use std::path::Path;

use policy_sync::db;
use policy_sync::signing::Signer;

use super::args::KeyArgs;
use super::failure::{Exit, Failure};

/// The text of `path`.
pub(crate) fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::new(Exit::Usage, format!("cannot read {}: {e}", path.display())))
}

/// The JSON in `path`.
pub(crate) fn json_file(path: &Path) -> Result<serde_json::Value, Failure> {
    serde_json::from_str(&read(path)?)
        .map_err(|e| Failure::new(Exit::Usage, format!("{} is not JSON: {e}", path.display())))
}

/// The bundle signing key: `PORTCULLIS_SIGNING_KEY` (the key's text), else the key file.
pub(crate) fn signer(key: &KeyArgs) -> Result<Signer, Failure> {
    if let Ok(text) = std::env::var("PORTCULLIS_SIGNING_KEY") {
        return Signer::from_text(&text)
            .map_err(|e| Failure::new(Exit::Usage, format!("PORTCULLIS_SIGNING_KEY: {e}")));
    }
    let path = key.signing_key.as_ref().ok_or_else(|| {
        Failure::new(
            Exit::Usage,
            "no signing key: give --signing-key FILE (from `policy-sync keygen`) or set PORTCULLIS_SIGNING_KEY",
        )
    })?;
    Signer::from_file(path).map_err(|e| Failure::new(Exit::Usage, e.to_string()))
}

/// The database URL given (`--database-url` or `PORTCULLIS_DATABASE_URL`).
pub(crate) fn database_url(cli_url: Option<&String>) -> Result<&String, Failure> {
    cli_url.ok_or_else(|| {
        Failure::new(
            Exit::Usage,
            "no database: give --database-url or set PORTCULLIS_DATABASE_URL",
        )
    })
}

/// A small pool on the database given, for one command.
pub(crate) fn pool(cli_url: Option<&String>) -> Result<deadpool_postgres::Pool, Failure> {
    Ok(db::pool(database_url(cli_url)?, 4)?)
}
