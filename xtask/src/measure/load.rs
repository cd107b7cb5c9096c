//! The load phase of `cargo xtask measure`: every Envoy pinned to one CPU and wrk to another,
//! a warm-up each, then measured wrk rounds alternating between the variants.

use std::path::Path;
use std::time::Instant;

use harness::envoy::Envoy;

use super::cpu::{self, Pinning};
use super::variant::Variant;
use super::wrk::{self, Wrk, WrkResult};
use super::{LOAD_PATH, Options, WARMUP_SECONDS, counters};
use crate::Result;

/// One variant's measured wrk runs.
pub struct Load {
    pub variant: Variant,
    pub runs: Vec<WrkResult>,
    /// Envoy's CPU time per answer in each run (µs), and the share of the run's wall time
    /// Envoy was on a CPU.
    pub cpu: Vec<(f64, f64)>,
    pub rss_after_kib: u64,
    pub counters: Vec<(&'static str, u64)>,
}

/// Pins the Envoys, warms each up, then runs wrk `opts.rounds` times against each, alternating
/// between the variants (each round starts with another one) so that drifts in the machine's
/// speed spread over all of them.
pub fn run(
    proxies: &[(Variant, Envoy)],
    wrk: &Path,
    opts: &Options,
    auth: &str,
) -> Result<Vec<Load>> {
    let pinning = pin(proxies, wrk)?;
    let generator = Wrk {
        path: wrk,
        pinning: pinning.as_ref(),
        connections: opts.connections,
        auth,
    };
    let mut loads = Vec::new();
    for (variant, proxy) in proxies {
        let warm = generator
            .run(WARMUP_SECONDS, &proxy.url(LOAD_PATH))
            .map_err(|e| format!("{} (warm-up): {e}", variant.name()))?;
        println!(
            "warm-up {WARMUP_SECONDS} s, {}: {:.0} req/s",
            variant.name(),
            warm.per_second
        );
        loads.push(Load {
            variant: *variant,
            runs: Vec::new(),
            cpu: Vec::new(),
            rss_after_kib: 0,
            counters: variant.counters().iter().map(|n| (*n, 0)).collect(),
        });
    }
    let n = proxies.len();
    for round in 0..opts.rounds {
        for k in 0..n {
            let i = (k + round as usize) % n;
            let (Some((_, proxy)), Some(load)) = (proxies.get(i), loads.get_mut(i)) else {
                continue;
            };
            measured_run(round, proxy, load, &generator, opts.seconds)?;
        }
    }
    for ((_, proxy), load) in proxies.iter().zip(&mut loads) {
        load.rss_after_kib = proxy.rss_kib().unwrap_or(0);
    }
    Ok(loads)
}

/// Prints the load generator and pins every Envoy to the Envoy CPU, if `taskset` works here.
fn pin(proxies: &[(Variant, Envoy)], wrk: &Path) -> Result<Option<Pinning>> {
    let pinning = cpu::pinning();
    println!(
        "\nload generator: {} ({})",
        wrk.display(),
        wrk::version(wrk)
    );
    match &pinning {
        Some(p) => {
            for (_, proxy) in proxies {
                p.pin(proxy)?;
            }
            println!(
                "pinning (taskset): every Envoy (all threads) to CPU {}, wrk to CPU {}",
                p.envoy, p.wrk
            );
        }
        None => println!(
            "pinning: none (taskset unusable or fewer than two CPUs): Envoy and wrk share the CPUs"
        ),
    }
    Ok(pinning)
}

/// One measured wrk run against one variant, added to its `load`.
fn measured_run(round: u32, proxy: &Envoy, load: &mut Load, wrk: &Wrk, seconds: u32) -> Result {
    let variant = load.variant;
    let before = counters::read_settled(proxy, variant)?;
    let (cpu_before, started) = (proxy.cpu_time(), Instant::now());
    let result = wrk
        .run(seconds, &proxy.url(LOAD_PATH))
        .map_err(|e| format!("{}: {e}", variant.name()))?;
    let (cpu_after, wall) = (proxy.cpu_time(), started.elapsed());
    let after = counters::read_settled(proxy, variant)?;
    // The filter decided every answer, from its token cache.
    let grew = counters::counted_every_answer(variant.name(), &before, &after, result.requests)?;
    for ((_, total), grew) in load.counters.iter_mut().zip(grew) {
        *total += grew;
    }
    let cpu = cpu::per_answer(cpu_before, cpu_after, wall, result.requests);
    println!(
        "round {}, {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} answers, all 2xx{}",
        round + 1,
        variant.name(),
        result.per_second,
        result.p50_ms,
        result.p99_ms,
        result.requests,
        cpu.map_or_else(String::new, |(us, busy)| format!(
            "; Envoy CPU {us:.1} µs per answer, busy {:.0}%",
            busy * 100.0
        ))
    );
    load.cpu.extend(cpu);
    load.runs.push(result);
    Ok(())
}
