//! The tools and servers the harness starts: a command run to completion, a command fed on
//! stdin, and a daemon with its log in a temporary directory, waited for over HTTP and
//! stopped on drop.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Runs `cmd` to completion; its output is the error when it fails.
pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Missing(format!("{what} did not start (is it installed?): {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Missing(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Runs `cmd` with `input` on its stdin; its status and output, whatever the status.
pub fn run_with_input(cmd: &mut Command, input: &[u8], what: &str) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Missing(format!("{what} did not start (is it installed?): {e}")))?;
    child
        .stdin
        .take()
        .ok_or_else(|| Error::Missing(format!("{what}: no stdin")))?
        .write_all(input)?;
    Ok(child.wait_with_output()?)
}

/// A server process writing to `<dir>/<what>.log`; killed, and its directory removed, on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    log: PathBuf,
    what: &'static str,
}

impl Daemon {
    /// Starts `cmd` (which keeps its state in `dir`). `package`: where the program comes from,
    /// for the error when it is not there.
    pub fn spawn(
        cmd: &mut Command,
        dir: tempfile::TempDir,
        what: &'static str,
        package: &str,
    ) -> Result<Self> {
        let log = dir.path().join(format!("{what}.log"));
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|e| Error::Missing(format!("{what} ({package}) did not start: {e}")))?;
        Ok(Self {
            child,
            dir,
            log,
            what,
        })
    }

    /// Waits until `url` answers 200, failing when the daemon exits or after 30 s.
    pub fn wait_http_ok(&mut self, url: &str) -> Result<()> {
        let agent = crate::http::agent(Duration::from_secs(2));
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Missing(format!(
                    "{} exited ({status}): {}",
                    self.what,
                    self.log()
                )));
            }
            if agent.get(url).call().is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(Error::Missing(format!(
            "{} did not answer within 30 s: {}",
            self.what,
            self.log()
        )))
    }

    /// The directory the daemon keeps its state in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the daemon has logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
