//! `keshless-ops dev --once` through the binary, on a fresh demo database and
//! an empty state directory: every artefact of SPEC section 2 is written and
//! verifies, and a second run the same day runs nothing again; then, with
//! `dev` running and a clean shell that sourced `var/dev.env`, every line of
//! the README's runbook marked for the dev setup exits 0.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use keshless_ops::crypto::EnvelopeCodec;
use keshless_ops::jobs::secrets_backup::LATEST_KEY;
use keshless_ops::postgres::layout;
use keshless_ops::runtime::worker::{JOB_OUTCOME_FIELDS, JOB_SUCCEEDED};
use keshless_ops::storage::{BlobStore, BlobStoreExt, FileStore};
use secrecy::SecretString;

fn dev_once(state: &std::path::Path, demo_database: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keshless-ops"))
        .args(["dev", "--once", "--state-dir"])
        .arg(state)
        .args(["--demo-database", demo_database])
        .args(["--pubsub-port", "0", "--secret-manager-port", "0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DEV_POSTGRES_URL", common::admin_database_url())
        .env("PORT", "0")
        // Info from the worker: its job outcome lines, as JSON (stderr is a pipe).
        .env("RUST_LOG", "warn,keshless_ops::runtime::worker=info")
        .output()
        .expect("run keshless-ops dev")
}

async fn keys(store: &dyn BlobStore) -> BTreeSet<String> {
    common::all_keys(store).await
}

#[tokio::test]
async fn dev_once_writes_every_artefact_and_is_idempotent_the_same_day() {
    common::init_test_logs();
    let state = tempfile::tempdir().unwrap();
    let demo = format!("keshless_test_dev_{}", common::unique_suffix());
    // Dropped (WITH FORCE) at the end of the test, even on failure; dev creates it.
    let _guard = common::TestDatabase {
        name: demo.clone(),
        url: String::new(),
    };

    let output = dev_once(state.path(), &demo);
    let stdout = common::text(&output.stdout);
    assert!(
        output.status.success(),
        "dev --once failed:\n{stdout}\n{}",
        common::text(&output.stderr)
    );
    for job in [
        "postgres-backup",
        "secrets-backup",
        "documents-inventory",
        "cleanup-old-backups",
        "dr-drill",
    ] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(job))
            .unwrap_or_else(|| panic!("{job} missing from the summary:\n{stdout}"));
        assert!(line.contains(" ok ") && line.contains("succeeded"), "{line}");
    }

    let backups = FileStore::open(
        format!("file://{}", state.path().join("backups").display())
            .parse()
            .unwrap(),
    )
    .await
    .unwrap();

    // PostgreSQL: one complete daily backup that verifies.
    let listed = layout::list(&backups, Some(layout::Class::Daily)).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].is_complete());
    let manifest = listed[0].manifest.as_ref().unwrap();
    assert_eq!(manifest.database, demo);
    assert!(manifest
        .tables
        .iter()
        .any(|table| table.table == "transfers" && table.rows == 2000));
    layout::verify(&backups, &listed[0].id).await.expect("backup verifies");
    // The month's first backup was copied to monthly/.
    assert_eq!(
        layout::list(&backups, Some(layout::Class::Monthly))
            .await
            .unwrap()
            .len(),
        1
    );

    // Every run's last log line, as Cloud Logging and infra/monitoring.tf read it.
    let logs = common::text(&output.stderr);
    let succeeded: Vec<serde_json::Value> = logs
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON log line"))
        .filter(|line| line["message"] == JOB_SUCCEEDED)
        .collect();
    let weekly = keys(&backups)
        .await
        .into_iter()
        .find(|key| key.starts_with("secrets/weekly/"))
        .expect("a weekly secrets backup");
    let weekly_size = backups.get_bytes(&weekly, 1 << 20).await.unwrap().len() as u64;
    for (job, bytes) in [
        ("postgres-backup", manifest.size_bytes),
        ("secrets-backup", weekly_size),
        ("documents-inventory", 0),
        ("cleanup-old-backups", 0),
        ("dr-drill", 0),
    ] {
        let lines: Vec<&serde_json::Value> = succeeded.iter().filter(|line| line["job"] == job).collect();
        assert_eq!(lines.len(), 1, "one {JOB_SUCCEEDED:?} line for {job}:\n{logs}");
        let line = lines[0];
        assert_eq!(line["severity"], "INFO", "{line}");
        assert_eq!(line["outcome"], "succeeded", "{line}");
        assert_eq!(line["bytes"], bytes, "{job}: {line}");
        assert!(
            line["duration_seconds"].as_f64().is_some_and(|seconds| seconds > 0.0),
            "{line}"
        );
        for field in JOB_OUTCOME_FIELDS {
            // `database` only where there is one.
            if field != "database" {
                assert!(
                    line.get(field).is_some(),
                    "{job}: {field} missing at the top level: {line}"
                );
            }
        }
        match job {
            // The dump's database (postgres-backup always names it).
            "postgres-backup" => assert_eq!(
                line.get("database").and_then(|database| database.as_str()),
                Some(demo.as_str()),
                "{line}"
            ),
            _ => assert!(line.get("database").is_none(), "{line}"),
        }
    }

    // The dump is encrypted by default, to the development key in the state
    // directory, readable by its owner only (the dev drill decrypted it).
    assert!(manifest.dump.ends_with(".dump.zst.age"), "{}", manifest.dump);
    let age_key = state.path().join("dev-age-key.txt");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&age_key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let public = std::fs::read_to_string(&age_key)
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("# public key: ").map(str::to_owned))
        .unwrap();
    assert_eq!(manifest.encoding.encryption.as_ref().unwrap().recipients, [public]);

    // Secrets: the weekly and latest envelopes decrypt with the dev key.
    let dev_env = std::fs::read_to_string(state.path().join("dev.env")).unwrap();
    let key = dev_env
        .lines()
        .find_map(|line| line.strip_prefix("SECRETS_ENCRYPTION_KEY="))
        .map(|value| value.trim_matches('\''))
        .expect("dev.env holds the key");
    let latest = backups.get_bytes(LATEST_KEY, 1 << 20).await.unwrap();
    // dev backs up its Secret Manager fake's demo secrets (4 global, 1 regional).
    let contents = EnvelopeCodec::standard()
        .open_contents(&SecretString::from(key.to_owned()), &latest)
        .expect("latest decrypts");
    let keshless_ops::crypto::Contents::SecretManager(document) = contents else {
        panic!("dev's secrets backup is of Secret Manager");
    };
    let backup = keshless_ops::secret_manager::SecretManagerBackup::from_json(&document).unwrap();
    assert_eq!(backup.secrets.len(), 5, "{:?}", backup.names());
    assert_eq!(backup.counts().versions, 3 + 4 + 1);
    assert_eq!(backup.counts().enabled_versions, 3 + 2 + 1);

    // Documents: a complete inventory of the seeded documents.
    let date = keshless_ops::documents::layout::newest_complete(&backups)
        .await
        .unwrap()
        .expect("a complete inventory");
    let summary = keshless_ops::documents::layout::read_summary(&backups, date)
        .await
        .unwrap();
    assert_eq!(summary.object_count, 5);

    // The drill passed and wrote its report.
    let reports: Vec<String> = keys(&backups)
        .await
        .into_iter()
        .filter(|key| key.starts_with("drills/"))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&backups.get_bytes(&reports[0], 1 << 20).await.unwrap()).unwrap();
    assert_eq!(report["passed"], true, "{report:#}");
    let coverage = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["name"] == "secret-manager-coverage")
        .expect("the drill checks Secret Manager against the backup");
    assert!(
        coverage["detail"].as_str().unwrap().contains("all 5 secrets"),
        "{coverage:#}"
    );

    // Again the same day: every job's period already succeeded; nothing new is written.
    let before = keys(&backups).await;
    let output = dev_once(state.path(), &demo);
    let stdout = common::text(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", common::text(&output.stderr));
    assert_eq!(stdout.matches("already succeeded this period").count(), 5, "{stdout}");
    assert_eq!(keys(&backups).await, before);

    // From the demo to the runbook: dev keeps running (as `scripts/dev` in
    // one terminal), and a shell that sourced var/dev.env runs the runbook.
    run_the_runbook(state.path(), &demo);
}

