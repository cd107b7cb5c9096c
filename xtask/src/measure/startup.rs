//! The start-up and memory phase of `cargo xtask measure`: for Envoy without a filter, with
//! the no-op wasm module (the floor V8 and the proxy-wasm lifecycle set), with the Cedar-only
//! module (`harness/cedar-floor`: the floor Cedar's parser and evaluator set) and with Portcullis
//! (the demo bundle, then generated bundles of 1,000 and 10,000 policies), at 1, 2, 4 and 8
//! workers: the time from starting Envoy to its first answer, its RSS once every variant has
//! answered a few hundred requests on fresh connections (so that every worker has run), and
//! what the filter itself logged per VM (linear memory and time to configure).

use std::path::Path;
use std::time::Duration;

use harness::devkeys::DevIssuer;
use harness::envoy::{self, Envoy, Ports};
use harness::{demo, http};

use crate::Result;

/// What the phase measures.
#[derive(Debug, Clone)]
pub struct Options {
    /// Envoy worker counts.
    pub workers: Vec<u32>,
    /// Generated bundle sizes (policies) measured beside the demo bundle.
    pub sizes: Vec<usize>,
    /// Envoy starts per cell; the medians are shown.
    pub rounds: u32,
    /// Requests after the first answer, each on a new connection, before RSS is read.
    pub requests: u32,
}

/// The path every request asks for (bob may read it under the demo policies).
const PATH: &str = "/api/hello";
/// What the Cedar-only plugin decides: reads are allowed, so the measured GETs reach the
/// upstream, and anything else is denied (one DELETE checks that it decides).
const FLOOR_POLICY: &str = r#"permit(principal, action == Action::"GET", resource);"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    NoFilter,
    NoopWasm,
    /// The Cedar-only plugin deciding [`FLOOR_POLICY`].
    CedarWasm,
    /// Portcullis with the demo bundle (`None`) or the demo policies padded to this many.
    Portcullis(Option<usize>),
    /// The same with the native module (one snapshot per process, not one per worker).
    Native(Option<usize>),
}

impl Variant {
    fn name(self) -> String {
        match self {
            Self::NoFilter => "envoy, no filter".to_owned(),
            Self::NoopWasm => "envoy + no-op wasm".to_owned(),
            Self::CedarWasm => "envoy + Cedar-only wasm".to_owned(),
            Self::Portcullis(None) => "portcullis, demo bundle".to_owned(),
            Self::Portcullis(Some(n)) => format!("portcullis, {n} policies"),
            Self::Native(None) => "native, demo bundle".to_owned(),
            Self::Native(Some(n)) => format!("native, {n} policies"),
        }
    }
}

/// One Envoy start, measured.
#[derive(Debug, Clone, Copy)]
struct Sample {
    first_answer: Duration,
    rss_kib: u64,
    /// The filter's own report: the largest linear memory of its VMs (KiB), the longest
    /// configuration (ms), and how many VMs reported.
    filter: Option<(u64, u64, usize)>,
}

/// Runs the phase and prints its table.
pub fn run(opts: &Options, modules: &super::variant::Modules<'_>, floor: &Path) -> Result {
    let issuer = DevIssuer::generate().map_err(|e| e.to_string())?;
    let auth = format!("Bearer {}", issuer.token("bob", &["staff"]));
    let mut variants = vec![
        Variant::NoFilter,
        Variant::NoopWasm,
        Variant::CedarWasm,
        Variant::Portcullis(None),
    ];
    variants.extend(opts.sizes.iter().map(|&n| Variant::Portcullis(Some(n))));
    variants.push(Variant::Native(None));
    variants.extend(opts.sizes.iter().map(|&n| Variant::Native(Some(n))));
    let mut table = Vec::new();
    for &variant in &variants {
        // The plugin configuration (and a generated bundle's text) is built once per variant,
        // not per start.
        let plugin = match variant {
            Variant::NoFilter => None,
            Variant::NoopWasm => Some(serde_json::Value::from("noop")),
            Variant::CedarWasm => Some(serde_json::Value::from(FLOOR_POLICY)),
            Variant::Portcullis(None) | Variant::Native(None) => Some(demo::plugin_config(&issuer)),
            Variant::Portcullis(Some(n)) | Variant::Native(Some(n)) => {
                Some(demo::padded_plugin_config(&issuer, n))
            }
        };
        let config_of = |ports: Ports| -> Result<String> {
            match (&plugin, variant) {
                (None, _) => envoy::baseline_config(ports),
                (Some(plugin), Variant::NoopWasm) => envoy::config(ports, modules.noop, plugin),
                (Some(plugin), Variant::CedarWasm) => envoy::config(ports, floor, plugin),
                (Some(plugin), Variant::Native(_)) => {
                    envoy::native_config(ports, modules.native, plugin)
                }
                (Some(plugin), _) => envoy::config(ports, modules.wasm, plugin),
            }
            .map_err(|e| e.to_string())
        };
        let mut row = Vec::new();
        for &workers in &opts.workers {
            let mut samples = Vec::new();
            for _ in 0..opts.rounds.max(1) {
                samples.push(sample(variant, workers, &config_of, &auth, opts.requests)?);
            }
            row.push(median_sample(samples));
        }
        table.push((variant, row));
    }
    print_table(&table, opts);
    Ok(())
}

