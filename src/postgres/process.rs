//! `pg_dump` and `pg_restore` as child processes: streamed through pipes,
//! stderr captured into the error, exit status checked, killed on drop.

use std::process::{ExitStatus, Stdio};

use anyhow::anyhow;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::runtime::job::JobError;
use crate::storage::{stream_from_reader, ByteStream};

/// Keep the end of stderr: the last lines say why a tool failed.
const STDERR_LIMIT: usize = 16 * 1024;

/// Program names; overridable so a host can point at version-matched binaries
/// (`PG_DUMP`, `PG_RESTORE` environment variables).
pub fn pg_dump_program() -> String {
    std::env::var("PG_DUMP").unwrap_or_else(|_| "pg_dump".to_owned())
}

pub fn pg_restore_program() -> String {
    std::env::var("PG_RESTORE").unwrap_or_else(|_| "pg_restore".to_owned())
}

/// Reads a child's stderr in the background, keeping its last 16 KiB.
fn capture_stderr(child: &mut Child) -> JoinHandle<String> {
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let Some(mut stderr) = stderr else { return String::new() };
        let mut kept: Vec<u8> = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(read) = stderr.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            kept.extend_from_slice(&buffer[..read]);
            if kept.len() > STDERR_LIMIT * 2 {
                kept.drain(..kept.len() - STDERR_LIMIT);
            }
        }
        let start = kept.len().saturating_sub(STDERR_LIMIT);
        crate::config::redact_url(String::from_utf8_lossy(&kept[start..]).trim())
    })
}

fn describe(program: &str, status: ExitStatus, stderr: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "ended abnormally".to_owned(),
    };
    if stderr.is_empty() {
        format!("{program} {how}")
    } else {
        format!("{program} {how}: {stderr}")
    }
}

/// Whether a tool's stderr shows a failure retrying cannot fix.
pub fn is_permanent_failure(stderr: &str) -> bool {
    let stderr = stderr.to_ascii_lowercase();
    // Narrow on purpose: "relation ... does not exist" (a table dropped
    // mid-dump) and "invalid snapshot identifier" (the exporting connection
    // died) are retryable.
    let missing_role_or_database =
        (stderr.contains("role \"") || stderr.contains("database \"")) && stderr.contains("does not exist");
    missing_role_or_database
        || [
            "permission denied",
            "password authentication failed",
            "no password supplied",
            "server version mismatch",
        ]
        .iter()
        .any(|needle| stderr.contains(needle))
}

