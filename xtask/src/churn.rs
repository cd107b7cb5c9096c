//! `cargo xtask churn`: load while the policies change. Starts Postgres, policy-sync and an
//! Envoy with four workers following it (as `demo --live` does), then runs the repeated-token
//! load (bob's `DELETE /api/items/7` on keep-alive connections) three times: with no updates,
//! with an update every interval that flips that request between 403 and 200, and with no
//! updates again.
//!
//! Every answer is checked: no 5xx; the version that decided it (the `x-portcullis-bundle`
//! debug header) must be one that was published, and the answer must be that version's
//! decision; on one connection (one worker) the version never goes back. It also reports how
//! long after a newer version was committed answers were still decided by an older one, and
//! the cost of the updates to the load: throughput and latency against the runs without them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Result;
use crate::live::{self, Live};
use crate::propagation::{FLIP_NOOP, FLIP_PERMIT, percentile, put_policy};

/// What to run.
#[derive(Debug)]
pub struct Options {
    /// Length of the run with updates.
    pub seconds: u64,
    /// Length of each run without updates (one before, one after).
    pub steady_seconds: u64,
    /// Time between updates.
    pub interval_ms: u64,
    /// Keep-alive connections of the load.
    pub connections: usize,
}

/// One answer of the load.
#[derive(Debug, Clone, Copy)]
struct Answer {
    /// When the request was sent, since the run's epoch.
    sent: Duration,
    latency: Duration,
    status: u16,
    /// The bundle version that decided it, from the debug header.
    version: Option<u64>,
}

/// A published update: its version, the answer it gives, when its commit was answered.
#[derive(Debug, Clone, Copy)]
struct Update {
    version: u64,
    status: u16,
    committed: Duration,
}

