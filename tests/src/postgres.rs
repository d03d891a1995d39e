//! A PostgreSQL server of its own (Debian's `postgresql` package), as the recipe in the project's
//! testing notes: initdb as the `postgres` user (it refuses root), trust auth, fsync off.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    host: String,
    pub port: u16,
}

fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.pop().unwrap_or_else(|| panic!("PostgreSQL server binaries missing: apt-get install postgresql (scripts/provision.sh does)"))
}

fn run(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn as_postgres(bin: &Path, tool: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
    c
}

impl Postgres {
    /// initdb and start a server on loopback; about a second.
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// The same, listening on `host` as well as loopback, and trusting clients from anywhere
    /// (pods of the test cluster reach the host's `KubeCluster::HOST_IP`).
    pub fn start_on(host: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nixcache-pg")
            .tempdir()
            .expect("tempdir");
        run(
            "chown",
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path()),
        );
        let bin = bin_dir();
        run(
            "initdb",
            as_postgres(&bin, "initdb")
                .arg("-D")
                .arg(dir.path().join("data"))
                .args(["-U", "postgres", "--auth=trust", "--no-sync"]),
        );
        if host != "127.0.0.1" {
            let hba = dir.path().join("data/pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
            rules.push_str("host all all 0.0.0.0/0 trust\n");
            std::fs::write(&hba, rules).expect("pg_hba.conf");
        }
        let mut pg = Self {
            dir,
            bin,
            host: host.to_string(),
            port: crate::free_port(),
        };
        // The port is picked free, then bound by the server: another process may take it in
        // between, so try again on another one.
        for _ in 0..3 {
            if pg
                .start_command()
                .output()
                .is_ok_and(|o| o.status.success())
            {
                return pg;
            }
            pg.port = crate::free_port();
        }
        pg.resume();
        pg
    }

    /// `postgres://` URL of the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@{}:{}/postgres", self.host, self.port)
    }

    /// Runs one SQL statement with psql; its rows, one per line, columns separated by `|`.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-At",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The server's log so far (statements too, once `log_statement` is set).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Stops the server (fast shutdown); `resume` starts it again on the same port with the same data.
    pub fn stop(&self) {
        run(
            "pg_ctl stop",
            as_postgres(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "fast", "-w", "stop"]),
        );
    }

    pub fn resume(&self) {
        run("pg_ctl start", &mut self.start_command());
    }

    fn start_command(&self) -> Command {
        let opts = format!(
            "-p {} -k {} -c listen_addresses={} -c fsync=off",
            self.port,
            self.dir.path().display(),
            if self.host == "127.0.0.1" {
                "127.0.0.1".to_string()
            } else {
                format!("127.0.0.1,{}", self.host)
            }
        );
        let mut cmd = as_postgres(&self.bin, "pg_ctl");
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-o", &opts, "-w", "-l"])
            .arg(self.dir.path().join("log"))
            .arg("start");
        cmd
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
