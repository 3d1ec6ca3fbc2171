//! A throw-away PostgreSQL cluster for tests: `initdb` into a temporary directory, the
//! server listening only on a Unix socket there, stopped and removed on drop. As root,
//! the cluster runs as the `postgres` user (initdb refuses root).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// The newest installed server's programs (Debian: /usr/lib/postgresql/N/bin).
fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

impl Cluster {
    /// A running cluster, or `None` (said on stderr) where PostgreSQL is not installed.
    pub fn start() -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var_os("STEWARD_TEST_REQUIRE_POSTGRES").is_none(),
                "no PostgreSQL server installed, and STEWARD_TEST_REQUIRE_POSTGRES is set"
            );
            eprintln!(
                "skipped: no PostgreSQL server installed (apt-get install postgresql); CI installs it"
            );
            return None;
        };
        let as_postgres = nix::unistd::geteuid().is_root();
        let dir = tempfile::tempdir().expect("a temporary directory");
        if as_postgres {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("the postgres user (from the postgresql package)");
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))
                .expect("chown the cluster's directory");
        }
        let port = 20000 + (std::process::id() % 20000) as u16;
        let c = Cluster {
            dir,
            bin,
            port,
            as_postgres,
        };
        let data = c.data();
        c.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        // The socket is in the cluster's own directory, so the port (which only names
        // the socket file there) cannot clash with another cluster's.
        if c.start_again() {
            return Some(c);
        }
        panic!(
            "the test cluster did not start: {}",
            std::fs::read_to_string(c.dir.path().join("log")).unwrap_or_default()
        );
    }

    /// libpq-style connection parameters for the superuser's database.
    pub fn url(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.path().display(),
            self.port
        )
    }

    /// The server's socket.
    #[allow(dead_code)] // by the integration tests, which share this file
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join(format!(".s.PGSQL.{}", self.port))
    }

    /// Start the server (again, after [`stop`](Self::stop)): whether it came up.
    pub fn start_again(&self) -> bool {
        let opts = format!(
            "-k {} -c listen_addresses='' -p {} -c fsync=off -c synchronous_commit=off",
            self.dir.path().display(),
            self.port
        );
        let log = self.dir.path().join("log").display().to_string();
        let data = self.data();
        self.try_run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-o", &opts, "start"],
        )
    }

    /// Stop the server (its clients' connections end).
    #[allow(dead_code)] // by the integration tests, which share this file
    pub fn stop(&self) {
        let data = self.data();
        assert!(
            self.try_run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]),
            "pg_ctl stop failed"
        );
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.args(args).current_dir(Path::new("/"));
        cmd
    }

    fn try_run(&self, program: &str, args: &[&str]) -> bool {
        self.command(program, args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program, args).output().expect(program);
        assert!(
            out.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.try_run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}