fn sample(
    variant: Variant,
    workers: u32,
    config_of: &dyn Fn(Ports) -> Result<String>,
    auth: &str,
    requests: u32,
) -> Result<Sample> {
    let ports = Ports::free().map_err(|e| e.to_string())?;
    let mut proxy = Envoy::start(&config_of(ports)?, ports, workers).map_err(|e| e.to_string())?;
    let first_answer = proxy
        .wait_ready(Duration::from_secs(180))
        .map_err(|e| e.to_string())?;
    let url = proxy.url(PATH);
    for i in 0..requests {
        // A new agent is a new connection: the answers come from every worker.
        let resp = http::agent(Duration::from_secs(30))
            .get(&url)
            .header("authorization", auth)
            .call()
            .map_err(|e| format!("{}, {workers} workers, request {i}: {e}", variant.name()))?;
        // A broken setup must not look light: every answer is the upstream's 200.
        if resp.status().as_u16() != 200 {
            return Err(format!(
                "{}, {workers} workers, request {i}: status {} (expected 200)",
                variant.name(),
                resp.status()
            ));
        }
        let _ = http::text(resp);
    }
    if variant == Variant::CedarWasm {
        // A module that let everything through would price nothing: it must deny too.
        let status = http::agent(Duration::from_secs(30))
            .delete(&url)
            .call()
            .map_err(|e| format!("{}, {workers} workers, DELETE: {e}", variant.name()))?
            .status()
            .as_u16();
        if status != 403 {
            return Err(format!(
                "{}, {workers} workers: DELETE answered {status}, expected Cedar's 403",
                variant.name()
            ));
        }
    }
    let rss_kib = proxy
        .rss_kib()
        .ok_or("cannot read Envoy's RSS from /proc")?;
    let filter = match variant {
        Variant::Portcullis(_) => Some(filter_report(&proxy.log()).ok_or_else(|| {
            format!(
                "{}: the filter logged no configuration:\n{}",
                variant.name(),
                proxy.log()
            )
        })?),
        _ => None,
    };
    if !proxy.is_running() {
        return Err(format!(
            "{}: Envoy exited:\n{}",
            variant.name(),
            proxy.log()
        ));
    }
    Ok(Sample {
        first_answer,
        rss_kib,
        filter,
    })
}

/// The largest linear memory (KiB) and configuration time (ms) the filter's VMs logged
/// ("... linear memory N KiB, configured in M ms"), and how many VMs logged them.
fn filter_report(log: &str) -> Option<(u64, u64, usize)> {
    let number_before = |line: &str, unit: &str| -> Option<u64> {
        let (head, _) = line.split_once(unit)?;
        head.rsplit(' ').next()?.parse().ok()
    };
    let mut found = None;
    for line in log.lines().filter(|l| l.contains("linear memory")) {
        let kib = number_before(line, " KiB")?;
        let ms = number_before(line, " ms")?;
        let (k, m, n) = found.unwrap_or((0, 0, 0));
        found = Some((k.max(kib), m.max(ms), n + 1));
    }
    found
}

fn median_sample(mut samples: Vec<Sample>) -> Sample {
    samples.sort_by_key(|s| s.first_answer);
    let first_answer = samples.get(samples.len() / 2).map(|s| s.first_answer);
    let mut rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
    rss.sort_unstable();
    Sample {
        first_answer: first_answer.unwrap_or_default(),
        rss_kib: rss.get(rss.len() / 2).copied().unwrap_or(0),
        filter: samples.iter().filter_map(|s| s.filter).max_by_key(|f| f.0),
    }
}

fn print_table(table: &[(Variant, Vec<Sample>)], opts: &Options) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "\nstart-up and memory: median of {} start(s) per cell; RSS after {} requests on new connections",
        opts.rounds.max(1),
        opts.requests
    );
    print!("{:<28}", "first answer / RSS (MiB)");
    for w in &opts.workers {
        print!(" {:>18}", format!("{w} worker(s)"));
    }
    println!();
    for (variant, row) in table {
        print!("{:<28}", variant.name());
        for s in row {
            print!(
                " {:>18}",
                format!(
                    "{:.2} s / {:.0}",
                    s.first_answer.as_secs_f64(),
                    mib(s.rss_kib)
                )
            );
        }
        println!();
    }
    let baseline = table
        .first()
        .map(|(_, row)| row.clone())
        .unwrap_or_default();
    println!(
        "\nadded over no filter (MiB), and per extra worker between the first and last column"
    );
    for (variant, row) in table.iter().skip(1) {
        print!("{:<28}", variant.name());
        for (s, b) in row.iter().zip(&baseline) {
            print!(" {:>18.1}", mib(s.rss_kib) - mib(b.rss_kib));
        }
        if let (Some(first), Some(last), Some(w1), Some(wn)) = (
            row.first(),
            row.last(),
            opts.workers.first(),
            opts.workers.last(),
        ) && wn > w1
        {
            let extra = (mib(last.rss_kib) - mib(first.rss_kib)) / f64::from(wn - w1);
            print!("   {extra:.1} per worker");
        }
        println!();
    }
    println!("\nthe filter's own report (largest VM linear memory, slowest configuration, VMs)");
    for (variant, row) in table {
        if !matches!(variant, Variant::Portcullis(_)) {
            continue;
        }
        print!("{:<28}", variant.name());
        for s in row {
            match s.filter {
                Some((kib, ms, vms)) => {
                    print!(" {:>18}", format!("{:.1} MiB {ms} ms x{vms}", mib(kib)));
                }
                None => print!(" {:>18}", "-"),
            }
        }
        println!();
    }
}
