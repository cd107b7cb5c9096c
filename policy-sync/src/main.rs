//! `policy-sync`: the service and its command line (in [`cli`]).
//!
//! Exit codes ([`cli::failure::Exit`]): 0 done; 1 failed (I/O, Postgres, ...); 2 bad usage or
//! bad input; 3 refused because the change or file is invalid (diagnostics on stderr); 4 not
//! found.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;
use policy_sync::telemetry::Telemetry;

use cli::args::{Cli, Command};
use cli::failure::Exit;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Outside the runtime: the trace exporter's HTTP client runs its own.
    let telemetry = match &cli.command {
        Command::Serve(args) => match Telemetry::init(&args.log, args.otlp_endpoint.as_deref()) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("policy-sync: error: {e}");
                return Exit::Usage.into();
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
            return Exit::Failed.into();
        }
    };
    let result = runtime.block_on(cli::run(cli));
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
            f.code.into()
        }
    }
}
