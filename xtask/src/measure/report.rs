//! The tables `cargo xtask measure` prints from what its phases measured, and the figures they
//! are computed with (medians, ratios to the no-filter baseline and between Portcullis and
//! jwt_authn+RBAC).

use super::load::Load;
use super::sequential::Row;
use super::shared::Shared;
use super::variant::Variant;
use super::wrk::WrkResult;
use super::{LOAD_PATH, Options, WARMUP_SECONDS, cpu};

/// The sequential phase: start-up, memory and req/s on one connection.
pub fn sequential(rows: &[Row], opts: &Options) {
    println!(
        "\n{:<24} {:>14} {:>14} {:>16} {:>14}",
        "variant", "first answer", "RSS ready", "RSS after seq.", "req/s (1 conn)"
    );
    for r in rows {
        println!(
            "{:<24} {:>12.0?} {:>11} MiB {:>13} MiB {:>14.0}",
            r.variant.name(),
            r.first_answer,
            r.rss_ready_kib / 1024,
            r.rss_after_kib / 1024,
            r.per_second
        );
    }
    println!(
        "({} sequential GET {LOAD_PATH} with an RS256 token, one keep-alive connection, one Envoy worker)",
        opts.requests
    );
}

/// The alternating load rounds: req/s and latency, then Envoy's CPU time per answer.
pub fn load(loads: &[Load], opts: &Options) {
    let rates = |v: Variant| -> Vec<f64> {
        loads
            .iter()
            .find(|l| l.variant == v)
            .map(|l| l.runs.iter().map(|r| r.per_second).collect())
            .unwrap_or_default()
    };
    let base = median(rates(Variant::NoFilter));
    println!(
        "\n{:<24} {:>10} {:>10} {:>10} {:>13} {:>12} {:>15}   req/s per round",
        "variant", "req/s", "p50", "p99", "vs no filter", "cost/req", "RSS after load"
    );
    for l in loads {
        let rate = median(l.runs.iter().map(|r| r.per_second).collect());
        let rounds: Vec<String> = l
            .runs
            .iter()
            .map(|r| format!("{:.0}", r.per_second))
            .collect();
        // What the filter adds per request on the one pinned worker.
        let cost = 1e6 / rate - 1e6 / base;
        println!(
            "{:<24} {:>10.0} {:>7.2} ms {:>7.2} ms {:>13.2} {:>9.1} µs {:>11} MiB   {}",
            l.variant.name(),
            rate,
            median(l.runs.iter().map(|r| r.p50_ms).collect()),
            median(l.runs.iter().map(|r| r.p99_ms).collect()),
            rate / base,
            cost,
            l.rss_after_kib / 1024,
            rounds.join(" ")
        );
    }
    print_ratio(
        "portcullis / jwt_authn+RBAC",
        &rates(Variant::Portcullis),
        &rates(Variant::JwtAuthnRbac),
    );
    print_ratio(
        "portcullis native / jwt_authn+RBAC",
        &rates(Variant::Native),
        &rates(Variant::JwtAuthnRbac),
    );
    print_target(
        "portcullis native / no filter",
        &rates(Variant::Native),
        &rates(Variant::NoFilter),
        0.95,
    );
    load_cpu(loads);
    let counters: Vec<String> = loads
        .iter()
        .flat_map(|l| l.counters.iter().map(|(n, g)| format!("{n} +{g}")))
        .collect();
    println!(
        "(medians of {} rounds of wrk -t1 -c{} -d{}s --latency per variant, alternating, after a {WARMUP_SECONDS} s \
         warm-up each; GET {LOAD_PATH} with one repeated RS256 token; Envoy --concurrency 1; portcullis with the demo \
         configuration, debugHeaders off; every answer 2xx; \
         filter counters over the measured runs: {})",
        opts.rounds,
        opts.connections,
        opts.seconds,
        counters.join(", ")
    );
}

