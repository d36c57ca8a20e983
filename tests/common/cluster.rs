//! A PostgreSQL cluster of a test's own, started with `initdb` and `pg_ctl`
//! on a free port: for tests that restart a server, or that need a server
//! where the shared one's roles genuinely do not exist.

use std::path::PathBuf;
use std::process::Command;

/// A PostgreSQL cluster of this test's own (the shared one serves other
/// tests in parallel and must never be restarted), stopped when dropped.
pub struct PrivateCluster {
    directory: tempfile::TempDir,
    port: u16,
    binaries: PathBuf,
}

impl PrivateCluster {
    /// The directory of this cluster's server and client programs
    /// (`initdb`, `pg_dump`, `pg_restore`, ...).
    pub fn binaries(&self) -> &std::path::Path {
        &self.binaries
    }

    pub fn data(&self) -> PathBuf {
        self.directory.path().join("data")
    }

    /// Runs a PostgreSQL tool; as root, as the `postgres` user (initdb and
    /// the server refuse to run as root).
    pub fn run(binaries: &std::path::Path, tool: &str, arguments: &[&str]) -> std::process::Output {
        let program = binaries.join(tool);
        let as_root = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"));
        let mut command = if as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        let output = command
            .args(arguments)
            .output()
            .unwrap_or_else(|error| panic!("run {tool}: {error}"));
        assert!(
            output.status.success(),
            "{tool} {arguments:?} failed: {}{}",
            super::text(&output.stdout),
            super::text(&output.stderr)
        );
        output
    }

    fn server_options(&self) -> String {
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.directory.path().display()
        )
    }

    pub fn start() -> PrivateCluster {
        let binaries = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL binaries under /usr/lib/postgresql")
            .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
            .filter(|path| path.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let directory = tempfile::tempdir().unwrap();
        let owned = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(directory.path())
            .status();
        // Not root: chown fails and the directory is already ours.
        let _ = owned;
        let cluster = PrivateCluster {
            directory,
            port: super::free_port(),
            binaries,
        };
        let data = cluster.data();
        let data = data.to_str().unwrap();
        Self::run(
            &cluster.binaries,
            "initdb",
            &["-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
        );
        let log = cluster.directory.path().join("server.log");
        Self::run(
            &cluster.binaries,
            "pg_ctl",
            &[
                "-D",
                data,
                "-l",
                log.to_str().unwrap(),
                "-o",
                &cluster.server_options(),
                "-w",
                "start",
            ],
        );
        cluster
    }

    pub fn restart(&self) {
        let log = self.directory.path().join("server.log");
        Self::run(
            &self.binaries,
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &self.server_options(),
                "-m",
                "fast",
                "-w",
                "restart",
            ],
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = std::panic::catch_unwind(|| {
            Self::run(
                &self.binaries,
                "pg_ctl",
                &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"],
            )
        });
    }
}
