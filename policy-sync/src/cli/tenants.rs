//! `tenant`: listing, creating and deleting tenants (policy sets).

use policy_sync::store;

use super::args::TenantCommand;
use super::common::pool;
use super::failure::Outcome;

pub(crate) async fn run(url: Option<&String>, command: TenantCommand) -> Outcome {
    let pool = pool(url)?;
    match command {
        TenantCommand::List => Ok(store::list_tenants(&pool).await?.join("\n")),
        TenantCommand::Add { id } => Ok(if store::put_tenant(&pool, &id).await? {
            format!("tenant {id} created")
        } else {
            format!("tenant {id} exists already")
        }),
        TenantCommand::Rm { id } => {
            store::delete_tenant(&pool, &id).await?;
            Ok(format!("tenant {id} deleted"))
        }
    }
}
