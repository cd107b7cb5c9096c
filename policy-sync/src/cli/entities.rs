//! `entity`: storing, removing and listing a tenant's static entities.

use policy_sync::store;

use super::args::EntityCommand;
use super::common::{json_file, pool};
use super::failure::Outcome;

pub(crate) async fn run(url: Option<&String>, command: EntityCommand) -> Outcome {
    let pool = pool(url)?;
    match command {
        EntityCommand::Put { file, tenant } => {
            let entities = match json_file(&file)? {
                serde_json::Value::Array(a) => a,
                one => vec![one],
            };
            let n = store::put_entities(&pool, &tenant.tenant, &entities).await?;
            Ok(format!("{n} entities stored in tenant {}", tenant.tenant))
        }
        EntityCommand::Rm { uid, tenant } => {
            store::delete_entity(&pool, &tenant.tenant, &uid).await?;
            Ok(format!("entity {uid} removed"))
        }
        EntityCommand::List { tenant } => {
            let all = store::list_entities(&pool, &tenant.tenant).await?;
            Ok(all
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"))
        }
    }
}
