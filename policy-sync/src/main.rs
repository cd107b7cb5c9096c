//! `policy-sync`: the service and its command line.
//!
//! Exit codes: 0 done; 1 failed (I/O, Postgres, ...); 2 bad usage or bad input; 3 refused
//! because the change or file is invalid (diagnostics on stderr); 4 not found.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use policy_sync::api::ApiSettings;
use policy_sync::diagnostics::Problem;
use policy_sync::jwks_fetch::FetchSettings;
use policy_sync::publish::{self, PublishError, Published};
use policy_sync::service::{self, ServeConfig};
use policy_sync::signing::Signer;
use policy_sync::store::{self, IssuerSpec, Role, StoreError};
use policy_sync::telemetry::Telemetry;
use policy_sync::{db, dev_token};
use portcullis_core::{Bundle, BundleWire};

#[derive(Parser)]
#[command(
    name = "policy-sync",
    version,
    about = "Portcullis policy-sync: Postgres → validated, signed bundles for filters"
)]
struct Cli {
    /// Postgres URL (`postgres://user@host:port/db`).
    #[arg(
        long,
        env = "PORTCULLIS_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: publish on every change and serve bundles, logs and the admin API.
    Serve(ServeArgs),
    /// Apply the embedded database migrations.
    Migrate,
    /// Generate a bundle signing key; prints the public key filters are configured with.
    Keygen {
        /// Where to write the private key (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Tenants (policy sets).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Cedar policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// A tenant's Cedar schema.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Static entities.
    Entity {
        #[command(subcommand)]
        command: EntityCommand,
    },
    /// Token issuers.
    Issuer {
        #[command(subcommand)]
        command: IssuerCommand,
    },
    /// Issuers' signing keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Bundles.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// List the published versions, newest first.
    Versions {
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Restore the policies, schemas and entities of version N, published as a new version.
    Rollback {
        #[arg(long)]
        to: i64,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// API tokens (stored hashed; shown once).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Mint a token from a development issuer (for demos and tests only): creates the dev
    /// issuer and registers its key on first use.
    DevToken(DevTokenArgs),
}

#[derive(Args)]
struct KeyArgs {
    /// The bundle signing key file (`policy-sync keygen`).
    #[arg(long, env = "PORTCULLIS_SIGNING_KEY_FILE")]
    signing_key: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8181")]
    listen: std::net::SocketAddr,
    /// Also serve `/healthz`, `/readyz` and `/metrics` (only those) on this address: a port
    /// for Prometheus and probes apart from the API's.
    #[arg(long, env = "PORTCULLIS_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// A read replica for bundle reads.
    #[arg(long, env = "PORTCULLIS_REPLICA_URL", hide_env_values = true)]
    replica_url: Option<String>,
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pool_size: u16,
    /// Milliseconds a request waits for a free database connection before it is answered 503
    /// with Retry-After.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pool_wait_ms: u64,
    /// Milliseconds one SQL statement may run before Postgres cancels it (the request gets 503).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    statement_timeout_ms: u64,
    /// Most long-polls waiting at once; past it, 503 with Retry-After.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_waiters: u64,
    /// Most long-polls of one token waiting at once; past it, 503 with Retry-After.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_waiters_per_token: u64,
    #[command(flatten)]
    key: KeyArgs,
    /// Longest long-poll wait, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    max_wait: u64,
    /// Days of decision logs kept.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(i32).range(1..=3650))]
    decision_retention_days: i32,
    /// Seconds between on-demand key refreshes of one issuer.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    refresh_interval: u64,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `policy_sync=debug`.
    #[arg(long, env = "PORTCULLIS_LOG", default_value = "info")]
    log: String,
    /// Export traces over OTLP/HTTP (protobuf, plain HTTP) to this collector (base URL, e.g.
    /// `http://otel-collector:4318`). Off by default; `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` also turn it on, and the SDK's `OTEL_BSP_*`
    /// variables tune the batching.
    #[arg(long)]
    otlp_endpoint: Option<String>,
}

#[derive(Subcommand)]
enum TenantCommand {
    List,
    Add { id: String },
    Rm { id: String },
}

#[derive(Args)]
struct TenantArg {
    /// The tenant (policy set).
    #[arg(long, default_value = "default")]
    tenant: String,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Store the policies in FILE: one policy with `--id`, or any number each carrying an
    /// `@id("...")` annotation. All or nothing: an invalid one refuses the file.
    Put {
        file: PathBuf,
        #[arg(long)]
        id: Option<String>,
        /// Store them disabled (kept, not published).
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        tenant: TenantArg,
    },
    Get {
        id: String,
        #[command(flatten)]
        tenant: TenantArg,
    },
    List {
        #[command(flatten)]
        tenant: TenantArg,
    },
    Rm {
        id: String,
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Check a policy file (offline), optionally against a schema file or a tenant's schema.
    Validate {
        file: PathBuf,
        #[arg(long)]
        schema: Option<PathBuf>,
        /// Validate against this tenant's stored schema (needs the database).
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Set a tenant's schema (Cedar schema syntax); its policies must validate against it.
    Put {
        file: PathBuf,
        #[command(flatten)]
        tenant: TenantArg,
    },
    Get {
        #[command(flatten)]
        tenant: TenantArg,
    },
    Rm {
        #[command(flatten)]
        tenant: TenantArg,
    },
}

#[derive(Subcommand)]
enum EntityCommand {
    /// Store entities from FILE (Cedar entity JSON: one object or an array).
    Put {
        file: PathBuf,
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Remove an entity by uid, e.g. 'Group::"admins"'.
    Rm {
        uid: String,
        #[command(flatten)]
        tenant: TenantArg,
    },
    List {
        #[command(flatten)]
        tenant: TenantArg,
    },
}

#[derive(Subcommand)]
enum IssuerCommand {
    /// Add or replace an issuer.
    Add {
        issuer: String,
        #[arg(long = "audience")]
        audiences: Vec<String>,
        #[arg(long, conflicts_with = "discovery_url")]
        jwks_uri: Option<String>,
        #[arg(long)]
        discovery_url: Option<String>,
        #[arg(long, default_value_t = 60)]
        min_refresh: i32,
        #[arg(long, default_value_t = 3600)]
        max_refresh: i32,
        #[arg(long, default_value_t = 86400)]
        max_staleness: i32,
        /// Token settings as a JSON object (`{"requiredClaims": ["email"]}`).
        #[arg(long)]
        settings: Option<String>,
    },
    Rm {
        issuer: String,
    },
    List,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Upload a key (a JWK with a kid, in FILE) for an issuer.
    Add {
        #[arg(long)]
        issuer: String,
        file: PathBuf,
    },
    Rm {
        #[arg(long)]
        issuer: String,
        kid: String,
    },
    List {
        #[arg(long)]
        issuer: Option<String>,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Check a bundle file (JSON: version, policies, schema, entities) as the filter would.
    Validate { file: PathBuf },
    /// Print a tenant's latest published document (checked against the signing key when
    /// one is given).
    Show {
        #[command(flatten)]
        tenant: TenantArg,
        /// Print the signed envelope instead of the document.
        #[arg(long)]
        signed: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Filter,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; it is printed once and stored only as a hash.
    Create {
        name: String,
        #[arg(long, value_enum, default_value = "admin")]
        role: RoleArg,
    },
    Revoke {
        name: String,
    },
}

#[derive(Args)]
struct DevTokenArgs {
    #[arg(long, default_value = "alice")]
    sub: String,
    /// Groups claim (comma-separated).
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    #[arg(long, default_value = "portcullis-demo")]
    aud: String,
    /// Lifetime, e.g. `1h`, `15m`, `30s`.
    #[arg(long, default_value = "1h")]
    ttl: String,
    #[arg(long, default_value = dev_token::DEV_ISSUER)]
    issuer: String,
    /// The dev issuer's private key (created on first use).
    #[arg(long, default_value = ".portcullis-dev-issuer.key")]
    key_file: PathBuf,
    /// Extra claims, `name=value` (value parsed as JSON when it parses, else a string).
    #[arg(long = "claim")]
    claims: Vec<String>,
}

/// A failed command: message and exit code.
struct Failure {
    code: u8,
    message: String,
    problems: Vec<Problem>,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            problems: vec![],
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(problems) => Self {
                code: 3,
                message: "refused: the change is invalid; nothing was changed".into(),
                problems,
            },
            StoreError::BadInput(m) => Self::new(2, m),
            StoreError::NotFound(m) => Self::new(4, format!("{m} not found")),
            StoreError::Db(e) => Self::new(1, e.to_string()),
        }
    }
}

impl From<db::DbError> for Failure {
    fn from(e: db::DbError) -> Self {
        Self::new(1, e.to_string())
    }
}

type Outcome = Result<String, Failure>;

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::new(2, format!("cannot read {}: {e}", path.display())))
}

fn json_file(path: &Path) -> Result<serde_json::Value, Failure> {
    serde_json::from_str(&read(path)?)
        .map_err(|e| Failure::new(2, format!("{} is not JSON: {e}", path.display())))
}

fn signer(key: &KeyArgs) -> Result<Signer, Failure> {
    if let Ok(text) = std::env::var("PORTCULLIS_SIGNING_KEY") {
        return Signer::from_text(&text)
            .map_err(|e| Failure::new(2, format!("PORTCULLIS_SIGNING_KEY: {e}")));
    }
    let path = key.signing_key.as_ref().ok_or_else(|| {
        Failure::new(
            2,
            "no signing key: give --signing-key FILE (from `policy-sync keygen`) or set PORTCULLIS_SIGNING_KEY",
        )
    })?;
    Signer::from_file(path).map_err(|e| Failure::new(2, e.to_string()))
}

fn pool(cli_url: Option<&String>) -> Result<deadpool_postgres::Pool, Failure> {
    let url = cli_url.ok_or_else(|| {
        Failure::new(
            2,
            "no database: give --database-url or set PORTCULLIS_DATABASE_URL",
        )
    })?;
    Ok(db::pool(url, 4)?)
}

/// A policy file: its name, its text and its policies; parse errors positioned in the file.
fn parse_policy_file(
    file: &Path,
) -> Result<(String, std::sync::Arc<str>, cedar_policy::PolicySet), Failure> {
    use std::str::FromStr as _;
    let text = read(file)?;
    let name = file.display().to_string();
    let source: std::sync::Arc<str> = std::sync::Arc::from(text.as_str());
    let set = cedar_policy::PolicySet::from_str(&text).map_err(|e| Failure {
        code: 3,
        message: format!("{name} does not parse"),
        problems: Problem::from_diagnostic(&name, &source, &e),
    })?;
    Ok((name, source, set))
}

/// Policies from a file: (id, text) pairs; ids from `--id` or `@id` annotations.
fn policies_from_file(file: &Path, id: Option<&str>) -> Result<Vec<(String, String)>, Failure> {
    let (name, _, set) = parse_policy_file(file)?;
    let policies: Vec<_> = set.policies().collect();
    if set.templates().next().is_some() {
        return Err(Failure::new(
            2,
            format!("{name}: templates are not supported"),
        ));
    }
    match (id, policies.as_slice()) {
        (_, []) => Err(Failure::new(2, format!("{name} holds no policy"))),
        (Some(id), [one]) => Ok(vec![(id.to_owned(), one.to_string())]),
        (Some(_), _) => Err(Failure::new(
            2,
            format!("{name} holds {} policies; --id names one (annotate each with @id instead)", policies.len()),
        )),
        (None, many) => many
            .iter()
            .map(|p| {
                portcullis_core::bundle::id_annotation(p)
                    .map(|a| (a.to_owned(), p.to_string()))
                    .ok_or_else(|| {
                        Failure::new(2, format!("{name}: a policy has no @id annotation (or give --id for a single policy)"))
                    })
            })
            .collect(),
    }
}

async fn run(cli: Cli) -> Outcome {
    let url = cli.database_url.as_ref();
    match cli.command {
        Command::Serve(args) => serve(url, args).await,
        Command::Migrate => {
            let applied = db::migrate(&pool(url)?).await?;
            Ok(if applied.is_empty() {
                "the database is up to date".into()
            } else {
                format!("applied migrations {applied:?}")
            })
        }
        Command::Keygen { out } => {
            let signer = Signer::generate();
            signer.write_new(&out).map_err(|e| {
                let code = if matches!(e, policy_sync::signing::KeyError::Exists(_)) {
                    2
                } else {
                    1
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
        Command::Tenant { command } => {
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
        Command::Policy { command } => policy(url, command).await,
        Command::Schema { command } => {
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
                        Failure::new(4, format!("tenant {} has no schema", tenant.tenant))
                    }),
                SchemaCommand::Rm { tenant } => {
                    store::put_schema(&pool, &tenant.tenant, None).await?;
                    Ok(format!("schema of tenant {} removed", tenant.tenant))
                }
            }
        }
        Command::Entity { command } => {
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
        Command::Issuer { command } => {
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
                        Some(s) => serde_json::from_str(&s)
                            .map_err(|e| Failure::new(2, format!("--settings is not JSON: {e}")))?,
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
        Command::Key { command } => {
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
        Command::Bundle { command } => match command {
            BundleCommand::Validate { file } => validate_bundle(&file),
            BundleCommand::Show { tenant, signed } => {
                let pool = pool(url)?;
                let c = pool.get().await.map_err(db::DbError::from)?;
                let (_, doc) = publish::latest(&c, &tenant.tenant).await?.ok_or_else(|| {
                    Failure::new(
                        4,
                        format!("no version of tenant {} is published", tenant.tenant),
                    )
                })?;
                if signed {
                    return serde_json::to_string_pretty(&doc)
                        .map_err(|e| Failure::new(1, e.to_string()));
                }
                let value: serde_json::Value = serde_json::from_str(&doc.payload)
                    .map_err(|e| Failure::new(1, e.to_string()))?;
                serde_json::to_string_pretty(&value).map_err(|e| Failure::new(1, e.to_string()))
            }
        },
        Command::Versions { limit } => {
            let pool = pool(url)?;
            let all = store::list_versions(&pool, limit).await?;
            Ok(all
                .iter()
                .map(|v| {
                    format!(
                        "{}\t{}\t{}\t{}",
                        v.version,
                        v.published_at,
                        v.tenants.join(","),
                        v.reason
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"))
        }
        Command::Rollback { to, key } => {
            let signer = signer(&key)?;
            let pool = pool(url)?;
            match publish::rollback(&pool, &signer, to).await {
                Ok(Published::New { version, .. }) => Ok(format!(
                    "rolled back to version {to}: published as version {version}"
                )),
                Ok(Published::Unchanged { version }) => Ok(format!(
                    "version {version} already has the content of version {to}; nothing published"
                )),
                Err(PublishError::NoSuchVersion(v)) => {
                    Err(Failure::new(4, format!("version {v} not found")))
                }
                Err(PublishError::Invalid(problems)) => Err(Failure {
                    code: 3,
                    message: "refused: the restored state does not validate".into(),
                    problems,
                }),
                Err(PublishError::Db(e)) => Err(e.into()),
            }
        }
        Command::Token { command } => {
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
        Command::DevToken(args) => {
            let pool = pool(url)?;
            let ttl = args
                .ttl
                .parse::<portcullis_core::duration::ConfigDuration>()
                .map_err(|e| Failure::new(2, format!("--ttl: {e}")))?
                .0;
            let mut extra = serde_json::Map::new();
            for c in &args.claims {
                let (k, v) = c.split_once('=').ok_or_else(|| {
                    Failure::new(2, format!("--claim {c:?}: expected name=value"))
                })?;
                let value = serde_json::from_str(v)
                    .unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
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
    }
}

async fn policy(url: Option<&String>, command: PolicyCommand) -> Outcome {
    match command {
        PolicyCommand::Validate {
            file,
            schema,
            tenant,
        } => {
            let schema = match (schema, &tenant) {
                (Some(path), _) => Some((path.display().to_string(), read(&path)?)),
                (None, Some(t)) => store::get_schema(&pool(url)?, t)
                    .await?
                    .map(|text| (format!("schema of tenant {t}"), text)),
                (None, None) => None,
            };
            validate_policy_file(
                &file,
                schema.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
            )
        }
        PolicyCommand::Put {
            file,
            id,
            disabled,
            tenant,
        } => {
            let rows: Vec<_> = policies_from_file(&file, id.as_deref())?
                .into_iter()
                .map(|(id, text)| policy_sync::source::PolicyRow {
                    id,
                    text,
                    enabled: !disabled,
                })
                .collect();
            let pool = pool(url)?;
            let changed = store::put_policies(&pool, &tenant.tenant, &rows).await?;
            let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            Ok(format!(
                "{} in tenant {}: {}",
                if changed { "stored" } else { "unchanged" },
                tenant.tenant,
                ids.join(", ")
            ))
        }
        PolicyCommand::Get { id, tenant } => {
            let p = store::get_policy(&pool(url)?, &tenant.tenant, &id).await?;
            Ok(format!(
                "{}{}",
                if p.enabled { "" } else { "// disabled\n" },
                p.text
            ))
        }
        PolicyCommand::List { tenant } => {
            let all = store::list_policies(&pool(url)?, &tenant.tenant).await?;
            Ok(all
                .iter()
                .map(|p| {
                    format!(
                        "{}\t{}",
                        p.id,
                        if p.enabled { "enabled" } else { "disabled" }
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"))
        }
        PolicyCommand::Rm { id, tenant } => {
            store::delete_policy(&pool(url)?, &tenant.tenant, &id).await?;
            Ok(format!("policy {id} removed from tenant {}", tenant.tenant))
        }
    }
}

/// Validates a policy file; problems are positioned in the file.
fn validate_policy_file(file: &Path, schema: Option<(&str, &str)>) -> Outcome {
    let (name, source, set) = parse_policy_file(file)?;
    // Policies are named by their `@id` annotations, as in bundles.
    let mut named = cedar_policy::PolicySet::new();
    for p in set.policies() {
        let p = match portcullis_core::bundle::id_annotation(p) {
            Some(id) => p.new_id(cedar_policy::PolicyId::new(id)),
            None => p.clone(),
        };
        let id = p.id().to_string();
        named
            .add(p)
            .map_err(|_| Failure::new(3, format!("{name}: two policies share the id {id:?}")))?;
    }
    let set = named;
    let count = set.policies().count();
    if let Some((schema_name, schema)) = schema {
        let schema_src: std::sync::Arc<str> = std::sync::Arc::from(schema);
        let (schema, _) =
            cedar_policy::Schema::from_cedarschema_str(schema).map_err(|e| Failure {
                code: 3,
                message: "the schema does not parse".into(),
                problems: Problem::from_diagnostic(schema_name, &schema_src, &e),
            })?;
        let result = cedar_policy::Validator::new(schema)
            .validate(&set, cedar_policy::ValidationMode::Strict);
        let problems: Vec<Problem> = result
            .validation_errors()
            .flat_map(|e| Problem::from_diagnostic(&name, &source, e))
            .collect();
        if !problems.is_empty() {
            return Err(Failure {
                code: 3,
                message: format!("{name} does not validate against the schema"),
                problems,
            });
        }
        return Ok(format!(
            "{name}: {count} policies parse and validate against the schema"
        ));
    }
    Ok(format!("{name}: {count} policies parse (no schema given)"))
}

fn validate_bundle(file: &Path) -> Outcome {
    let text = std::fs::read(file)
        .map_err(|e| Failure::new(2, format!("cannot read {}: {e}", file.display())))?;
    let wire: BundleWire = serde_json::from_slice(&text)
        .map_err(|e| Failure::new(2, format!("{} is not a bundle: {e}", file.display())))?;
    let bundle =
        Bundle::try_from(&wire).map_err(|e| Failure::new(3, format!("{}: {e}", file.display())))?;
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

async fn serve(url: Option<&String>, args: ServeArgs) -> Outcome {
    let database_url = url.cloned().ok_or_else(|| {
        Failure::new(
            2,
            "no database: give --database-url or set PORTCULLIS_DATABASE_URL",
        )
    })?;
    let config = ServeConfig {
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        database_url,
        replica_url: args.replica_url,
        pool: db::PoolSettings {
            size: usize::from(args.pool_size),
            wait: Duration::from_millis(args.pool_wait_ms),
            statement_timeout: Duration::from_millis(args.statement_timeout_ms),
        },
        signer: signer(&args.key)?,
        api: ApiSettings {
            max_wait: Duration::from_secs(args.max_wait),
            decision_retention_days: args.decision_retention_days,
            max_waiters: usize::try_from(args.max_waiters).unwrap_or(usize::MAX),
            max_waiters_per_token: usize::try_from(args.max_waiters_per_token)
                .unwrap_or(usize::MAX),
            ..ApiSettings::default()
        },
        fetch: FetchSettings {
            min_on_demand_interval: Duration::from_secs(args.refresh_interval),
            ..FetchSettings::default()
        },
    };
    let running = service::start(config)
        .await
        .map_err(|e| Failure::new(1, e.to_string()))?;
    println!("policy-sync listening on http://{}", running.addr);
    if let Some(at) = running.metrics_addr {
        println!("health and metrics on http://{at}");
    }
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| Failure::new(1, e.to_string()))?;
    running.abort();
    Ok("stopped".into())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Outside the runtime: the trace exporter's HTTP client runs its own.
    let telemetry = match &cli.command {
        Command::Serve(args) => match Telemetry::init(&args.log, args.otlp_endpoint.as_deref()) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("policy-sync: error: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("policy-sync: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    drop(runtime);
    if let Some(t) = telemetry {
        t.shutdown();
    }
    match result {
        Ok(msg) => {
            if !msg.is_empty() {
                println!("{msg}");
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("policy-sync: error: {}", f.message);
            for p in &f.problems {
                eprintln!("{:?}", p.report());
            }
            ExitCode::from(f.code)
        }
    }
}
