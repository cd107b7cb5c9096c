//! `policy-sync`: the service and CLI behind the filters.
//!
//! This first cut has the offline part of the CLI: checking a bundle file exactly as the
//! filter will when it loads it (same crate, same validation).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis_core::{Bundle, BundleWire};

#[derive(Parser)]
#[command(name = "policy-sync", version, about = "Portcullis policy-sync")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bundle operations.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Check a bundle file (JSON: version, policies, schema, entities) as the filter would.
    Validate {
        /// The bundle file.
        file: PathBuf,
    },
}

fn validate(file: &PathBuf) -> Result<String, String> {
    let text = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let wire: BundleWire = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not a bundle: {e}", file.display()))?;
    let bundle = Bundle::try_from(&wire).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(format!(
        "{}: bundle version {} is valid: {} policies, {} entities, {}",
        file.display(),
        bundle.version,
        bundle.policies.policies().count(),
        bundle.entities.iter().count(),
        if bundle.schema.is_some() {
            "validated against its schema"
        } else {
            "no schema"
        }
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Bundle {
            command: BundleCommand::Validate { file },
        } => validate(file),
    };
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("policy-sync: error: {e}");
            ExitCode::FAILURE
        }
    }
}