/// The same runs by Envoy's own CPU time per answer: what one worker can serve when it is the
/// bottleneck, less disturbed than req/s by the load generator's CPU or by Envoy waiting on it.
fn load_cpu(loads: &[Load]) {
    let per_answer = |v: Variant| -> Vec<f64> {
        loads
            .iter()
            .find(|l| l.variant == v)
            .map(|l| l.cpu.iter().map(|(us, _)| *us).collect())
            .unwrap_or_default()
    };
    if loads.iter().any(|l| l.cpu.len() != l.runs.len()) {
        println!("\nEnvoy CPU time: not available (no /proc/<pid>/task/*/schedstat)");
        return;
    }
    println!(
        "\n{:<24} {:>14} {:>13} {:>12}   CPU µs per answer per round",
        "variant", "Envoy CPU/ans", "vs no filter", "busy"
    );
    let base = median(per_answer(Variant::NoFilter));
    for l in loads {
        let us = median(l.cpu.iter().map(|(us, _)| *us).collect());
        let busy = median(l.cpu.iter().map(|(_, b)| *b).collect());
        let rounds: Vec<String> = l.cpu.iter().map(|(us, _)| format!("{us:.1}")).collect();
        println!(
            "{:<24} {:>11.1} µs {:>10.1} µs {:>11.0}%   {}",
            l.variant.name(),
            us,
            us - base,
            busy * 100.0,
            rounds.join(" ")
        );
    }
    let per_cpu_second = |v| -> Vec<f64> { per_answer(v).iter().map(|us| 1e6 / us).collect() };
    print_ratio(
        "answers per CPU second, portcullis / jwt_authn+RBAC",
        &per_cpu_second(Variant::Portcullis),
        &per_cpu_second(Variant::JwtAuthnRbac),
    );
    print_ratio(
        "answers per CPU second, portcullis native / jwt_authn+RBAC",
        &per_cpu_second(Variant::Native),
        &per_cpu_second(Variant::JwtAuthnRbac),
    );
    print_added(
        "Envoy CPU added per answer",
        &per_answer(Variant::Native),
        &per_answer(Variant::JwtAuthnRbac),
        &per_answer(Variant::NoFilter),
    );
}

/// The shared-CPU rounds: Envoy's CPU time per answer, with every variant on the same CPU.
pub fn shared(shared: &Shared, opts: &Options) {
    let us = |r: &[(u64, f64)]| -> Vec<f64> {
        r.iter()
            .map(|(n, cpu)| cpu::us_per_answer(*cpu, *n))
            .collect()
    };
    let pick = |per_variant: &[Vec<f64>], v| of_variant(&shared.variants, per_variant, v);
    let of = |v| of_variant(&shared.variants, &shared.rounds, v);
    let base = median(us(&of(Variant::NoFilter)));
    println!(
        "\n{:<24} {:>16} {:>13} {:>15}   CPU µs per answer per round",
        "variant", "CPU per answer", "vs no filter", "answers/CPU s"
    );
    for (variant, r) in shared.variants.iter().zip(&shared.rounds) {
        let per_answer = median(us(r));
        let per_round: Vec<String> = us(r).iter().map(|u| format!("{u:.1}")).collect();
        println!(
            "{:<24} {:>13.1} µs {:>10.1} µs {:>15.0}   {}",
            variant.name(),
            per_answer,
            per_answer - base,
            1e6 / per_answer,
            per_round.join(" ")
        );
    }
    let per_cpu_second = |v| -> Vec<f64> { us(&of(v)).iter().map(|u| 1e6 / u).collect() };
    print_ratio(
        "shared CPU, answers per CPU second, portcullis / jwt_authn+RBAC",
        &per_cpu_second(Variant::Portcullis),
        &per_cpu_second(Variant::JwtAuthnRbac),
    );
    print_ratio(
        "shared CPU, answers per CPU second, portcullis native / jwt_authn+RBAC",
        &per_cpu_second(Variant::Native),
        &per_cpu_second(Variant::JwtAuthnRbac),
    );
    print_target(
        "shared CPU, answers per CPU second, portcullis native / no filter",
        &per_cpu_second(Variant::Native),
        &per_cpu_second(Variant::NoFilter),
        0.95,
    );
    print_added(
        "shared CPU, Envoy CPU added per answer",
        &us(&of(Variant::Native)),
        &us(&of(Variant::JwtAuthnRbac)),
        &us(&of(Variant::NoFilter)),
    );
    // The kernel gives each Envoy an equal share of the CPU, so req/s compare too.
    print_ratio(
        "shared CPU, req/s, portcullis / jwt_authn+RBAC",
        &pick(&shared.rates, Variant::Portcullis),
        &pick(&shared.rates, Variant::JwtAuthnRbac),
    );
    let counted: Vec<String> = shared
        .variants
        .iter()
        .zip(&shared.totals)
        .map(|(v, n)| format!("{} {n}", v.name()))
        .collect();
    println!(
        "({} rounds of {} s, all variants at once, wrk -t1 -c{} each; every answer 2xx and counted by the \
         filters; answers: {})",
        opts.shared_rounds,
        opts.seconds,
        opts.connections,
        counted.join(", ")
    );
}

/// One variant's figures from a list kept in the order of `variants`.
fn of_variant<T: Clone>(variants: &[Variant], per_variant: &[Vec<T>], v: Variant) -> Vec<T> {
    variants
        .iter()
        .position(|w| *w == v)
        .and_then(|i| per_variant.get(i).cloned())
        .unwrap_or_default()
}

