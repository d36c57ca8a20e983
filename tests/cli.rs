//! The `keshless-ops` binary as an operator meets it: help, configuration
//! checks, and honest failures for commands that are not built yet.

use std::process::{Command, Output};

fn keshless_ops(arguments: &[&str], environment: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keshless-ops"))
        .args(arguments)
        .env_clear()
        .envs(environment.iter().copied())
        .output()
        .expect("run keshless-ops")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const VALID: &[(&str, &str)] = &[
    ("JOB_SECRET", "job-secret-value-7f3a"),
    ("SECRETS_ENCRYPTION_KEY", "encryption-key-0123456789abcdefghijkl"),
    ("DATABASE_URL", "postgres://keshless:db-pass-9c1e@db.internal/keshless"),
    ("GCS_BACKUPS_BUCKET", "keshless-backups"),
    ("GCS_DOCUMENTS_BUCKET", "keshless-documents"),
    ("SECRETS_ENV_PREFIX", "KESHLESS_"),
];

#[test]
fn help_lists_every_subcommand() {
    let output = keshless_ops(&["--help"], &[]);
    assert!(output.status.success());
    let help = text(&output.stdout);
    for command in [
        "worker", "run", "publish", "dlq", "backups", "restore", "cleanup", "drill", "secrets", "status", "dev",
        "emulator", "config",
    ] {
        assert!(
            help.contains(&format!("\n  {command} ")),
            "{command} missing from:\n{help}"
        );
    }
}

#[test]
fn config_check_prints_the_configuration_redacted() {
    let output = keshless_ops(&["config", "--json"], VALID);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(shown["JOB_SECRET"], "[redacted]");
    assert_eq!(
        shown["DATABASE_URL"],
        "postgres://keshless:[redacted]@db.internal/keshless"
    );
    assert_eq!(shown["BACKUP_STORE"], "gs://keshless-backups");
    let everything = format!("{}{}", text(&output.stdout), text(&output.stderr));
    for secret in ["job-secret-value-7f3a", "encryption-key-0123456789", "db-pass-9c1e"] {
        assert!(!everything.contains(secret), "leaks {secret}");
    }
}

#[test]
fn config_check_lists_every_problem_and_exits_78() {
    let output = keshless_ops(
        &["config"],
        &[
            ("JOB_SECRET", "x"),
            ("SECRETS_ENCRYPTION_KEY", "too-short"),
            ("DATABASE_URL", "mysql://root:hunter2@db/app"),
            ("BACKUP_STORE", "s3://bucket"),
        ],
    );
    assert_eq!(output.status.code(), Some(78));
    let errors = text(&output.stderr);
    for expected in [
        "invalid configuration (6 problems)",
        "SECRETS_ENCRYPTION_KEY is too short",
        "DATABASE_URL: ",
        "GCS_BACKUPS_BUCKET is not set",
        "GCS_DOCUMENTS_BUCKET is not set",
        "BACKUP_STORE: ",
        "SECRETS_SOURCE=env needs",
    ] {
        assert!(errors.contains(expected), "{expected:?} missing from:\n{errors}");
    }
    assert!(!errors.contains("hunter2") && !errors.contains("too-short"), "{errors}");
}

#[test]
fn unbuilt_commands_fail_and_say_so() {
    for arguments in [
        &["worker"][..],
        &["status"],
        &["dlq", "list"],
        &["restore", "postgres", "--latest", "--target-url", "postgres://x@y/z"],
    ] {
        let output = keshless_ops(arguments, VALID);
        assert_eq!(output.status.code(), Some(1), "{arguments:?}");
        let errors = text(&output.stderr);
        assert!(
            errors.contains("is not implemented yet (tracked in issue #"),
            "{arguments:?}: {errors}"
        );
    }
}

#[test]
fn bad_arguments_are_usage_errors() {
    let output = keshless_ops(&["run", "postgres-backup", "--param", "novalue"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("is not KEY=VALUE"));
}

#[tokio::test]
async fn emulator_serves_until_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let mut child = Command::new(env!("CARGO_BIN_EXE_keshless-ops"))
        .args(["emulator", "--port", "0"])
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the emulator");
    let mut first_line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first_line)
        .expect("read the address");
    let host = first_line
        .trim()
        .strip_prefix("PUBSUB_EMULATOR_HOST=")
        .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"))
        .to_owned();

    let client = google_cloud_pubsub::client::Client::new(google_cloud_pubsub::client::ClientConfig {
        project_id: Some("cli-test".into()),
        environment: google_cloud_gax::conn::Environment::Emulator(host),
        ..Default::default()
    })
    .await
    .expect("client");
    let topic = client
        .create_topic("backup-jobs", None, None)
        .await
        .expect("create topic");
    assert!(topic.exists(None).await.expect("exists"));
    drop(topic);
    drop(client);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "emulator exited with {exit}");
}
