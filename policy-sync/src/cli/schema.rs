//! `schema`: storing, printing and removing a tenant's Cedar schema.

use policy_sync::store;

use super::args::SchemaCommand;
use super::common::{pool, read};
use super::failure::{Exit, Failure, Outcome};

pub(crate) async fn run(url: Option<&String>, command: SchemaCommand) -> Outcome {
    let pool = pool(url)?;
    match command {
        SchemaCommand::Put { file, tenant } => {
            let text = read(&file)?;
            store::put_schema(&pool, &tenant.tenant, Some(&text)).await?;
            Ok(format!("schema of tenant {} stored", tenant.tenant))
        }
        SchemaCommand::Get { tenant } => store::get_schema(&pool, &tenant.tenant)
            .await?
            .ok_or_else(|| {
                Failure::new(
                    Exit::NotFound,
                    format!("tenant {} has no schema", tenant.tenant),
                )
            }),
        SchemaCommand::Rm { tenant } => {
            store::put_schema(&pool, &tenant.tenant, None).await?;
            Ok(format!("schema of tenant {} removed", tenant.tenant))
        }
    }
}