/// Starts `pg_dump --format=custom` on `snapshot` and returns its stdout as an
/// upload body. The body fails (so the upload is abandoned and nothing is
/// published) unless pg_dump exits 0; dropping it kills pg_dump.
/// `compress`: pg_dump's `--compress` argument, when not its default gzip.
pub fn spawn_dump(
    program: &str,
    environment: &[(&'static str, String)],
    snapshot: &str,
    compress: Option<&str>,
) -> Result<ByteStream, JobError> {
    let mut child = Command::new(program)
        .args(compress)
        .args([
            "--format=custom",
            "--no-password",
            &format!("--snapshot={snapshot}"),
            // The idempotency ledger may live in the same database: it is
            // operational state, not data to restore.
            "--exclude-schema=keshless_ops",
            // See the snapshot connection's lock_timeout: never wait forever.
            "--lock-wait-timeout=60s",
        ])
        .env_clear()
        .envs(environment.iter().map(|(name, value)| (*name, value.as_str())))
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| JobError::permanent(anyhow!("cannot start {program}: {error}")))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = capture_stderr(&mut child);
    let program = program.to_owned();
    let finish = futures::stream::once(async move {
        // Reached only after stdout ended; if the body is dropped earlier,
        // this future (and with it the child, kill_on_drop) is dropped too.
        let status = child.wait().await;
        let stderr = stderr.await.unwrap_or_default();
        match status {
            Ok(status) if status.success() => None,
            Ok(status) => Some(Err(std::io::Error::other(describe(&program, status, &stderr)))),
            Err(error) => Some(Err(std::io::Error::other(format!("waiting for {program}: {error}")))),
        }
    })
    .filter_map(futures::future::ready);
    Ok(stream_from_reader(stdout).chain(finish).boxed())
}

/// A running `pg_restore` reading a custom-format dump on stdin.
pub struct Restore {
    pub child: Child,
    stderr: JoinHandle<String>,
    program: String,
}

/// Where `pg_restore` reads the dump from.
#[derive(Debug, Clone)]
pub enum RestoreInput<'a> {
    /// Streamed on stdin, restored in one transaction: a failed restore
    /// leaves the target as it was.
    Stdin,
    /// A local file restored by `jobs` parallel workers. pg_restore cannot
    /// combine `--jobs` with `--single-transaction`: a failure can leave the
    /// target partly restored.
    File { path: &'a std::path::Path, jobs: u32 },
}

/// The arguments of a `pg_restore` run (without the program); without
/// `keep_owners`, everything belongs to the restoring user and no GRANT or
/// REVOKE is replayed (`--no-owner --no-privileges`).
/// `contents`: a `pg_restore -l` list to restore from (`-L`), entries left
/// out commented.
pub fn restore_arguments(
    database: &str,
    clean: bool,
    keep_owners: bool,
    contents: Option<&std::path::Path>,
    input: &RestoreInput<'_>,
) -> Vec<String> {
    let mut arguments = vec![
        format!("--dbname={database}"),
        "--no-password".to_owned(),
        "--exit-on-error".to_owned(),
    ];
    if let Some(contents) = contents {
        arguments.push(format!("--use-list={}", contents.display()));
    }
    if !keep_owners {
        arguments.push("--no-owner".to_owned());
        arguments.push("--no-privileges".to_owned());
    }
    match input {
        RestoreInput::Stdin => arguments.push("--single-transaction".to_owned()),
        RestoreInput::File { jobs, .. } => arguments.push(format!("--jobs={jobs}")),
    }
    if clean {
        arguments.push("--clean".to_owned());
        arguments.push("--if-exists".to_owned());
    }
    if let RestoreInput::File { path, .. } = input {
        arguments.push(path.display().to_string());
    }
    arguments
}

/// Starts `pg_restore` into `database` reading `input`.
pub fn spawn_restore(
    program: &str,
    environment: &[(&'static str, String)],
    database: &str,
    clean: bool,
    keep_owners: bool,
    contents: Option<&std::path::Path>,
    input: &RestoreInput<'_>,
) -> Result<Restore, anyhow::Error> {
    let stdin = match input {
        RestoreInput::Stdin => Stdio::piped(),
        RestoreInput::File { .. } => Stdio::null(),
    };
    let mut child = Command::new(program)
        .args(restore_arguments(database, clean, keep_owners, contents, input))
        .env_clear()
        .envs(environment.iter().map(|(name, value)| (*name, value.as_str())))
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so its --jobs workers can be stopped with it (see Drop).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| anyhow!("cannot start {program}: {error} (is it installed and on PATH?)"))?;
    let stderr = capture_stderr(&mut child);
    Ok(Restore {
        child,
        stderr,
        program: program.to_owned(),
    })
}

/// `pg_restore --list` of a custom-format archive read from `archive` (a
/// store download, or a file): its table of contents, which is at the start,
/// so the download stops as soon as pg_restore has read it.
pub async fn table_of_contents(program: &str, archive: ByteStream) -> Result<String, anyhow::Error> {
    list_archive(program, archive, false).await
}

/// [`table_of_contents`], but the archive is read to its end after
/// pg_restore has its table of contents (and whatever it says), so a hashing
/// or decoding stage upstream sees every byte: `backups verify` proves the
/// checksum and the structure in one pass.
pub async fn table_of_contents_reading_all(program: &str, archive: ByteStream) -> Result<String, anyhow::Error> {
    list_archive(program, archive, true).await
}

async fn list_archive(program: &str, mut archive: ByteStream, read_all: bool) -> Result<String, anyhow::Error> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = Command::new(program)
        .arg("--list")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| anyhow!("cannot start {program}: {error} (is it installed and on PATH?)"))?;
    let stderr = capture_stderr(&mut child);
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reading = tokio::spawn(async move {
        let mut listed = String::new();
        stdout.read_to_string(&mut listed).await.map(|_| listed)
    });
    let mut stdin = Some(child.stdin.take().expect("stdin is piped"));
    while let Some(chunk) = archive.next().await {
        let chunk = chunk.map_err(|error| anyhow!("reading the dump for its table of contents: {error}"))?;
        // pg_restore stops reading once it has the table of contents.
        let written = match stdin.as_mut() {
            Some(stdin) => stdin.write_all(&chunk).await.is_ok(),
            None => false,
        };
        if !written {
            stdin = None;
            if !read_all {
                break;
            }
        }
    }
    drop(stdin);
    drop(archive);
    let status = child.wait().await?;
    let listed = reading
        .await
        .map_err(|error| anyhow!("reading pg_restore --list: {error}"))??;
    if !status.success() {
        return Err(anyhow!(describe(program, status, &stderr.await.unwrap_or_default())));
    }
    Ok(listed)
}

