//! `key`: uploading, removing and listing issuers' signing keys.

use policy_sync::store;

use super::args::KeyCommand;
use super::common::{json_file, pool};
use super::failure::Outcome;

pub(crate) async fn run(url: Option<&String>, command: KeyCommand) -> Outcome {
    let pool = pool(url)?;
    match command {
        KeyCommand::Add { issuer, file } => {
            let kid = store::add_key(&pool, &issuer, &json_file(&file)?).await?;
            Ok(format!("key {kid} of issuer {issuer} stored"))
        }
        KeyCommand::Rm { issuer, kid } => {
            store::delete_key(&pool, &issuer, &kid).await?;
            Ok(format!("key {kid} of issuer {issuer} removed"))
        }
        KeyCommand::List { issuer } => {
            let all = store::list_keys(&pool, issuer.as_deref()).await?;
            Ok(all
                .iter()
                .map(|k| format!("{}\t{}\t{}\t{}", k.issuer, k.kid, k.origin, k.jwk))
                .collect::<Vec<_>>()
                .join("\n"))
        }
    }
}
