//! The command line's shape: [`Cli`], its [`Command`]s, and each group's subcommands and
//! arguments (clap derive). What the commands do is in the sibling modules.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use policy_sync::dev_token;

#[derive(Parser)]
#[command(
    name = "policy-sync",
    version,
    about = "Portcullis policy-sync: Postgres → validated, signed bundles for filters"
)]
pub(crate) struct Cli {
    /// Postgres URL (`postgres://user@host:port/db`).
    #[arg(
        long,
        env = "PORTCULLIS_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub(crate) database_url: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) struct KeyArgs {
    /// The bundle signing key file (`policy-sync keygen`).
    #[arg(long, env = "PORTCULLIS_SIGNING_KEY_FILE")]
    pub(crate) signing_key: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8181")]
    pub(crate) listen: std::net::SocketAddr,
    /// Also serve `/healthz`, `/readyz` and `/metrics` (only those) on this address: a port
    /// for Prometheus and probes apart from the API's.
    #[arg(long, env = "PORTCULLIS_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// A read replica for bundle reads.
    #[arg(long, env = "PORTCULLIS_REPLICA_URL", hide_env_values = true)]
    pub(crate) replica_url: Option<String>,
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub(crate) pool_size: u16,
    /// Milliseconds a request waits for a free database connection before it is answered 503
    /// with Retry-After.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub(crate) pool_wait_ms: u64,
    /// Milliseconds one SQL statement may run before Postgres cancels it (the request gets 503).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub(crate) statement_timeout_ms: u64,
    /// Most long-polls waiting at once; past it, 503 with Retry-After.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) max_waiters: u64,
    /// Most long-polls of one token waiting at once; past it, 503 with Retry-After.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) max_waiters_per_token: u64,
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// Longest long-poll wait, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) max_wait: u64,
    /// Days of decision logs kept.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(i32).range(1..=3650))]
    pub(crate) decision_retention_days: i32,
    /// Seconds between on-demand key refreshes of one issuer.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) refresh_interval: u64,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `policy_sync=debug`.
    #[arg(long, env = "PORTCULLIS_LOG", default_value = "info")]
    pub(crate) log: String,
    /// Export traces over OTLP/HTTP (protobuf, plain HTTP) to this collector (base URL, e.g.
    /// `http://otel-collector:4318`). Off by default; `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` also turn it on, and the SDK's `OTEL_BSP_*`
    /// variables tune the batching.
    #[arg(long)]
    pub(crate) otlp_endpoint: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum TenantCommand {
    List,
    Add { id: String },
    Rm { id: String },
}

#[derive(Args)]
pub(crate) struct TenantArg {
    /// The tenant (policy set).
    #[arg(long, default_value = "default")]
    pub(crate) tenant: String,
}

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
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
pub(crate) enum SchemaCommand {
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
pub(crate) enum EntityCommand {
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
pub(crate) enum IssuerCommand {
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
pub(crate) enum KeyCommand {
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
pub(crate) enum BundleCommand {
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
pub(crate) enum RoleArg {
    Admin,
    Filter,
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
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
pub(crate) struct DevTokenArgs {
    #[arg(long, default_value = "alice")]
    pub(crate) sub: String,
    /// Groups claim (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) groups: Vec<String>,
    #[arg(long, default_value = "portcullis-demo")]
    pub(crate) aud: String,
    /// Lifetime, e.g. `1h`, `15m`, `30s`.
    #[arg(long, default_value = "1h")]
    pub(crate) ttl: String,
    #[arg(long, default_value = dev_token::DEV_ISSUER)]
    pub(crate) issuer: String,
    /// The dev issuer's private key (created on first use).
    #[arg(long, default_value = ".portcullis-dev-issuer.key")]
    pub(crate) key_file: PathBuf,
    /// Extra claims, `name=value` (value parsed as JSON when it parses, else a string).
    #[arg(long = "claim")]
    pub(crate) claims: Vec<String>,
}