/// A `pg_restore --list` with the policies named `(schema, table, policy)`
/// commented out, so `--use-list` restores everything else.
pub fn without_policies(listed: &str, policies: &[(&str, &str, &str)]) -> String {
    listed
        .lines()
        .map(|line| {
            let left_out = policies
                .iter()
                .any(|(schema, table, name)| line.contains(&format!(" POLICY {schema} {table} {name} ")));
            if left_out {
                format!(";{line}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

impl Restore {
    /// Waits for the exit; an error carries pg_restore's stderr.
    pub async fn finish(mut self) -> Result<(), anyhow::Error> {
        drop(self.child.stdin.take());
        let status = self.child.wait().await?;
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(anyhow!(describe(&self.program, status, &stderr)))
        }
    }
}

impl Drop for Restore {
    /// A restore dropped before it finished (an error elsewhere, Ctrl-C) stops
    /// pg_restore and, with `--jobs`, its worker processes: they are its own
    /// process group, and killing only the leader would leave workers writing
    /// to the target after the command said it stopped.
    fn drop(&mut self) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_arguments_follow_the_input() {
        let streamed = restore_arguments("app", false, true, None, &RestoreInput::Stdin);
        assert!(
            !streamed.contains(&"--no-owner".to_owned()),
            "owners are kept by default"
        );
        let anonymous = restore_arguments("app", false, false, None, &RestoreInput::Stdin);
        assert!(anonymous.contains(&"--no-owner".to_owned()) && anonymous.contains(&"--no-privileges".to_owned()));
        assert!(streamed.contains(&"--single-transaction".to_owned()));
        assert!(!streamed.iter().any(|argument| argument.starts_with("--jobs")));
        assert!(!streamed.contains(&"--clean".to_owned()));

        let path = std::path::Path::new("/tmp/x.dump");
        let parallel = restore_arguments("app", true, true, None, &RestoreInput::File { path, jobs: 4 });
        assert!(parallel.contains(&"--jobs=4".to_owned()));
        assert!(
            !parallel.contains(&"--single-transaction".to_owned()),
            "pg_restore refuses --jobs with --single-transaction"
        );
        assert!(parallel.contains(&"--clean".to_owned()) && parallel.contains(&"--if-exists".to_owned()));
        assert_eq!(
            parallel.last().map(String::as_str),
            Some("/tmp/x.dump"),
            "the file is the last argument"
        );
        assert!(parallel.contains(&"--exit-on-error".to_owned()));
    }

    #[test]
    fn permanent_failures_are_recognised() {
        for stderr in [
            "pg_dump: error: query failed: ERROR:  permission denied for table users",
            "pg_dump: error: connection to server failed: FATAL:  password authentication failed for user \"x\"",
            "pg_dump: error: connection failed: FATAL:  database \"nope\" does not exist",
            "pg_dump: error: connection failed: FATAL:  role \"nobody\" does not exist",
            "pg_dump: error: aborting because of server version mismatch",
        ] {
            assert!(is_permanent_failure(stderr), "{stderr}");
        }
        for stderr in [
            "pg_dump: error: connection to server at \"db\" failed: Connection refused",
            "pg_dump: error: Dumping the contents of table \"x\" failed: server closed the connection unexpectedly",
            "pg_dump: error: query failed: ERROR:  relation with OID 16384 does not exist",
            "pg_dump: error: query failed: ERROR:  invalid snapshot identifier: \"00000003-1\"",
            "pg_dump: error: could not obtain lock on relation \"public.t\"",
            "",
        ] {
            assert!(!is_permanent_failure(stderr), "{stderr}");
        }
    }
}
