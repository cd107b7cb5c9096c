//! `cargo xtask propagation`: how long a commit in Postgres takes to be enforced at every
//! worker. Starts Postgres, policy-sync and an Envoy with four workers following it (as
//! `demo --live` does), pads the bundle to each size with policies that never match, then
//! commits updates that flip one request between 200 and 403 and measures, per update, the time
//! from the admin API's answer (the commit) until 16 requests on 16 new connections all see the
//! new decision. Prints p50/p99 per size, with the worker compile times Envoy logged.

use std::time::{Duration, Instant};

use crate::Result;
use crate::live::{self, Live};

/// What to run.
#[derive(Debug)]
pub struct Options {
    /// Bundle sizes (policies), each measured in turn.
    pub sizes: Vec<usize>,
    /// Updates per size.
    pub updates: usize,
}

const PROBES: usize = 16;

/// The policy the updates flip: bob (staff) may DELETE under this one, ...
pub(crate) const FLIP_PERMIT: &str = "@id(\"flip\")\npermit (principal in Group::\"staff\", action == Action::\"DELETE\", resource);";
/// ... and not under this one (it matches nobody).
pub(crate) const FLIP_NOOP: &str = "@id(\"flip\")\npermit (principal == User::\"nobody\", action == Action::\"DELETE\", resource);";

/// Statuses of `PROBES` requests sent at once, each on its own connection.
fn probe(url: &str, token: &str) -> Vec<u16> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..PROBES)
            .map(|_| {
                s.spawn(|| {
                    let agent = harness::http::agent(Duration::from_secs(5));
                    let req = ureq::http::Request::builder()
                        .method("DELETE")
                        .uri(url)
                        .header("authorization", format!("Bearer {token}"))
                        .header("connection", "close")
                        .body(());
                    req.ok()
                        .and_then(|r| agent.run(r).ok())
                        .map_or(0, |r| r.status().as_u16())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    })
}

/// Stores one policy through the admin API; the version that publishes it.
pub(crate) fn put_policy(live: &Live, id: &str, text: &str) -> Result<u64> {
    let agent = harness::http::agent(Duration::from_secs(30));
    let body = serde_json::json!({ "text": text }).to_string();
    let r = agent
        .put(format!(
            "{}/v1/admin/tenants/default/policies/{id}",
            live.api
        ))
        .header("authorization", format!("Bearer {}", live.admin_token))
        .header("content-type", "application/json")
        .send(body.as_str())
        .map_err(|e| format!("PUT {id}: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("PUT {id}: {}", r.status()));
    }
    let answer: serde_json::Value =
        serde_json::from_str(&harness::http::text(r)).map_err(|e| format!("PUT {id}: {e}"))?;
    answer
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| format!("PUT {id}: no version in {answer}"))
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short list"
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// Compile times (ms) the workers logged.
fn compile_times(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.split_once("(compiled in ")?.1.split_once(" ms)"))
        .filter_map(|(ms, _)| ms.parse().ok())
        .collect()
}

fn measure_size(live: &Live, wasm: &std::path::Path, size: usize, updates: usize) -> Result {
    // The demo policies plus never-matching ones up to `size`.
    let filler: String = (0..size.saturating_sub(3))
        .map(|i| {
            format!(
                "@id(\"filler-{i}\")\npermit (principal == User::\"nobody-{i}\", action, resource);\n"
            )
        })
        .collect();
    let file = live.dir.path().join(format!("filler-{size}.cedar"));
    std::fs::write(&file, filler).map_err(|e| e.to_string())?;
    if size > 3 {
        let path = file.to_string_lossy().into_owned();
        live::policy_sync(&live.binary, &live.database_url, &["policy", "put", &path])?;
    }
    let proxy = live::start_following(live, wasm, 4)?;
    let url = proxy.url("/api/items/7");
    // bob may not DELETE under the demo policies: 403 until the flip permits it.
    let started = Instant::now();
    while probe(&url, &live.bob).iter().any(|s| *s != 403) {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "{size} policies: the filter did not start:\n{}",
                proxy.log()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (permit, noop) = (FLIP_PERMIT, FLIP_NOOP);
    let mut took = Vec::with_capacity(updates);
    for k in 0..updates {
        let (text, want) = if k % 2 == 0 {
            (permit, 200)
        } else {
            (noop, 403)
        };
        put_policy(live, "flip", text)?;
        let committed = Instant::now();
        loop {
            if probe(&url, &live.bob).iter().all(|s| *s == want) {
                took.push(committed.elapsed());
                break;
            }
            if committed.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "{size} policies, update {k}: not in force after 60 s"
                ));
            }
        }
    }
    took.sort_unstable();
    let compiles = compile_times(&proxy.log());
    let mut sorted = compiles.clone();
    sorted.sort_unstable();
    println!(
        "{size:>6} policies  {updates:>4} updates  p50 {:>8.1?}  p99 {:>8.1?}  max {:>8.1?}  worker compile p50 {} ms, max {} ms ({} compiles)",
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took.last().copied().unwrap_or_default(),
        sorted.get(sorted.len() / 2).copied().unwrap_or(0),
        sorted.last().copied().unwrap_or(0),
        sorted.len(),
    );
    Ok(())
}

/// Runs every size in turn against one policy-sync.
pub fn run(opts: &Options) -> Result {
    crate::install::ensure_envoy()?;
    let wasm = crate::wasm::build()?;
    let live = live::start(&crate::process::repo_root().join("envoy/demo-policies.cedar"))?;
    println!(
        "propagation: commit (admin API answered) until {PROBES} requests on new connections to \
         an Envoy of 4 workers all see the new decision"
    );
    let mut sizes = opts.sizes.clone();
    sizes.sort_unstable();
    for size in sizes {
        measure_size(&live, &wasm, size, opts.updates)?;
    }
    Ok(())
}
