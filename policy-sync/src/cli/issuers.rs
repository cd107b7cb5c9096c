//! `issuer`: adding, removing and listing token issuers.

use policy_sync::store::{self, IssuerSpec};

use super::args::IssuerCommand;
use super::common::pool;
use super::failure::{Exit, Failure, Outcome};

pub(crate) async fn run(url: Option<&String>, command: IssuerCommand) -> Outcome {
    let pool = pool(url)?;
    match command {
        IssuerCommand::Add {
            issuer,
            audiences,
            jwks_uri,
            discovery_url,
            min_refresh,
            max_refresh,
            max_staleness,
            settings,
        } => {
            let settings = match settings {
                Some(s) => serde_json::from_str(&s).map_err(|e| {
                    Failure::new(Exit::Usage, format!("--settings is not JSON: {e}"))
                })?,
                None => serde_json::json!({}),
            };
            let spec = IssuerSpec {
                issuer: issuer.clone(),
                audiences,
                jwks_uri,
                discovery_url,
                min_refresh_s: min_refresh,
                max_refresh_s: max_refresh,
                max_staleness_s: max_staleness,
                settings,
            };
            store::put_issuer(&pool, &spec).await?;
            Ok(format!("issuer {issuer} stored"))
        }
        IssuerCommand::Rm { issuer } => {
            store::delete_issuer(&pool, &issuer).await?;
            Ok(format!("issuer {issuer} removed"))
        }
        IssuerCommand::List => {
            let all = store::list_issuers(&pool).await?;
            Ok(all
                .iter()
                .map(|i| serde_json::to_string(i).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n"))
        }
    }
}
