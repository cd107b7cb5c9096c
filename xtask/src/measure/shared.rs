//! The shared-CPU rounds of `cargo xtask measure`: every variant under load at the same time,
//! every Envoy on the same CPU (one wrk per Envoy, all on the other CPU). The kernel shares the
//! CPU between the Envoys, so each variant's CPU time per answer is measured over the same
//! seconds on the same CPU: a change in the machine's speed (other guests, frequency) slows all
//! of them alike instead of whichever variant happened to run then, which is what makes rounds
//! of the alternating phase differ. Answers per CPU second is the throughput one worker would
//! have on its own core.

use std::path::Path;
use std::process::Stdio;

use harness::envoy::Envoy;

use super::cpu::{self, Pinning};
use super::variant::Variant;
use super::wrk::{self, Wrk};
use super::{COUNTS_SETTLE, LOAD_PATH, Options, counters};
use crate::Result;

/// The rounds' figures, per variant in the order of `variants`.
pub struct Shared {
    pub variants: Vec<Variant>,
    /// Answers and Envoy CPU seconds of each round.
    pub rounds: Vec<Vec<(u64, f64)>>,
    /// req/s of each round.
    pub rates: Vec<Vec<f64>>,
    /// Answers over all rounds.
    pub totals: Vec<u64>,
}

/// Runs `opts.shared_rounds` rounds with every variant under load at once, the Envoys already
/// pinned to `pinning.envoy`.
pub fn run(
    proxies: &[(Variant, Envoy)],
    wrk: &Path,
    opts: &Options,
    auth: &str,
    pinning: &Pinning,
) -> Result<Shared> {
    println!(
        "\nshared CPU: all {} Envoys on CPU {} at once, one wrk each on CPU {}",
        proxies.len(),
        pinning.envoy,
        pinning.wrk
    );
    let generator = Wrk {
        path: wrk,
        pinning: Some(pinning),
        connections: opts.connections,
        auth,
    };
    let mut shared = Shared {
        variants: proxies.iter().map(|(v, _)| *v).collect(),
        rounds: vec![Vec::new(); proxies.len()],
        rates: vec![Vec::new(); proxies.len()],
        totals: vec![0u64; proxies.len()],
    };
    for round in 0..opts.shared_rounds {
        one_round(round, proxies, &generator, opts.seconds, &mut shared)?;
    }
    Ok(shared)
}

/// One round: a wrk per Envoy, all started together, each Envoy's CPU time and counters read
/// around them.
fn one_round(
    round: u32,
    proxies: &[(Variant, Envoy)],
    generator: &Wrk,
    seconds: u32,
    shared: &mut Shared,
) -> Result {
    std::thread::sleep(COUNTS_SETTLE);
    let before = proxies
        .iter()
        .map(|(v, p)| counters::read_now(p, *v))
        .collect::<Result<Vec<_>>>()?;
    let cpu_before: Vec<_> = proxies.iter().map(|(_, p)| p.cpu_time()).collect();
    let children = proxies
        .iter()
        .map(|(v, p)| {
            generator
                .command(seconds, &p.url(LOAD_PATH))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("{}: wrk: cannot start: {e}", v.name()))
        })
        .collect::<Result<Vec<_>>>()?;
    let outputs = children
        .into_iter()
        .map(|c| c.wait_with_output().map_err(|e| format!("wrk: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let cpu_after: Vec<_> = proxies.iter().map(|(_, p)| p.cpu_time()).collect();
    std::thread::sleep(COUNTS_SETTLE);
    let mut line = Vec::new();
    for (i, ((variant, proxy), out)) in proxies.iter().zip(&outputs).enumerate() {
        let result = wrk::result(out).map_err(|e| format!("{}: {e}", variant.name()))?;
        let after = counters::read_now(proxy, *variant)?;
        // The filter decided every answer (from its caches), as in the alternating phase.
        counters::counted_every_answer(
            &format!("{} (shared CPU)", variant.name()),
            before.get(i).map_or(&[][..], Vec::as_slice),
            &after,
            result.requests,
        )?;
        let (Some(Some(b)), Some(Some(a))) = (cpu_before.get(i), cpu_after.get(i)) else {
            return Err("Envoy CPU time unavailable (/proc/<pid>/task/*/schedstat)".into());
        };
        let cpu = a.saturating_sub(*b).as_secs_f64();
        line.push(format!(
            "{} {:.0} req/s, {:.1} µs CPU per answer",
            variant.name(),
            result.per_second,
            cpu::us_per_answer(cpu, result.requests)
        ));
        if let (Some(r), Some(q), Some(t)) = (
            shared.rounds.get_mut(i),
            shared.rates.get_mut(i),
            shared.totals.get_mut(i),
        ) {
            r.push((result.requests, cpu));
            q.push(result.per_second);
            *t += result.requests;
        }
    }
    println!("shared round {}: {}", round + 1, line.join("; "));
    Ok(())
}
