//! `cargo xtask measure`: size of the filter, Envoy start-up time, memory, a sequential request
//! loop and a load run (wrk), for Envoy without a filter, with Envoy's native `jwt_authn` + `rbac`
//! and with Portcullis, measured in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::devkeys::DevIssuer;
use harness::envoy::{self, Envoy, Ports};
use harness::{demo, http};

use crate::Result;

/// What `cargo xtask measure` does.
#[derive(Debug)]
pub struct Options {
    /// Sequential requests per variant.
    pub requests: u32,
    /// The filter to measure (else the default build).
    pub wasm: Option<PathBuf>,
    /// Length of each measured wrk run; 0 skips the load runs (as do 0 rounds and 0 shared rounds).
    pub seconds: u32,
    /// wrk connections.
    pub connections: u32,
    /// Measured wrk runs per variant.
    pub rounds: u32,
    /// Distinct tokens of the first-sight run; 0 skips it.
    pub first_sight_tokens: u32,
    /// Rounds with every variant under load at once on one shared CPU; 0 skips them.
    pub shared_rounds: u32,
    /// The start-up and memory phase (no worker counts: skipped).
    pub startup: crate::startup::Options,
    /// Only that phase.
    pub only_startup: bool,
}

/// Warm-up before each measured wrk run (V8 tiers up, caches fill).
const WARMUP_SECONDS: u32 = 3;
/// Longer than the filter's metrics flush period (1 s): counters read after this include every
/// answered request.
const COUNTS_SETTLE: Duration = Duration::from_millis(1500);
/// The path every measured request asks for.
const LOAD_PATH: &str = "/api/hello";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    NoFilter,
    /// The cheapest proxy-wasm filter the SDK builds: the ABI probe told to do nothing
    /// (`noop`), exporting only the callbacks the filter exports. What V8 and the proxy-wasm
    /// context lifecycle cost before a filter does any work.
    NoopWasm,
    JwtAuthnRbac,
    Portcullis,
}

