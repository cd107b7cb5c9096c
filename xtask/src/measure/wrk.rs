//! Running wrk (the load generator) and reading its report.

use std::path::Path;
use std::process::Command;

use super::cpu::Pinning;
use crate::Result;

/// wrk's version line, for the report.
pub fn version(wrk: &Path) -> String {
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

/// What one wrk run reports.
#[derive(Debug)]
pub struct WrkResult {
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
}

/// How a phase runs wrk: which binary, on which CPU, with how many connections (one thread)
/// and which authorization.
#[derive(Debug, Clone, Copy)]
pub struct Wrk<'a> {
    pub path: &'a Path,
    pub pinning: Option<&'a Pinning>,
    pub connections: u32,
    /// A header value, or `@script.lua` for a wrk script that sets it per request.
    pub auth: &'a str,
}

impl Wrk<'_> {
    /// Runs a [`Wrk::command`] to the end and reads its report.
    pub fn run(&self, seconds: u32, url: &str) -> Result<WrkResult> {
        let out = self
            .command(seconds, url)
            .output()
            .map_err(|e| format!("wrk: cannot start: {e}"))?;
        result(&out)
    }

    /// One wrk run of `seconds` against `url`, on the wrk CPU if pinned.
    pub fn command(&self, seconds: u32, url: &str) -> Command {
        let mut cmd = match self.pinning {
            Some(p) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &p.wrk.to_string()]).arg(self.path);
                c
            }
            None => Command::new(self.path),
        };
        let connections = self.connections;
        cmd.args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
            .arg("--latency");
        match self.auth.strip_prefix('@') {
            Some(script) => cmd.args(["-s", script]),
            None => cmd.arg("-H").arg(format!("authorization: {}", self.auth)),
        };
        cmd.arg(url);
        cmd
    }
}

/// The report of a finished wrk; a failed run is an error.
pub fn result(out: &std::process::Output) -> Result<WrkResult> {
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
    fn reads_latency_units() {
        assert_eq!(latency_ms("500.00us"), Some(0.5));
        assert_eq!(latency_ms("2.00s"), Some(2000.0));
        assert_eq!(latency_ms("1.5x"), None);
    }
}
