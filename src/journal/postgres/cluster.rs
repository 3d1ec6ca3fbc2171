//! A throw-away PostgreSQL cluster, for the tests and `steward bench`: `initdb` into a
//! temporary directory, the server listening only on a Unix socket there, stopped and
//! removed on drop. As root, the cluster runs as the `postgres` user (initdb refuses
//! root).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!(
            "steward-pg-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir(&dir)?;
        Ok(TempDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Cluster {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// Server settings, as `-c name=value` arguments.
    settings: Vec<String>,
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
    /// A running cluster for a test, or `None` (said on stderr) where PostgreSQL is not
    /// installed (unless `STEWARD_TEST_REQUIRE_POSTGRES` is set: then that fails the test).
    pub fn start() -> Option<Cluster> {
        match Self::start_with(&["-c", "fsync=off", "-c", "synchronous_commit=off"]) {
            Ok(c) => Some(c),
            Err(e) => {
                assert!(
                    std::env::var_os("STEWARD_TEST_REQUIRE_POSTGRES").is_none(),
                    "{e}, and STEWARD_TEST_REQUIRE_POSTGRES is set"
                );
                eprintln!("skipped: {e}; CI installs it");
                None
            }
        }
    }

    /// A running cluster with these server `settings` (`-c name=value` pairs).
    pub fn start_with(settings: &[&str]) -> Result<Cluster, String> {
        let Some(bin) = bin_dir() else {
            return Err(
                "no PostgreSQL server is installed (apt-get install postgresql)".to_string(),
            );
        };
        let as_postgres = nix::unistd::geteuid().is_root();
        let dir = TempDir::new().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
        if as_postgres {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .ok_or("no postgres user (it comes with the postgresql package)")?;
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))
                .map_err(|e| format!("cannot give the cluster's directory to postgres: {e}"))?;
        }
        let c = Cluster {
            dir,
            bin,
            // Only names the socket file, in the cluster's own directory: no clash.
            port: 5432,
            as_postgres,
            settings: settings.iter().map(|s| s.to_string()).collect(),
        };
        let data = c.data();
        let out = c
            .command(
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
            )
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if c.start_again() {
            return Ok(c);
        }
        Err(format!(
            "the PostgreSQL server did not start: {}",
            std::fs::read_to_string(c.dir.path().join("log")).unwrap_or_default()
        ))
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
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join(format!(".s.PGSQL.{}", self.port))
    }

    /// Start the server (again, after [`stop`](Self::stop)): whether it came up.
    pub fn start_again(&self) -> bool {
        let opts = format!(
            "-k {} -c listen_addresses='' -p {} {}",
            self.dir.path().display(),
            self.port,
            self.settings.join(" ")
        );
        let log = self.dir.path().join("log").display().to_string();
        let data = self.data();
        self.try_run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-o", &opts, "start"],
        )
    }

    /// Stop the server (its clients' connections end).
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
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.try_run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}
