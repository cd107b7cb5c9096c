//! The first-sight phase of `cargo xtask measure`: every request carries a token the filters
//! have not seen recently, so every request verifies a signature; then the signature checks as
//! Portcullis timed them, against OpenSSL on the same CPU.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use harness::demo;
use harness::devkeys::DevIssuer;
use harness::envoy::{self, Envoy, Ports};
use portcullis_core::metrics;

use super::cpu::{self, Pinning};
use super::variant::{ALLOWED_STAT, NATIVE_ALLOWED_STAT, Variant};
use super::wrk::{Wrk, WrkResult};
use super::{COUNTS_SETTLE, LOAD_PATH, Options, WARMUP_SECONDS};
use crate::Result;

/// The counters each first-sight run of Portcullis must see grow: every answer allowed, and
/// with `verify_signature`, every signature confirmed by Envoy.
static HOST_CONFIRMED_STAT: LazyLock<String> =
    LazyLock::new(|| envoy::stat_name(metrics::HOST_VERIFY_CONFIRMED));
static VERIFIED_BY_HOST: LazyLock<[&'static str; 2]> =
    LazyLock::new(|| [ALLOWED_STAT.as_str(), HOST_CONFIRMED_STAT.as_str()]);
static ALLOWED_ONLY: LazyLock<[&'static str; 1]> = LazyLock::new(|| [ALLOWED_STAT.as_str()]);
/// The native module: every answer allowed, every signature confirmed by ring.
static NATIVE_RING_CONFIRMED_STAT: LazyLock<String> =
    LazyLock::new(|| envoy::native_stat_name(metrics::HOST_VERIFY_CONFIRMED));
static NATIVE_VERIFIED_BY_RING: LazyLock<[&'static str; 2]> = LazyLock::new(|| {
    [
        NATIVE_ALLOWED_STAT.as_str(),
        NATIVE_RING_CONFIRMED_STAT.as_str(),
    ]
});

/// What the phase measured, and the Portcullis instances it started for it.
pub struct FirstSight {
    /// One wrk run per measured Envoy, by name.
    pub rows: Vec<(&'static str, WrkResult)>,
    /// Portcullis with the token cache off: Envoy verifying RSA, then wasm verifying it.
    extra: Vec<Envoy>,
    pinning: Option<Pinning>,
}

impl FirstSight {
    /// The signature checks of the first-sight run as Portcullis timed them, on the instance
    /// that lets Envoy verify RSA.
    pub fn signature_check_times(&self) -> Result {
        match self.extra.first() {
            Some(host) => signature_check_times(host, self.pinning.as_ref()),
            None => Ok(()),
        }
    }
}

/// Every request carries a token the filters have not seen recently: `first_sight_tokens`
/// distinct tokens, cycled by a wrk script, more than any token cache here holds. Measures
/// signature verification under load: Portcullis with Envoy's `verify_signature` (default),
/// Portcullis with its own wasm-compiled RSA (`hostCrypto: false`), and jwt_authn+RBAC, against
/// the no-filter baseline; one round each.
pub fn run(
    proxies: &[(Variant, Envoy)],
    wrk: &Path,
    opts: &Options,
    issuer: &DevIssuer,
    wasm: &Path,
    native: &Path,
) -> Result<FirstSight> {
    // The script and its tokens stay on disk (in `_dir`) until the runs are over.
    let (_dir, script) = write_script(issuer, opts.first_sight_tokens)?;
    let pinning = cpu::pinning();
    let extra = start_uncached(issuer, wasm, native, pinning.as_ref())?;
    let auth = format!("@{}", script.display());
    let generator = Wrk {
        path: wrk,
        pinning: pinning.as_ref(),
        connections: opts.connections,
        auth: &auth,
    };
    let mut rows = Vec::new();
    let mut runs: Vec<(&'static str, &Envoy, &[&str])> = proxies
        .iter()
        .filter_map(|(v, p)| match v {
            Variant::NoFilter => Some((v.name(), p, &[][..])),
            Variant::NoopWasm => None,
            Variant::JwtAuthnRbac => Some((v.name(), p, &["http.ingress.rbac.allowed"][..])),
            Variant::Portcullis => None,
            // Measured with its token cache off, like Portcullis (below).
            Variant::Native => None,
        })
        .collect();
    if let [host, in_wasm, native] = extra.as_slice() {
        runs.push(("portcullis, verify_signature", host, &VERIFIED_BY_HOST[..]));
        runs.push(("portcullis, RSA in wasm", in_wasm, &ALLOWED_ONLY[..]));
        runs.push((
            "portcullis native, ring",
            native,
            &NATIVE_VERIFIED_BY_RING[..],
        ));
    }
    for (name, proxy, counters) in runs {
        let r = measure_one(name, proxy, counters, &generator, opts.seconds)?;
        rows.push((name, r));
    }
    Ok(FirstSight {
        rows,
        extra,
        pinning,
    })
}

/// Signs `n` distinct tokens and writes the wrk script that cycles through them, both into a
/// new temporary folder; returns the folder and the script's path.
fn write_script(issuer: &DevIssuer, n: u32) -> Result<(tempfile::TempDir, PathBuf)> {
    let started = Instant::now();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut lines = String::new();
    let t = harness::devkeys::now();
    for i in 0..n {
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
        "\nfirst sight: {n} distinct RS256 tokens signed in {:.1?}",
        started.elapsed()
    );
    Ok((dir, script))
}

/// Three more Portcullis instances with the token cache off (every request verifies a
/// signature): one lets Envoy verify RSA, one verifies in wasm, and the native module (ring).
fn start_uncached(
    issuer: &DevIssuer,
    wasm: &Path,
    native: &Path,
    pinning: Option<&Pinning>,
) -> Result<Vec<Envoy>> {
    let mut extra = Vec::new();
    for (host_crypto, module) in [(true, Some(wasm)), (false, Some(wasm)), (true, None)] {
        let ports = Ports::free().map_err(|e| e.to_string())?;
        let mut plugin = demo::plugin_config(issuer);
        if let Some(o) = plugin.as_object_mut() {
            o.insert("debugHeaders".into(), false.into());
            o.insert("hostCrypto".into(), host_crypto.into());
            o.insert("tokenCache".into(), serde_json::json!({"capacity": 0}));
        }
        let cfg = match module {
            Some(wasm) => envoy::config(ports, wasm, &plugin),
            None => envoy::native_config(ports, native, &plugin),
        }
        .map_err(|e| e.to_string())?;
        let mut proxy = Envoy::start(&cfg, ports, 1).map_err(|e| e.to_string())?;
        proxy
            .wait_ready(Duration::from_secs(120))
            .map_err(|e| e.to_string())?;
        if let Some(p) = pinning {
            p.pin(&proxy)?;
        }
        extra.push(proxy);
    }
    Ok(extra)
}

/// A warm-up and one measured run against `proxy`; each of `counters` must grow by at least
/// the answers wrk counted.
fn measure_one(
    name: &str,
    proxy: &Envoy,
    counters: &[&str],
    generator: &Wrk,
    seconds: u32,
) -> Result<WrkResult> {
    let read = |n: &str| proxy.stat(n).map_err(|e| e.to_string());
    // Warm-up with the same script (V8 tiers up the verification code too).
    generator
        .run(WARMUP_SECONDS, &proxy.url(LOAD_PATH))
        .map_err(|e| format!("{name} (warm-up): {e}"))?;
    std::thread::sleep(COUNTS_SETTLE);
    let mid: Vec<Option<u64>> = counters.iter().map(|n| read(n)).collect::<Result<_>>()?;
    let r = generator
        .run(seconds, &proxy.url(LOAD_PATH))
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
    Ok(r)
}

/// The signature checks of the first-sight run as Portcullis timed them (its `host_verify_nanoseconds`
/// histogram: one `verify_signature` call each, key parsing included), against OpenSSL's own
/// RSA-2048 verification on the same CPU.
fn signature_check_times(host: &Envoy, pinning: Option<&Pinning>) -> Result {
    let name = envoy::stat_name(metrics::HOST_VERIFY_NANOSECONDS);
    let name = name.as_str();
    // Envoy merges histogram samples at its stats flush (every 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    let (p50, p90) = loop {
        let text = host
            .admin(&format!("/stats?filter={name}"))
            .map_err(|e| e.to_string())?;
        if let (Some(p50), Some(p90)) = (quantile(&text, name, "P50"), quantile(&text, name, "P90"))
        {
            break (p50, p90);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no {name} samples after the first-sight run:\n{text}"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_histogram_quantiles_and_openssl_speed() {
        let stats = "wasmcustom.portcullis.host_verify_nanoseconds: P0(nan,21000) P25(nan,23500) \
                     P50(nan,24500) P75(nan,26000) P90(nan,31000) P100(nan,90000)\n";
        let name = &envoy::stat_name(metrics::HOST_VERIFY_NANOSECONDS);
        assert_eq!(quantile(stats, name, "P50"), Some(24500.0));
        assert_eq!(quantile(stats, name, "P90"), Some(31000.0));
        assert_eq!(quantile("x: P50(nan,nan)", "x", "P50"), None);
        assert_eq!(quantile(stats, "other", "P50"), None);
        let report = "                   sign    verify    sign/s verify/s\n\
                      rsa 2048 bits 0.000646s 0.000019s   1548.0  52339.2\n";
        assert_eq!(openssl_verify_seconds(report), Some(0.000019));
        assert_eq!(openssl_verify_seconds("nothing"), None);
    }
}
