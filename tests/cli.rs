//! The `keshless-ops` binary as an operator meets it: help, configuration
//! checks, the worker process with its signals and HTTP endpoints, publish
//! and the dead-letter tools, and honest failures for commands not built yet.

mod common;

use common::{keshless_ops, text};

use std::process::Command;

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
        "worker",
        "run",
        "publish",
        "recover",
        "dlq",
        "backups",
        "restore",
        "cleanup",
        "drill",
        "secrets",
        "status",
        "dev",
        "emulator",
        "config",
        "documents",
        "doctor",
    ] {
        assert!(
            help.contains(&format!("\n  {command} ")),
            "{command} missing from:\n{help}"
        );
    }
}

/// `recover` names every variable it reads in its help, and refuses an
/// environment without the vault or the key, naming each problem.
#[test]
fn recover_documents_its_variables_and_names_what_is_missing() {
    let output = keshless_ops(&["recover", "--help"], &[]);
    assert!(output.status.success());
    let help = text(&output.stdout);
    for variable in [
        "BACKUP_STORE",
        "GCS_BACKUPS_BUCKET",
        "STORAGE_EMULATOR_HOST",
        "SECRETS_ENCRYPTION_KEY",
        "BACKUP_AGE_IDENTITY_FILE",
        "BACKUP_AGE_IDENTITY_SECRET",
        "SECRET_MANAGER_EMULATOR_HOST",
        "SECRET_MANAGER_REQUESTS_PER_MINUTE",
        "RECOVER_TARGET_URL",
        "PG_RESTORE",
    ] {
        assert!(
            help.contains(variable),
            "{variable} missing from recover --help:\n{help}"
        );
    }
    let output = keshless_ops(
        &[
            "recover",
            "--project",
            "keshless-recovery",
            "--target-url",
            "mysql://nope",
            "--documents-bucket",
            "Not_A_Bucket",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(78));
    let stderr = text(&output.stderr);
    for problem in [
        "BACKUP_STORE",
        "SECRETS_ENCRYPTION_KEY",
        "--target-url",
        "--documents-bucket",
    ] {
        assert!(stderr.contains(problem), "{problem} missing from: {stderr}");
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
        .args(["emulator", "--port", "0", "--secret-manager-port", "0", "--bare"])
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the emulator");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first_line = String::new();
    stdout.read_line(&mut first_line).expect("read the address");
    let host = first_line
        .trim()
        .strip_prefix("PUBSUB_EMULATOR_HOST=")
        .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"))
        .to_owned();
    let mut second_line = String::new();
    stdout.read_line(&mut second_line).expect("read the address");
    let secret_manager = second_line
        .trim()
        .strip_prefix("SECRET_MANAGER_EMULATOR_HOST=")
        .unwrap_or_else(|| panic!("unexpected second line {second_line:?}"))
        .to_owned();
    // The Secret Manager fake answers beside it (empty: --bare).
    let listed: serde_json::Value = reqwest::get(format!("http://{secret_manager}/v1/projects/cli-test/secrets"))
        .await
        .expect("the Secret Manager fake answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed["secrets"], serde_json::json!([]), "{listed}");

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

// Multi-threaded: the test blocks on child processes that talk to the
// emulator running on this same runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_binary_serves_dead_letters_unknown_jobs_and_stops_on_sigterm() {
    use common::pubsub::{eventually, PubSubStack, StackOptions, PROJECT};
    use std::process::Stdio;
    use std::time::Duration;

    let stack = PubSubStack::start(StackOptions::default()).await;
    let database = common::TestDatabase::create().await;
    let port = common::free_port().to_string();
    let host = stack.host();
    let backups = tempfile::tempdir().unwrap();
    let backup_store = format!("file://{}", backups.path().display());
    let mut environment: Vec<(&str, &str)> = VALID
        .iter()
        .copied()
        .filter(|(name, _)| *name != "DATABASE_URL")
        .collect();
    environment.extend([
        ("DATABASE_URL", database.url.as_str()),
        ("PUBSUB_EMULATOR_HOST", host.as_str()),
        ("GOOGLE_CLOUD_PROJECT", PROJECT),
        ("PORT", port.as_str()),
        ("BACKUP_STORE", backup_store.as_str()),
        ("SHUTDOWN_GRACE_SECONDS", "2"),
        ("RUST_LOG", "info"),
    ]);
    let mut worker = Command::new(env!("CARGO_BIN_EXE_keshless-ops"))
        .arg("worker")
        .env_clear()
        .envs(environment.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the worker");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(20), "the worker is ready", || async {
        matches!(http.get(format!("{base}/readyz")).send().await, Ok(response) if response.status() == 200)
    })
    .await;

    // An unknown job: HTTP says so, and a message naming it is dead-lettered
    // (never acked as if it had run).
    let response = http
        .post(format!("{base}/backup-jobs/postgres-restore"))
        .header("X-Job-Secret", "job-secret-value-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let listed: serde_json::Value = response.json().await.unwrap();
    assert!(
        listed["jobs"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("postgres-backup")),
        "{listed}"
    );
    let published = keshless_ops(
        &["publish", "postgres-restore", "--param", "monthly=force"],
        &environment,
    );
    assert!(published.status.success(), "{}", text(&published.stderr));
    let message_id = text(&published.stdout).trim().to_owned();
    assert!(!message_id.is_empty());

    let mut letters = serde_json::Value::Null;
    eventually(Duration::from_secs(20), "the message reaches the DLQ", || {
        let output = keshless_ops(&["dlq", "list", "--json"], &environment);
        letters = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        let found = letters.as_array().is_some_and(|list| list.len() == 1);
        async move { found }
    })
    .await;
    let letter = &letters[0];
    assert_eq!(letter["job"], "postgres-restore", "{letters}");
    assert_eq!(letter["error_kind"], "invalid-message");
    assert_eq!(letter["original_message_id"], message_id.as_str());
    assert!(letter["error"].as_str().unwrap().contains("unknown job"), "{letter}");
    // No key was ever assigned (the message was invalid); replay recovers the
    // one the contract would have given it.
    let expected_key = format!("postgres-restore:msg:{message_id}");

    let dry_run = keshless_ops(&["dlq", "replay", "--all", "--dry-run"], &environment);
    assert!(dry_run.status.success(), "{}", text(&dry_run.stderr));
    let dry_run_text = text(&dry_run.stdout);
    assert!(
        dry_run_text.contains("0 replayed, 1 not replayed, 1 left"),
        "{dry_run_text}"
    );
    assert!(dry_run_text.contains(&expected_key), "{dry_run_text}");
    let no_selection = keshless_ops(&["dlq", "replay"], &environment);
    assert_eq!(no_selection.status.code(), Some(1));
    assert!(text(&no_selection.stderr).contains("--job, --key, or --all"));

    // Reviewed, it is discarded instead of replayed: recorded in the ledger
    // with the reason and who, then acknowledged; the list is empty after.
    let dead_letter_id = letter["message_id"].as_str().unwrap().to_owned();
    let no_reason = keshless_ops(&["dlq", "discard", &dead_letter_id, "--reason", " "], &environment);
    assert_eq!(no_reason.status.code(), Some(2), "{}", text(&no_reason.stderr));
    let unknown = keshless_ops(&["dlq", "discard", "no-such-letter", "--reason", "x"], &environment);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown.stderr).contains(&format!("waiting: {dead_letter_id} (-)")),
        "{}",
        text(&unknown.stderr)
    );
    let mut operator = environment.clone();
    operator.push(("USER", "oncall-ana"));
    let discarded = keshless_ops(
        &[
            "dlq",
            "discard",
            &dead_letter_id,
            "--reason",
            "published by mistake",
            "--json",
        ],
        &operator,
    );
    assert!(discarded.status.success(), "{}", text(&discarded.stderr));
    let report: serde_json::Value = serde_json::from_slice(&discarded.stdout).unwrap();
    assert_eq!(report["newly_recorded"], true, "{report}");
    let logged = text(&discarded.stderr);
    assert!(
        logged.contains("dead letter discarded") && logged.contains("published by mistake"),
        "{logged}"
    );
    let rows = database
        .connect()
        .await
        .query(
            "SELECT job, error_kind, reason, discarded_by, original_message_id \
             FROM keshless_ops.dead_letter_discards WHERE dead_letter_message_id = $1",
            &[&dead_letter_id],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let recorded: (String, String, String, String, String) = (
        rows[0].get(0),
        rows[0].get(1),
        rows[0].get(2),
        rows[0].get(3),
        rows[0].get(4),
    );
    assert_eq!(
        recorded,
        (
            "postgres-restore".into(),
            "invalid-message".into(),
            "published by mistake".into(),
            "oncall-ana".into(),
            message_id.clone()
        )
    );
    eventually(Duration::from_secs(10), "the dead letter is gone", || {
        let output = keshless_ops(&["dlq", "list", "--json"], &environment);
        let empty = serde_json::from_slice::<serde_json::Value>(&output.stdout)
            .is_ok_and(|listed| listed.as_array().is_some_and(Vec::is_empty));
        async move { empty }
    })
    .await;

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("keshless_ops_messages_total{action=\"dead_letter_invalid-message\"} 1"),
        "{metrics}"
    );

    let started = std::time::Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = worker.wait().expect("wait");
    assert!(status.success(), "worker exited with {status}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let mut logs = String::new();
    std::io::Read::read_to_string(worker.stderr.as_mut().unwrap(), &mut logs).unwrap();
    assert!(logs.contains("worker stopped"), "{logs}");
    assert!(
        !logs.contains("job-secret-value-7f3a"),
        "the job secret leaked into the logs"
    );
    assert!(!logs.contains("db-pass-9c1e"));
}

#[test]
fn run_without_a_reachable_ledger_fails_clearly() {
    let output = keshless_ops(&["run", "postgres-backup"], VALID);
    // The database in VALID is unreachable: the ledger error comes first and is clear.
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("ledger"), "{}", text(&output.stderr));
}