/// The README's runbook lines marked for the dev setup: the ```sh blocks
/// preceded by a `<!-- dev: ... -->` comment, continuation lines joined.
fn runbook_lines_for_the_dev_setup() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let runbook = &readme[readme.find("\n## Operations runbook").expect("a runbook section")..];
    let runbook = &runbook[..runbook[3..].find("\n## ").map_or(runbook.len(), |end| end + 3)];
    let mut lines = Vec::new();
    let mut marked = false;
    let mut in_block = false;
    let mut pending = String::new();
    for line in runbook.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_block = !in_block && trimmed == "```sh";
            if !in_block {
                marked = false;
            }
            continue;
        }
        if !in_block {
            if trimmed.starts_with("<!-- dev:") {
                marked = true;
            } else if !trimmed.is_empty() {
                marked = false;
            }
            continue;
        }
        if !marked || trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                lines.push(std::mem::take(&mut pending));
            }
        }
    }
    lines
}

fn run_the_runbook(state: &std::path::Path, demo_database: &str) {
    use std::io::BufRead as _;
    let lines = runbook_lines_for_the_dev_setup();
    for expected in [
        "status",
        "drill",
        "cleanup",
        "backups verify",
        "secrets verify",
        "documents check",
        "dlq list",
        "publish",
    ] {
        assert!(
            lines
                .iter()
                .any(|line| line.contains(&format!("keshless-ops {expected}"))),
            "no runbook line for `keshless-ops {expected}` is marked for the dev setup: {lines:?}"
        );
    }
    let mut dev = Command::new(env!("CARGO_BIN_EXE_keshless-ops"))
        .args(["dev", "--state-dir"])
        .arg(state)
        .args(["--demo-database", demo_database])
        .args(["--pubsub-port", "0", "--secret-manager-port", "0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DEV_POSTGRES_URL", common::admin_database_url())
        .env("PORT", "0")
        // Info: PostgreSQL's notices reach the log at this level.
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start keshless-ops dev");
    let (ready_sender, ready) = std::sync::mpsc::channel();
    let stderr = dev.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("embedded scheduler running") {
                let _ = ready_sender.send(());
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    let started = ready.recv_timeout(std::time::Duration::from_secs(120)).is_ok();
    let stop = |mut dev: std::process::Child| {
        let _ = Command::new("kill").args(["-TERM", &dev.id().to_string()]).status();
        let _ = dev.wait();
    };
    if !started {
        stop(dev);
        panic!("dev did not start:\n{}", reader.join().unwrap());
    }
    let dev_env = state.join("dev.env");
    let environment = std::fs::read_to_string(&dev_env).unwrap();
    for name in [
        "JOB_SECRET",
        "SECRETS_ENCRYPTION_KEY",
        "DATABASE_URL",
        "BACKUP_STORE",
        "DOCUMENTS_STORE",
        "GCS_BACKUPS_BUCKET",
        "GCS_DOCUMENTS_BUCKET",
        "SECRETS_SOURCE",
        "PUBSUB_EMULATOR_HOST",
        "SECRET_MANAGER_EMULATOR_HOST",
        "BACKUP_AGE_IDENTITY_FILE",
    ] {
        assert!(
            environment.lines().any(|line| line.starts_with(&format!("{name}="))),
            "dev.env lacks {name}:\n{}",
            environment
                .lines()
                .map(|line| line.split('=').next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dev_env).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // A clean environment: PATH with the binary on it (as the README says), a
    // HOME and a working directory of its own, and what dev.env sets.
    let home = tempfile::tempdir().unwrap();
    let binary_directory = std::path::Path::new(env!("CARGO_BIN_EXE_keshless-ops"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        binary_directory.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut failures = Vec::new();
    for line in &lines {
        let script = format!("set -a\n. '{}'\nset +a\n{line}\n", dev_env.display());
        let output = Command::new("sh")
            .args(["-c", &script])
            .current_dir(home.path())
            .env_clear()
            .env("PATH", &path)
            .env("HOME", home.path())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run sh");
        if !output.status.success() {
            failures.push(format!(
                "`{line}` exited {:?}:\n{}{}",
                output.status.code(),
                common::text(&output.stdout),
                common::text(&output.stderr)
            ));
        }
    }
    // What the runbook published runs in dev's worker: let it finish (the
    // drill's scratch database is dropped) before stopping dev.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let script = format!(
            "set -a\n. '{}'\nset +a\nkeshless-ops status --json\n",
            dev_env.display()
        );
        let output = Command::new("sh")
            .args(["-c", &script])
            .env_clear()
            .env("PATH", &path)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run sh");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let running = report["jobs"].as_array().is_some_and(|jobs| {
            jobs.iter()
                .any(|job| job["ledger"]["running"].as_array().is_some_and(|runs| !runs.is_empty()))
        });
        if !running || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    stop(dev);
    let logs = reader.join().unwrap();
    assert!(failures.is_empty(), "{}\ndev:\n{logs}", failures.join("\n"));
    // A start on an existing ledger says nothing of refinery's history table.
    assert!(!logs.contains("refinery_schema_history"), "{logs}");
    // `restore secrets --latest --out secrets.json --format json` wrote a file only its owner reads.
    let restored = home.path().join("secrets.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&restored).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}