/// The first-sight run: req/s with a new token each request, and what the filter adds.
pub fn first_sight(rows: &[(&str, WrkResult)], opts: &Options) {
    let base = rows
        .iter()
        .find(|(n, _)| *n == Variant::NoFilter.name())
        .map(|(_, r)| r.per_second)
        .unwrap_or(0.0);
    println!(
        "\n{:<30} {:>10} {:>10} {:>10} {:>22}",
        "first sight (new token each)", "req/s", "p50", "p99", "filter µs/request"
    );
    for (name, r) in rows {
        let cost = if base > 0.0 && r.per_second > 0.0 {
            format!("{:.1}", 1e6 / r.per_second - 1e6 / base)
        } else {
            "-".to_owned()
        };
        println!(
            "{name:<30} {:>10.0} {:>7.2} ms {:>7.2} ms {cost:>22}",
            r.per_second, r.p50_ms, r.p99_ms
        );
    }
    println!(
        "(one round of wrk -t1 -c{} -d{}s per variant after a {WARMUP_SECONDS} s warm-up, {} tokens cycled; filter µs/request = 1/req/s − 1/req/s without filter, one pinned worker)",
        opts.connections, opts.seconds, opts.first_sight_tokens
    );
    let cost = |name: &str| {
        rows.iter()
            .find(|(n, _)| *n == name)
            .filter(|(_, r)| base > 0.0 && r.per_second > 0.0)
            .map(|(_, r)| 1e6 / r.per_second - 1e6 / base)
    };
    if let (Some(native), Some(jwt)) = (
        cost("portcullis native, ring"),
        cost(Variant::JwtAuthnRbac.name()),
    ) {
        let met = if native <= jwt { "met" } else { "not met" };
        println!(
            "first sight, cost portcullis native / jwt_authn+RBAC: {:.2} ({native:.1} µs / {jwt:.1} µs); goal <= 1.00: {met}",
            native / jwt
        );
    }
}

/// The median; NaN for no values.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match (values.get(mid), values.len() % 2) {
        (Some(v), 1) => *v,
        (Some(v), _) => values
            .get(mid.wrapping_sub(1))
            .map_or(*v, |w| (v + w) / 2.0),
        (None, _) => f64::NAN,
    }
}

/// Portcullis against jwt_authn+RBAC on a figure where more is better: the ratio of the medians
/// and of each round.
fn print_ratio(what: &str, ours: &[f64], theirs: &[f64]) {
    let rounds = RoundRatios::of(ours, theirs);
    let per_round: Vec<String> = rounds.ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "{what}: {:.2} (ratio of the medians); per round {}: median {:.2}, {} of {} rounds >= 1.00; goal >= 1.00",
        median(ours.to_vec()) / median(theirs.to_vec()),
        per_round.join(" "),
        rounds.median,
        rounds.at_least_one,
        rounds.ratios.len()
    );
}

/// A ratio of medians (more is better) against its goal.
fn print_target(what: &str, ours: &[f64], theirs: &[f64], goal: f64) {
    let ratio = median(ours.to_vec()) / median(theirs.to_vec());
    let met = if ratio >= goal { "met" } else { "not met" };
    println!("{what}: {ratio:.2} (ratio of the medians); goal >= {goal:.2}: {met}");
}

/// What the native module adds per answer over no filter, against what jwt_authn+RBAC adds
/// (medians of µs per answer); the goal is at most half.
fn print_added(what: &str, native: &[f64], jwt: &[f64], base: &[f64]) {
    let base = median(base.to_vec());
    let (ours, theirs) = (median(native.to_vec()) - base, median(jwt.to_vec()) - base);
    let met = if ours <= theirs / 2.0 {
        "met"
    } else {
        "not met"
    };
    println!(
        "{what}: portcullis native {ours:.1} µs, jwt_authn+RBAC {theirs:.1} µs, ratio {:.2}; goal <= 0.50: {met}",
        ours / theirs
    );
}

/// Ours / theirs round by round: the paired view, which the machine's drift between rounds
/// does not move the way it moves each variant's median.
#[derive(Debug, PartialEq)]
struct RoundRatios {
    ratios: Vec<f64>,
    median: f64,
    at_least_one: usize,
}

impl RoundRatios {
    fn of(ours: &[f64], theirs: &[f64]) -> Self {
        let ratios: Vec<f64> = ours.iter().zip(theirs).map(|(p, n)| p / n).collect();
        Self {
            median: median(ratios.clone()),
            at_least_one: ratios.iter().filter(|r| **r >= 1.0).count(),
            ratios,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_ratios() {
        let r = RoundRatios::of(&[10.0, 9.0, 12.0], &[8.0, 10.0, 12.0]);
        assert_eq!(
            r,
            RoundRatios {
                ratios: vec![1.25, 0.9, 1.0],
                median: 1.0,
                at_least_one: 2
            }
        );
        assert!(RoundRatios::of(&[], &[]).median.is_nan());
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