impl Variant {
    const ALL: [Self; 4] = [
        Self::NoFilter,
        Self::NoopWasm,
        Self::JwtAuthnRbac,
        Self::Portcullis,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::NoFilter => "envoy, no filter",
            Self::NoopWasm => "envoy + no-op wasm",
            Self::JwtAuthnRbac => "envoy + jwt_authn+RBAC",
            Self::Portcullis => "envoy + portcullis",
        }
    }

    fn config(self, ports: Ports, wasm: &Path, noop: &Path, issuer: &DevIssuer) -> Result<String> {
        match self {
            Self::NoFilter => envoy::baseline_config(ports),
            Self::NoopWasm => envoy::config(ports, noop, &"noop".into()),
            Self::JwtAuthnRbac => envoy::jwt_authn_rbac_config(
                ports,
                &issuer.issuer,
                &issuer.audience,
                &issuer.jwks(),
            ),
            Self::Portcullis => {
                // The demo configuration without its debug response header: what a deployment
                // runs, and no more work than the native variant does.
                let mut plugin = demo::plugin_config(issuer);
                if let Some(o) = plugin.as_object_mut() {
                    o.insert("debugHeaders".into(), false.into());
                }
                envoy::config(ports, wasm, &plugin)
            }
        }
        .map_err(|e| e.to_string())
    }

    /// Counters that must grow by at least the number of answered requests under load: the
    /// filter allowed each one, and its token and decision caches (not a signature check or a
    /// policy evaluation) answered it.
    fn counters(self) -> &'static [&'static str] {
        match self {
            Self::NoFilter | Self::NoopWasm => &[],
            Self::JwtAuthnRbac => &[
                "http.ingress.rbac.allowed",
                "http.ingress.jwt_authn.allowed",
                "http.ingress.jwt_authn.jwt_cache_hit",
            ],
            Self::Portcullis => &[
                "wasmcustom.portcullis.allowed_total",
                "wasmcustom.portcullis.token_cache.hits_total",
                "wasmcustom.portcullis.decision_cache.hits_total",
            ],
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Who {
    Nobody,
    Forged,
    Bob,
    Alice,
}

/// Requests sent to every variant before the measurements, with the status a filtered variant
/// must answer (the no-filter variant answers 200 to all): the demo's decisions.
const CHECKS: [(&str, &str, Who, u16); 6] = [
    ("GET", LOAD_PATH, Who::Nobody, 401),
    ("GET", LOAD_PATH, Who::Forged, 401),
    ("GET", LOAD_PATH, Who::Bob, 200),
    ("DELETE", "/api/items/7", Who::Bob, 403),
    ("GET", "/admin/users", Who::Bob, 403),
    ("DELETE", "/admin/users/9", Who::Alice, 200),
];

struct Tokens {
    bob: String,
    alice: String,
    forged: String,
}

impl Tokens {
    fn of(&self, who: Who) -> Option<&str> {
        match who {
            Who::Nobody => None,
            Who::Forged => Some(&self.forged),
            Who::Bob => Some(&self.bob),
            Who::Alice => Some(&self.alice),
        }
    }
}

struct Row {
    variant: Variant,
    first_answer: Duration,
    rss_ready_kib: u64,
    rss_after_kib: u64,
    per_second: f64,
}

/// One variant's measured wrk runs.
struct Load {
    variant: Variant,
    runs: Vec<WrkResult>,
    /// Envoy's CPU time per answer in each run (µs), and the share of the run's wall time
    /// Envoy was on a CPU.
    cpu: Vec<(f64, f64)>,
    rss_after_kib: u64,
    counters: Vec<(&'static str, u64)>,
}

/// Measures and prints the tables.
pub fn run(opts: &Options) -> Result {
    crate::install::ensure_envoy()?;
    let wrk = if opts.seconds > 0 && (opts.rounds > 0 || opts.shared_rounds > 0) {
        Some(crate::install::ensure_wrk()?)
    } else {
        None
    };
    let built = crate::wasm::build_all()?;
    let wasm = opts.wasm.clone().unwrap_or(built.filter);
    let noop_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let noop = noop_dir.path().join("noop.wasm");
    crate::wasm::trimmed_copy(&built.probe, &noop)?;
    let size = std::fs::metadata(&wasm).map_err(|e| e.to_string())?.len();
    let gz = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(&wasm)
        .output()
        .map_err(|e| format!("gzip: {e}"))?
        .stdout
        .len();
    println!(
        "filter: {} — {} KiB, {} KiB gzipped",
        wasm.display(),
        size / 1024,
        gz / 1024
    );

    if !opts.startup.workers.is_empty() {
        // First, while no other Envoy runs.
        crate::startup::run(&opts.startup, &wasm, &noop)?;
    }
    if opts.only_startup {
        return Ok(());
    }

    let issuer = DevIssuer::generate().map_err(|e| e.to_string())?;
    let other = DevIssuer::generate().map_err(|e| e.to_string())?;
    let tokens = Tokens {
        bob: issuer.token("bob", &["staff"]),
        alice: issuer.token("alice", &["admins"]),
        forged: other.token("bob", &["admins"]),
    };
    let auth = format!("Bearer {}", tokens.bob);
    let mut rows = Vec::new();
    // All three stay up for the load phase, which alternates between them.
    let mut proxies = Vec::new();
    for variant in Variant::ALL {
        let ports = Ports::free().map_err(|e| e.to_string())?;
        let cfg = variant.config(ports, &wasm, &noop, &issuer)?;
        let mut proxy = Envoy::start(&cfg, ports, 1).map_err(|e| e.to_string())?;
        let first_answer = proxy
            .wait_ready(Duration::from_secs(120))
            .map_err(|e| e.to_string())?;
        let rss_ready_kib = proxy.rss_kib().unwrap_or(0);
        check_decisions(&proxy, variant, &tokens)?;

        let agent = http::agent(Duration::from_secs(10));
        let url = proxy.url(LOAD_PATH);
        let started = Instant::now();
        for i in 0..opts.requests {
            let resp = agent
                .get(&url)
                .header("authorization", &auth)
                .call()
                .map_err(|e| format!("request {i}: {e}"))?;
            // A broken setup must not look fast: every answer is the upstream's 200.
            if resp.status().as_u16() != 200 {
                return Err(format!(
                    "request {i}: status {} (expected 200)",
                    resp.status()
                ));
            }
            let _ = http::text(resp);
        }
        let per_second = f64::from(opts.requests) / started.elapsed().as_secs_f64();
        rows.push(Row {
            variant,
            first_answer,
            rss_ready_kib,
            rss_after_kib: proxy.rss_kib().unwrap_or(0),
            per_second,
        });
        proxies.push((variant, proxy));
    }

    println!(
        "\n{:<24} {:>14} {:>14} {:>16} {:>14}",
        "variant", "first answer", "RSS ready", "RSS after seq.", "req/s (1 conn)"
    );
    for r in &rows {
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

    if let Some(wrk) = &wrk {
        // Pins the Envoys and warms them up, whether or not alternating rounds follow.
        let loads = load_phase(&mut proxies, wrk, opts, &auth)?;
        if opts.rounds > 0 {
            print_load_table(&loads, opts);
        }
        if opts.shared_rounds > 0 {
            match pinning() {
                Some(p) => shared_cpu_phase(&proxies, wrk, opts, &auth, &p)?,
                None => println!(
                    "\nshared-CPU rounds: skipped (taskset unusable or fewer than two CPUs)"
                ),
            }
        }
        if opts.first_sight_tokens > 0 {
            first_sight_phase(&proxies, wrk, opts, &issuer, &wasm)?;
        }
    }
    for (variant, proxy) in &mut proxies {
        if !proxy.is_running() {
            return Err(format!(
                "{}: Envoy exited during the run:\n{}",
                variant.name(),
                proxy.log()
            ));
        }
    }
    Ok(())
}

/// Pins the Envoys, warms each up, then runs wrk `opts.rounds` times against each, alternating
/// between the variants (each round starts with another one) so that drifts in the machine's
/// speed spread over all of them.
fn load_phase(
    proxies: &mut [(Variant, Envoy)],
    wrk: &Path,
    opts: &Options,
    auth: &str,
) -> Result<Vec<Load>> {
    let pinning = pinning();
    println!("\nload generator: {} ({})", wrk.display(), wrk_version(wrk));
    match &pinning {
        Some(p) => {
            for (_, proxy) in proxies.iter() {
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
    let pinning = pinning.as_ref();
    let mut loads = Vec::new();
    for (variant, proxy) in proxies.iter() {
        let warm = run_wrk(wrk_command(
            wrk,
            pinning,
            WARMUP_SECONDS,
            opts.connections,
            auth,
            &proxy.url(LOAD_PATH),
        ))
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
            let (Some((variant, proxy)), Some(load)) = (proxies.get(i), loads.get_mut(i)) else {
                continue;
            };
            let before = read_counters(proxy, *variant)?;
            let (cpu_before, started) = (proxy.cpu_time(), std::time::Instant::now());
            let result = run_wrk(wrk_command(
                wrk,
                pinning,
                opts.seconds,
                opts.connections,
                auth,
                &proxy.url(LOAD_PATH),
            ))
            .map_err(|e| format!("{}: {e}", variant.name()))?;
            let (cpu_after, wall) = (proxy.cpu_time(), started.elapsed());
            let after = read_counters(proxy, *variant)?;
            // The filter decided every answer, from its token cache.
            let grew = counted_every_answer(variant.name(), &before, &after, result.requests)?;
            for ((_, total), grew) in load.counters.iter_mut().zip(grew) {
                *total += grew;
            }
            let cpu = cpu_before
                .zip(cpu_after)
                .map(|(b, a)| a.saturating_sub(b).as_secs_f64())
                .filter(|_| result.requests > 0)
                .map(|s| (s * 1e6 / result.requests as f64, s / wall.as_secs_f64()));
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
        }
    }
    for ((_, proxy), load) in proxies.iter().zip(&mut loads) {
        load.rss_after_kib = proxy.rss_kib().unwrap_or(0);
    }
    Ok(loads)
}

/// Every variant under load at the same time, every Envoy on the same CPU (one wrk per Envoy,
/// all on the other CPU). The kernel shares the CPU between the Envoys, so each variant's CPU
/// time per answer is measured over the same seconds on the same CPU: a change in the
/// machine's speed (other guests, frequency) slows all of them alike instead of whichever
/// variant happened to run then, which is what makes rounds of the alternating phase differ
/// by ±15 %. Answers per CPU second is the throughput one worker would have on its own core.
fn shared_cpu_phase(
    proxies: &[(Variant, Envoy)],
    wrk: &Path,
    opts: &Options,
    auth: &str,
    pinning: &Pinning,
) -> Result {
    println!(
        "\nshared CPU: all {} Envoys on CPU {} at once, one wrk each on CPU {}",
        proxies.len(),
        pinning.envoy,
        pinning.wrk
    );
    // Per variant: (answers, CPU seconds) and req/s of each round.
    let mut rounds: Vec<Vec<(u64, f64)>> = vec![Vec::new(); proxies.len()];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); proxies.len()];
    let mut totals = vec![0u64; proxies.len()];
    for round in 0..opts.shared_rounds {
        std::thread::sleep(COUNTS_SETTLE);
        let before = proxies
            .iter()
            .map(|(v, p)| counters_now(p, *v))
            .collect::<Result<Vec<_>>>()?;
        let cpu_before: Vec<_> = proxies.iter().map(|(_, p)| p.cpu_time()).collect();
        let children = proxies
            .iter()
            .map(|(v, p)| {
                wrk_command(
                    wrk,
                    Some(pinning),
                    opts.seconds,
                    opts.connections,
                    auth,
                    &p.url(LOAD_PATH),
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
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
            let result = wrk_result(out).map_err(|e| format!("{}: {e}", variant.name()))?;
            let after = counters_now(proxy, *variant)?;
            // The filter decided every answer (from its caches), as in the alternating phase.
            counted_every_answer(
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
                cpu * 1e6 / result.requests as f64
            ));
            if let (Some(r), Some(q), Some(t)) =
                (rounds.get_mut(i), rates.get_mut(i), totals.get_mut(i))
            {
                r.push((result.requests, cpu));
                q.push(result.per_second);
                *t += result.requests;
            }
        }
        println!("shared round {}: {}", round + 1, line.join("; "));
    }
    let us =
        |r: &[(u64, f64)]| -> Vec<f64> { r.iter().map(|(n, cpu)| cpu * 1e6 / *n as f64).collect() };
    let pick = |per_variant: &[Vec<f64>], v| of_variant(proxies, per_variant, v);
    let of = |v| of_variant(proxies, &rounds, v);
    let base = median(us(&of(Variant::NoFilter)));
    println!(
        "\n{:<24} {:>16} {:>13} {:>15}   CPU µs per answer per round",
        "variant", "CPU per answer", "vs no filter", "answers/CPU s"
    );
    for ((variant, _), r) in proxies.iter().zip(&rounds) {
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
    // The kernel gives each Envoy an equal share of the CPU, so req/s compare too.
    print_ratio(
        "shared CPU, req/s, portcullis / jwt_authn+RBAC",
        &pick(&rates, Variant::Portcullis),
        &pick(&rates, Variant::JwtAuthnRbac),
    );
    let counted: Vec<String> = proxies
        .iter()
        .zip(&totals)
        .map(|((v, _), n)| format!("{} {n}", v.name()))
        .collect();
    println!(
        "({} rounds of {} s, all variants at once, wrk -t1 -c{} each; every answer 2xx and counted by the \
         filters; answers: {})",
        opts.shared_rounds,
        opts.seconds,
        opts.connections,
        counted.join(", ")
    );
    Ok(())
}

/// One variant's figures from a list kept in the order of `proxies`.
fn of_variant<T: Clone>(
    proxies: &[(Variant, Envoy)],
    per_variant: &[Vec<T>],
    v: Variant,
) -> Vec<T> {
    proxies
        .iter()
        .position(|(w, _)| *w == v)
        .and_then(|i| per_variant.get(i).cloned())
        .unwrap_or_default()
}

/// Every request carries a token the filters have not seen recently: `first_sight_tokens`
/// distinct tokens, cycled by a wrk script, more than any token cache here holds. Measures
/// signature verification under load: Portcullis with Envoy's `verify_signature` (default),
/// Portcullis with its own wasm-compiled RSA (`hostCrypto: false`), and jwt_authn+RBAC, against
/// the no-filter baseline; one round each.
fn first_sight_phase(
    proxies: &[(Variant, Envoy)],
    wrk: &Path,
    opts: &Options,
    issuer: &DevIssuer,
    wasm: &Path,
) -> Result {
    let started = Instant::now();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut lines = String::new();
    let t = harness::devkeys::now();
    for i in 0..opts.first_sight_tokens {
        // jti makes every token distinct: {"iss","aud","sub":"bob","groups":["staff"],"jti":i,...}
        let token = issuer.sign(&serde_json::json!({
            "iss": issuer.issuer, "aud": issuer.audience, "sub": "bob", "groups": ["staff"],
            "jti": i.to_string(), "iat": t, "exp": t + 3600,
        }));
        lines.push_str(&token);
        lines.push('\n');
    }
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, lines).map_err(|e| e.to_string())?;
    let script = dir.path().join("first-sight.lua");
    std::fs::write(
        &script,
        format!(
            "local tokens = {{}}\nfor line in io.lines(\"{}\") do tokens[#tokens + 1] = line end\n\
             local i = 0\nrequest = function()\n  i = i % #tokens + 1\n  \
             return wrk.format(\"GET\", \"{LOAD_PATH}\", {{[\"authorization\"] = \"Bearer \" .. tokens[i]}})\nend\n",
            tokens.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    println!(
        "\nfirst sight: {} distinct RS256 tokens signed in {:.1?}",
        opts.first_sight_tokens,
        started.elapsed()
    );

    // Two more Portcullis instances with the token cache off (every request verifies a
    // signature): one lets Envoy verify RSA, one verifies in wasm.
    let pinning = pinning();
    let mut extra = Vec::new();
    for host_crypto in [true, false] {
        let ports = Ports::free().map_err(|e| e.to_string())?;
        let mut plugin = demo::plugin_config(issuer);
        if let Some(o) = plugin.as_object_mut() {
            o.insert("debugHeaders".into(), false.into());
            o.insert("hostCrypto".into(), host_crypto.into());
            o.insert("tokenCache".into(), serde_json::json!({"capacity": 0}));
        }
        let cfg = envoy::config(ports, wasm, &plugin).map_err(|e| e.to_string())?;
        let mut proxy = Envoy::start(&cfg, ports, 1).map_err(|e| e.to_string())?;
        proxy
            .wait_ready(Duration::from_secs(120))
            .map_err(|e| e.to_string())?;
        if let Some(p) = &pinning {
            p.pin(&proxy)?;
        }
        extra.push(proxy);
    }
    let auth = format!("@{}", script.display());
    let mut rows: Vec<(&str, WrkResult)> = Vec::new();
    let mut runs: Vec<(&str, &Envoy, &[&str])> = proxies
        .iter()
        .filter_map(|(v, p)| match v {
            Variant::NoFilter => Some((v.name(), p, &[][..])),
            Variant::NoopWasm => None,
            Variant::JwtAuthnRbac => Some((v.name(), p, &["http.ingress.rbac.allowed"][..])),
            Variant::Portcullis => None,
        })
        .collect();
    if let [host, in_wasm] = extra.as_slice() {
        runs.push((
            "portcullis, verify_signature",
            host,
            &[
                "wasmcustom.portcullis.allowed_total",
                "wasmcustom.portcullis.host_verify.confirmed_total",
            ],
        ));
        runs.push((
            "portcullis, RSA in wasm",
            in_wasm,
            &["wasmcustom.portcullis.allowed_total"],
        ));
    }
    for (name, proxy, counters) in runs {
        let read = |n: &str| proxy.stat(n).map_err(|e| e.to_string());
        // Warm-up with the same script (V8 tiers up the verification code too).
        run_wrk(wrk_command(
            wrk,
            pinning.as_ref(),
            WARMUP_SECONDS,
            opts.connections,
            &auth,
            &proxy.url(LOAD_PATH),
        ))
        .map_err(|e| format!("{name} (warm-up): {e}"))?;
        std::thread::sleep(COUNTS_SETTLE);
        let mid: Vec<Option<u64>> = counters.iter().map(|n| read(n)).collect::<Result<_>>()?;
        let r = run_wrk(wrk_command(
            wrk,
            pinning.as_ref(),
            opts.seconds,
            opts.connections,
            &auth,
            &proxy.url(LOAD_PATH),
        ))
        .map_err(|e| format!("{name}: {e}"))?;
        std::thread::sleep(COUNTS_SETTLE);
        // Every answer was allowed by the filter, signatures verified the advertised way.
        for (n, m) in counters.iter().zip(&mid) {
            let after = read(n)?.unwrap_or(0);
            let grew = after.saturating_sub(m.unwrap_or(0));
            if grew < r.requests {
                return Err(format!(
                    "{name}: {n} grew by {grew} while wrk counted {} answers",
                    r.requests
                ));
            }
        }
        println!(
            "first sight, {name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} answers, all 2xx",
            r.per_second, r.p50_ms, r.p99_ms, r.requests
        );
        rows.push((name, r));
    }
    let base = rows
        .iter()
        .find(|(n, _)| *n == Variant::NoFilter.name())
        .map(|(_, r)| r.per_second)
        .unwrap_or(0.0);
    println!(
        "\n{:<30} {:>10} {:>10} {:>10} {:>22}",
        "first sight (new token each)", "req/s", "p50", "p99", "filter µs/request"
    );
    for (name, r) in &rows {
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
    if let Some(host) = extra.first() {
        signature_check_times(host, pinning.as_ref())?;
    }
    Ok(())
}

/// The signature checks of the first-sight run as Portcullis timed them (its `host_verify_nanoseconds`
/// histogram: one `verify_signature` call each, key parsing included), against OpenSSL's own
/// RSA-2048 verification on the same CPU.
fn signature_check_times(host: &Envoy, pinning: Option<&Pinning>) -> Result {
    const NAME: &str = "wasmcustom.portcullis.host_verify_nanoseconds";
    // Envoy merges histogram samples at its stats flush (every 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    let (p50, p90) = loop {
        let text = host
            .admin(&format!("/stats?filter={NAME}"))
            .map_err(|e| e.to_string())?;
        if let (Some(p50), Some(p90)) = (quantile(&text, NAME, "P50"), quantile(&text, NAME, "P90"))
        {
            break (p50, p90);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no {NAME} samples after the first-sight run:\n{text}"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut cmd = Command::new("openssl");
    if let Some(p) = pinning {
        cmd = Command::new("taskset");
        cmd.args(["-c", &p.envoy.to_string(), "openssl"]);
    }
    let out = cmd
        .args(["speed", "-seconds", "2", "rsa2048"])
        .output()
        .map_err(|e| format!("openssl speed: {e}"))?;
    let openssl = openssl_verify_seconds(&String::from_utf8_lossy(&out.stdout))
        .ok_or("openssl speed rsa2048: no verify time in its report")?;
    println!(
        "signature checks of the first-sight run, Envoy's verify_signature as Portcullis times the call \
         (RS256, key parsed per call): p50 {:.1} µs, p90 {:.1} µs; `openssl speed rsa2048` verify on the \
         same CPU {:.1} µs; p50 / OpenSSL {:.2} (goal <= 2)",
        p50 / 1e3,
        p90 / 1e3,
        openssl * 1e6,
        p50 / 1e9 / openssl
    );
    Ok(())
}

/// A cumulative quantile (`P50(interval,cumulative)`) of histogram `name` in Envoy's `/stats`.
fn quantile(stats: &str, name: &str, q: &str) -> Option<f64> {
    let line = stats
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))?;
    let (_, rest) = line.split_once(&format!("{q}("))?;
    let (inside, _) = rest.split_once(')')?;
    let value: f64 = inside.split(',').nth(1)?.trim().parse().ok()?;
    value.is_finite().then_some(value)
}

/// Seconds per RSA-2048 verification from `openssl speed rsa2048`'s summary line
/// (`rsa 2048 bits 0.000646s 0.000019s ...`: sign, then verify).
fn openssl_verify_seconds(report: &str) -> Option<f64> {
    let line = report.lines().find(|l| l.starts_with("rsa 2048 bits"))?;
    line.split_whitespace()
        .nth(4)?
        .strip_suffix('s')?
        .parse()
        .ok()
}

/// The demo's decisions, asserted on this variant before anything is measured.
fn check_decisions(proxy: &Envoy, variant: Variant, tokens: &Tokens) -> Result {
    let agent = http::agent(Duration::from_secs(10));
    let mut seen = Vec::new();
    for (method, path, who, filtered) in CHECKS {
        let expected = if matches!(variant, Variant::NoFilter | Variant::NoopWasm) {
            200
        } else {
            filtered
        };
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(proxy.url(path));
        if let Some(t) = tokens.of(who) {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(()).map_err(|e| e.to_string())?;
        let resp = agent
            .run(req)
            .map_err(|e| format!("{method} {path} ({who:?}): {e}"))?;
        let status = resp.status().as_u16();
        let _ = http::text(resp);
        if status != expected {
            return Err(format!(
                "{}: {method} {path} as {who:?}: status {status}, expected {expected}",
                variant.name()
            ));
        }
        seen.push(format!("{method} {path} {who:?} {status}"));
    }
    println!("{}: checked {}", variant.name(), seen.join(", "));
    Ok(())
}

/// Where Envoy and wrk run: one CPU each.
#[derive(Debug)]
struct Pinning {
    envoy: u32,
    wrk: u32,
}

impl Pinning {
    /// Moves every thread of an Envoy to the Envoy CPU.
    fn pin(&self, proxy: &Envoy) -> Result {
        crate::process::run(
            Command::new("taskset")
                .args(["-a", "-c", "-p"])
                .arg(self.envoy.to_string())
                .arg(proxy.pid().to_string())
                .stdout(std::process::Stdio::null()),
            "taskset (Envoy)",
        )
    }
}

/// Two CPUs this process may use, if `taskset` works here.
fn pinning() -> Option<Pinning> {
    let out = Command::new("taskset")
        .args(["-c", "-p"])
        .arg(std::process::id().to_string())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    // "pid 123's current affinity list: 0-3,6"
    let text = String::from_utf8_lossy(&out.stdout);
    let list = text.rsplit(':').next()?.trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.trim().parse::<u32>().ok()?..=b.trim().parse().ok()?),
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    match cpus.as_slice() {
        [envoy, wrk, ..] => Some(Pinning {
            envoy: *envoy,
            wrk: *wrk,
        }),
        _ => None,
    }
}

/// How much each counter grew over a run; an error if any grew by less than the answers wrk
/// counted (a filter that let requests through undecided must not look fast).
fn counted_every_answer(
    who: &str,
    before: &[(&'static str, u64)],
    after: &[(&'static str, u64)],
    answers: u64,
) -> Result<Vec<u64>> {
    before
        .iter()
        .zip(after)
        .map(|((name, b), (_, a))| {
            let grew = a.saturating_sub(*b);
            if grew < answers {
                Err(format!(
                    "{who}: {name} grew by {grew} while wrk counted {answers} answers"
                ))
            } else {
                Ok(grew)
            }
        })
        .collect()
}

fn read_counters(proxy: &Envoy, variant: Variant) -> Result<Vec<(&'static str, u64)>> {
    // Portcullis hands its counts to Envoy once a second. Every variant waits the same, so
    // that each measured run starts after the same pause.
    std::thread::sleep(COUNTS_SETTLE);
    counters_now(proxy, variant)
}

fn counters_now(proxy: &Envoy, variant: Variant) -> Result<Vec<(&'static str, u64)>> {
    variant
        .counters()
        .iter()
        .map(|name| {
            proxy
                .stat(name)
                .map_err(|e| e.to_string())?
                .map(|v| (*name, v))
                .ok_or_else(|| format!("{}: no counter {name}", variant.name()))
        })
        .collect()
}

fn wrk_version(wrk: &Path) -> String {
    // `wrk -v` prints its version and exits with status 1.
    Command::new(wrk).arg("-v").output().map_or_else(
        |e| format!("version unknown: {e}"),
        |o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines()
                .next()
                .and_then(|l| l.split(" Copyright").next())
                .unwrap_or("version unknown")
                .trim()
                .to_owned()
        },
    )
}

#[derive(Debug)]
struct WrkResult {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
}

/// Runs a [`wrk_command`] to the end and reads its report.
fn run_wrk(mut cmd: Command) -> Result<WrkResult> {
    let out = cmd
        .output()
        .map_err(|e| format!("wrk: cannot start: {e}"))?;
    wrk_result(&out)
}

fn wrk_command(
    wrk: &Path,
    pinning: Option<&Pinning>,
    seconds: u32,
    connections: u32,
    auth: &str,
    url: &str,
) -> Command {
    let mut cmd = match pinning {
        Some(p) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &p.wrk.to_string()]).arg(wrk);
            c
        }
        None => Command::new(wrk),
    };
    cmd.args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .arg("--latency");
    // `auth` is a header value, or `@script.lua` for a wrk script that sets it per request.
    match auth.strip_prefix('@') {
        Some(script) => cmd.args(["-s", script]),
        None => cmd.arg("-H").arg(format!("authorization: {auth}")),
    };
    cmd.arg(url);
    cmd
}

fn wrk_result(out: &std::process::Output) -> Result<WrkResult> {
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("wrk failed ({}):\n{text}", out.status));
    }
    parse_wrk(&text).map_err(|e| format!("wrk: {e}:\n{text}"))
}

/// Reads wrk's report; any non-2xx/3xx answer or socket error is an error.
fn parse_wrk(text: &str) -> Result<WrkResult> {
    let mut per_second = None;
    let mut p50_ms = None;
    let mut p99_ms = None;
    let mut requests = None;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        let second = words.next().unwrap_or("");
        if line.starts_with("Non-2xx or 3xx responses") {
            return Err("answers other than 2xx/3xx (a broken setup must not look fast)".into());
        } else if line.starts_with("Socket errors") {
            return Err("socket errors".into());
        } else if first == "Requests/sec:" {
            per_second = second.parse::<f64>().ok();
        } else if first == "50%" {
            p50_ms = latency_ms(second);
        } else if first == "99%" {
            p99_ms = latency_ms(second);
        } else if line.contains(" requests in ") {
            requests = first.parse::<u64>().ok();
        }
    }
    match (per_second, p50_ms, p99_ms, requests) {
        (Some(per_second), Some(p50_ms), Some(p99_ms), Some(requests)) if requests > 0 => {
            Ok(WrkResult {
                per_second,
                p50_ms,
                p99_ms,
                requests,
            })
        }
        _ => Err("unreadable report (no Requests/sec, 50%, 99% or request count)".into()),
    }
}

/// wrk's latency ("812.00us", "1.23ms", "1.05s", "1.20m") in milliseconds.
fn latency_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    match unit {
        "us" => Some(n / 1000.0),
        "ms" => Some(n),
        "s" => Some(n * 1000.0),
        "m" => Some(n * 60_000.0),
        _ => None,
    }
}

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

fn print_load_table(loads: &[Load], opts: &Options) {
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
    print_cpu_table(loads);
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
fn print_cpu_table(loads: &[Load]) {
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

    const REPORT: &str = "Running 10s test @ http://127.0.0.1:1/api/hello
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.52ms  300.00us   9.87ms   90.00%
    Req/Sec    10.50k   500.00    11.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.60ms
     90%    1.80ms
     99%    2.50ms
  104500 requests in 10.00s, 14.00MB read
Requests/sec:  10449.12
Transfer/sec:      1.40MB
";

    #[test]
    fn reads_a_wrk_report() {
        let r = parse_wrk(REPORT).unwrap();
        assert_eq!(r.requests, 104_500);
        assert!((r.per_second - 10449.12).abs() < 1e-9);
        assert!((r.p50_ms - 0.812).abs() < 1e-9);
        assert!((r.p99_ms - 2.5).abs() < 1e-9);
    }

    #[test]
    fn refuses_errors_in_a_wrk_report() {
        let bad = REPORT.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 3\nRequests/sec",
        );
        assert!(parse_wrk(&bad).is_err());
        let bad = REPORT.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 1, write 0, timeout 0\nRequests/sec",
        );
        assert!(parse_wrk(&bad).is_err());
        assert!(parse_wrk("").is_err());
    }

    #[test]
    fn reads_histogram_quantiles_and_openssl_speed() {
        let stats = "wasmcustom.portcullis.host_verify_nanoseconds: P0(nan,21000) P25(nan,23500) \
                     P50(nan,24500) P75(nan,26000) P90(nan,31000) P100(nan,90000)\n";
        let name = "wasmcustom.portcullis.host_verify_nanoseconds";
        assert_eq!(quantile(stats, name, "P50"), Some(24500.0));
        assert_eq!(quantile(stats, name, "P90"), Some(31000.0));
        assert_eq!(quantile("x: P50(nan,nan)", "x", "P50"), None);
        assert_eq!(quantile(stats, "other", "P50"), None);
        let report = "                   sign    verify    sign/s verify/s\n\
                      rsa 2048 bits 0.000646s 0.000019s   1548.0  52339.2\n";
        assert_eq!(openssl_verify_seconds(report), Some(0.000019));
        assert_eq!(openssl_verify_seconds("nothing"), None);
    }

    #[test]
    fn every_answer_must_be_counted() {
        let before = [("allowed", 10), ("hits", 5)];
        assert_eq!(
            counted_every_answer("v", &before, &[("allowed", 110), ("hits", 105)], 100),
            Ok(vec![100, 100])
        );
        assert_eq!(
            counted_every_answer("v", &before, &[("allowed", 110), ("hits", 104)], 100),
            Err("v: hits grew by 99 while wrk counted 100 answers".to_owned())
        );
    }

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

    #[test]
    fn reads_latency_units() {
        assert_eq!(latency_ms("500.00us"), Some(0.5));
        assert_eq!(latency_ms("2.00s"), Some(2000.0));
        assert_eq!(latency_ms("1.5x"), None);
    }
}