/// Load on `connections` keep-alive connections until `until`; the answers per connection.
fn load(
    url: &str,
    token: &str,
    connections: usize,
    epoch: Instant,
    until: Instant,
) -> Vec<Vec<Answer>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..connections)
            .map(|_| {
                s.spawn(|| {
                    let agent = harness::http::agent(Duration::from_secs(5));
                    let mut answers = Vec::new();
                    while Instant::now() < until {
                        let sent = Instant::now();
                        let req = ureq::http::Request::builder()
                            .method("DELETE")
                            .uri(url)
                            .header("authorization", format!("Bearer {token}"))
                            .body(());
                        let got = req.ok().and_then(|r| agent.run(r).ok());
                        let latency = sent.elapsed();
                        let (status, version) = got.map_or((0, None), |mut r| {
                            let version = r
                                .headers()
                                .get("x-portcullis-bundle")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.rsplit_once('@'))
                                .and_then(|(_, v)| v.parse().ok());
                            // Read the body so the connection can be used again.
                            let _ = r.body_mut().read_to_vec();
                            (r.status().as_u16(), version)
                        });
                        answers.push(Answer {
                            sent: sent.duration_since(epoch),
                            latency,
                            status,
                            version,
                        });
                    }
                    answers
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Commits an update every `interval` until `until`, alternating the flip policy.
fn churn(live: &Live, interval: Duration, epoch: Instant, until: Instant) -> Result<Vec<Update>> {
    let mut updates = Vec::new();
    let mut next = Instant::now();
    let mut k = 0usize;
    while next < until {
        let (text, status) = if k.is_multiple_of(2) {
            (FLIP_PERMIT, 200)
        } else {
            (FLIP_NOOP, 403)
        };
        let version = put_policy(live, "flip", text)?;
        updates.push(Update {
            version,
            status,
            committed: Instant::now().duration_since(epoch),
        });
        k += 1;
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(updates)
}

/// What one run's answers showed.
#[derive(Debug, Default)]
struct Checked {
    answers: usize,
    five_xx: usize,
    wrong: Vec<String>,
    /// For answers decided by an older version after a newer one was committed: how long
    /// after that commit.
    stale: Vec<Duration>,
}

/// Checks every answer against the published versions. Versions before the first update
/// give 403 (the flip policy is absent).
fn check(per_connection: &[Vec<Answer>], updates: &[Update], first: u64) -> Checked {
    let expected: HashMap<u64, u16> = updates.iter().map(|u| (u.version, u.status)).collect();
    let mut out = Checked::default();
    for (c, answers) in per_connection.iter().enumerate() {
        let mut last = 0;
        for a in answers {
            out.answers += 1;
            if a.status >= 500 || a.status == 0 {
                out.five_xx += 1;
                out.wrong.push(format!(
                    "connection {c}: status {} at {:?}",
                    a.status, a.sent
                ));
                continue;
            }
            let Some(v) = a.version else {
                out.wrong
                    .push(format!("connection {c}: no bundle header at {:?}", a.sent));
                continue;
            };
            let want = if v < first {
                Some(403)
            } else {
                expected.get(&v).copied()
            };
            if want != Some(a.status) {
                out.wrong.push(format!(
                    "connection {c}: {} under version {v}, which gives {want:?}",
                    a.status
                ));
            }
            if v < last {
                out.wrong
                    .push(format!("connection {c}: version {v} after {last}"));
            }
            last = last.max(v);
            // The first update newer than the deciding version, committed before the request.
            if let Some(newer) = updates.iter().find(|u| u.version > v)
                && newer.committed < a.sent
            {
                out.stale.push(a.sent.saturating_sub(newer.committed));
            }
        }
    }
    out
}

/// Throughput and latency of one run.
fn figures(per_connection: &[Vec<Answer>], seconds: u64) -> (f64, Duration, Duration) {
    let mut latencies: Vec<Duration> = per_connection.iter().flatten().map(|a| a.latency).collect();
    latencies.sort_unstable();
    #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
    let rate = latencies.len() as f64 / seconds.max(1) as f64;
    (
        rate,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    )
}

/// Runs the three loads and prints what they showed; an error on any 5xx or wrong answer.
pub fn run(opts: &Options) -> Result {
    crate::install::ensure_envoy()?;
    let wasm = crate::wasm::build()?;
    let live = live::start(&crate::process::repo_root().join("envoy/demo-policies.cedar"))?;
    let proxy = live::start_following(&live, &wasm, 4)?;
    let url = proxy.url("/api/items/7");
    // Wait for the first version in force everywhere (403: bob may not DELETE yet).
    let started = Instant::now();
    while load(
        &url,
        &live.bob,
        opts.connections,
        started,
        Instant::now() + Duration::from_millis(200),
    )
    .iter()
    .flatten()
    .any(|a| a.status != 403)
    {
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("the filter did not start:\n{}", proxy.log()));
        }
    }
    println!(
        "churn: an Envoy of 4 workers following policy-sync; bob's DELETE on {} keep-alive \
         connections; updates flip it between 403 and 200 every {} ms",
        opts.connections, opts.interval_ms
    );
    let steady =
        |label: &str, updates: &[Update]| -> Result<(Checked, (f64, Duration, Duration))> {
            let epoch = Instant::now();
            let answers = load(
                &url,
                &live.bob,
                opts.connections,
                epoch,
                epoch + Duration::from_secs(opts.steady_seconds),
            );
            let first = updates.first().map_or(u64::MAX, |u| u.version);
            let checked = check(&answers, updates, first);
            let f = figures(&answers, opts.steady_seconds);
            print_run(label, &checked, f);
            Ok((checked, f))
        };
    let (before, f_before) = steady("no updates (before)", &[])?;
    let epoch = Instant::now();
    let until = epoch + Duration::from_secs(opts.seconds);
    let (answers, updates) = std::thread::scope(|s| {
        let churner =
            s.spawn(|| churn(&live, Duration::from_millis(opts.interval_ms), epoch, until));
        let answers = load(&url, &live.bob, opts.connections, epoch, until);
        (
            answers,
            churner
                .join()
                .unwrap_or_else(|_| Err("the update thread failed".into())),
        )
    });
    let updates = updates?;
    let first = updates.first().map_or(u64::MAX, |u| u.version);
    let during = check(&answers, &updates, first);
    let f_during = figures(&answers, opts.seconds);
    print_run(&format!("{} updates", updates.len()), &during, f_during);
    // Every answer now comes from the last version (the check's times restart at 0, so any
    // older version is counted stale, and wrong if its decision differs).
    let (after, f_after) = steady("no updates (after)", &updates)?;

    let mut stale = during.stale.clone();
    stale.sort_unstable();
    println!(
        "  answers decided by an older version after a newer one was committed: {} of {} \
         (p50 {:.1?}, p99 {:.1?}, max {:.1?} after that commit)",
        stale.len(),
        during.answers,
        percentile(&stale, 0.5),
        percentile(&stale, 0.99),
        stale.last().copied().unwrap_or_default()
    );
    let base_rate = f64::midpoint(f_before.0, f_after.0);
    let base_p50 = (f_before.1 + f_after.1) / 2;
    let base_p99 = (f_before.2 + f_after.2) / 2;
    println!(
        "  cost of the updates: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x the runs without updates",
        f_during.0 / base_rate.max(f64::MIN_POSITIVE),
        f_during.1.as_secs_f64() / base_p50.as_secs_f64().max(f64::MIN_POSITIVE),
        f_during.2.as_secs_f64() / base_p99.as_secs_f64().max(f64::MIN_POSITIVE),
    );
    let wrong: Vec<&String> = [&before, &during, &after]
        .iter()
        .flat_map(|c| &c.wrong)
        .collect();
    if let Some(first) = wrong.first() {
        return Err(format!("{} wrong answers; the first: {first}", wrong.len()));
    }
    Ok(())
}

fn print_run(label: &str, c: &Checked, (rate, p50, p99): (f64, Duration, Duration)) {
    println!(
        "  {label:<22} {:>8} answers  {rate:>8.0} req/s  p50 {p50:>8.2?}  p99 {p99:>8.2?}  5xx {}  wrong {}",
        c.answers,
        c.five_xx,
        c.wrong.len()
    );
}
