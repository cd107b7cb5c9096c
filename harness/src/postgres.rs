//! A private Postgres cluster for tests and the live demo: `initdb` into a temporary
//! directory, `pg_ctl start` on a free loopback port, stopped and removed on drop.
//!
//! The binaries come from `PORTCULLIS_PG_BIN` or the newest `/usr/lib/postgresql/*/bin`
//! (Debian's `postgresql` package, which `cargo xtask` installs when it is missing). Postgres
//! refuses to run as root; as root the cluster runs as the `postgres` user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::process::run;
use crate::{Error, Result};

/// Environment variable naming the directory of `initdb` and `pg_ctl`.
pub const PG_BIN_ENV: &str = "PORTCULLIS_PG_BIN";

/// A running cluster. Connect as user `postgres` (trust authentication, loopback only).
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

/// The directory with `initdb` and `pg_ctl`.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| missing())?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or_else(missing)
}

fn missing() -> Error {
    Error::Missing(format!(
        "Postgres server binaries not found (install Debian's `postgresql`, or set {PG_BIN_ENV}); \
         `cargo xtask test` installs it"
    ))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// Creates and starts a cluster; returns once it accepts connections.
    pub fn start() -> Result<Self> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("portcullis-pg-")
            .tempdir()?;
        let as_postgres = is_root();
        if as_postgres {
            run(
                Command::new("chown")
                    .args(["postgres:", "-R"])
                    .arg(dir.path()),
                "chown",
            )?;
        }
        let data = dir.path().join("data");
        let mut initdb = pg_command(as_postgres, &bin.join("initdb"));
        initdb
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data);
        run(&mut initdb, "initdb")?;
        // A port can be taken between probing and binding; try a few.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            match run(
                &mut start_command(as_postgres, &bin, dir.path(), port),
                "pg_ctl start",
            ) {
                Ok(()) => {
                    return Ok(Self {
                        bin,
                        dir,
                        port,
                        as_postgres,
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
        let log = std::fs::read_to_string(dir.path().join("postgres.log")).unwrap_or_default();
        Err(Error::Missing(format!(
            "Postgres did not start: {last}\n{log}"
        )))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` (created with [`Cluster::create_database`]).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?connect_timeout=5",
            self.port
        )
    }

    /// Creates a database (name: letters, digits, `_`).
    pub fn create_database(&self, name: &str) -> Result<String> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::Missing(format!("bad database name {name:?}")));
        }
        let mut createdb = pg_command(self.as_postgres, &self.bin.join("createdb"));
        createdb.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            name,
        ]);
        run(&mut createdb, "createdb")?;
        Ok(self.url(name))
    }

    /// The server log so far (for failing tests).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Starts the server again after [`Cluster::stop`], on the same port.
    pub fn restart(&self) -> Result<()> {
        run(
            &mut start_command(self.as_postgres, &self.bin, self.dir.path(), self.port),
            "pg_ctl start",
        )
    }

    /// Stops the server (`fast`: clients are disconnected, committed work is kept; the test
    /// cluster runs with `synchronous_commit=off`, so an immediate stop could lose commits).
    pub fn stop(&self) -> Result<()> {
        self.stop_mode("fast")
    }

    fn stop_mode(&self, mode: &str) -> Result<()> {
        let mut stop = pg_command(self.as_postgres, &self.bin.join("pg_ctl"));
        stop.args(["-w", "-m", mode, "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop");
        run(&mut stop, "pg_ctl stop")
    }

    /// For a cluster kept in a `static` (never dropped): a watchdog process stops the server
    /// and removes its directory once this process has exited.
    pub fn stop_when_process_exits(&self) -> Result<()> {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = format!(
            "{}{} -w -m immediate -D {} stop",
            if self.as_postgres {
                "runuser -u postgres -- "
            } else {
                ""
            },
            pg_ctl.display(),
            self.dir.path().join("data").display()
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}; rm -rf {dir}",
            pid = std::process::id(),
            dir = self.dir.path().display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(())
    }

    /// The data directory's parent (holds the socket and the log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop_mode("immediate");
    }
}

fn start_command(as_postgres: bool, bin: &Path, dir: &Path, port: u16) -> Command {
    let mut start = pg_command(as_postgres, &bin.join("pg_ctl"));
    start
        .args(["-w", "-t", "30", "-D"])
        .arg(dir.join("data"))
        .arg("-l")
        .arg(dir.join("postgres.log"))
        .arg("-o")
        .arg(format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            dir.display()
        ))
        .arg("start");
    start
}

fn pg_command(as_postgres: bool, program: &Path) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}
