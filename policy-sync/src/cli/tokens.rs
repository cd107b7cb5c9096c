//! `token` (API tokens) and `dev-token` (a development issuer's tokens, for demos and tests).

use policy_sync::dev_token;
use policy_sync::store::{self, Role};

use super::args::{DevTokenArgs, RoleArg, TokenCommand};
use super::common::pool;
use super::failure::{Exit, Failure, Outcome};

/// `token create` and `token revoke`.
pub(crate) async fn run(url: Option<&String>, command: TokenCommand) -> Outcome {
    let pool = pool(url)?;
    match command {
        TokenCommand::Create { name, role } => {
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Filter => Role::Filter,
            };
            store::create_token(&pool, &name, role)
                .await
                .map_err(Failure::from)
        }
        TokenCommand::Revoke { name } => {
            store::revoke_token(&pool, &name).await?;
            Ok(format!("token {name} revoked"))
        }
    }
}

/// `dev-token`: mints a token from the development issuer.
pub(crate) async fn dev_token(url: Option<&String>, args: DevTokenArgs) -> Outcome {
    let pool = pool(url)?;
    let ttl = args
        .ttl
        .parse::<portcullis_core::duration::ConfigDuration>()
        .map_err(|e| Failure::new(Exit::Usage, format!("--ttl: {e}")))?
        .0;
    let mut extra = serde_json::Map::new();
    for c in &args.claims {
        let (k, v) = c.split_once('=').ok_or_else(|| {
            Failure::new(Exit::Usage, format!("--claim {c:?}: expected name=value"))
        })?;
        let value =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
        extra.insert(k.to_owned(), value);
    }
    eprintln!("policy-sync: dev-token: a development token, for demos and tests only");
    dev_token::mint(
        &pool,
        &dev_token::DevTokenRequest {
            issuer: args.issuer,
            key_file: args.key_file,
            sub: args.sub,
            groups: args.groups,
            aud: args.aud,
            ttl,
            extra,
        },
    )
    .await
    .map_err(Failure::from)
}
