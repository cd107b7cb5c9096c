//! The command line: [`args`] defines it, one module per command group carries it out, and
//! [`run`] sends each command to its module. [`failure`] and [`common`] are what the command
//! modules share; they never use one another.

pub(crate) mod args;
mod bundles;
mod common;
mod entities;
pub(crate) mod failure;
mod issuers;
mod keys;
mod policies;
mod schema;
mod serve;
mod setup;
mod tenants;
mod tokens;
mod versions;

use args::{Cli, Command};
use failure::Outcome;

/// Carries out the command; its output on success.
pub(crate) async fn run(cli: Cli) -> Outcome {
    let url = cli.database_url.as_ref();
    match cli.command {
        Command::Serve(args) => serve::run(url, args).await,
        Command::Migrate => setup::migrate(url).await,
        Command::Keygen { out } => setup::keygen(&out),
        Command::Tenant { command } => tenants::run(url, command).await,
        Command::Policy { command } => policies::run(url, command).await,
        Command::Schema { command } => schema::run(url, command).await,
        Command::Entity { command } => entities::run(url, command).await,
        Command::Issuer { command } => issuers::run(url, command).await,
        Command::Key { command } => keys::run(url, command).await,
        Command::Bundle { command } => bundles::run(url, command).await,
        Command::Versions { limit } => versions::list(url, limit).await,
        Command::Rollback { to, key } => versions::rollback(url, to, &key).await,
        Command::Token { command } => tokens::run(url, command).await,
        Command::DevToken(args) => tokens::dev_token(url, args).await,
    }
}
