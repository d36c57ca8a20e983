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
        "invalid configuration (5 problems)",
        "SECRETS_ENCRYPTION_KEY is too short",
        "DATABASE_URL: ",
        // The bucket names matter only where a store is not a URL.
        "DOCUMENTS_STORE is not set: where the documents are",
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
    // `publish` refuses it locally (with the worker's words); gcloud does not.
    let refused = keshless_ops(
        &["publish", "postgres-restore", "--param", "monthly=force"],
        &environment,
    );
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("unknown job"),
        "{}",
        text(&refused.stderr)
    );
    let message_id = stack
        .publish(
            r#"{"job":"postgres-restore","params":{"monthly":"force"}}"#,
            &[("x-job-secret", "job-secret-value-7f3a"), ("source", "cli")],
        )
        .await;
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

// ------------------------------------------------ issue 22: the first hour

/// Every leaf subcommand as typed after `keshless-ops` (`backups verify`).
fn leaf_commands(command: &clap::Command, path: &str, leaves: &mut Vec<(String, clap::Command)>) {
    let mut subcommands = command
        .get_subcommands()
        .filter(|sub| sub.get_name() != "help")
        .peekable();
    if subcommands.peek().is_none() {
        leaves.push((path.to_owned(), command.clone()));
        return;
    }
    for subcommand in subcommands {
        let inner = if path.is_empty() {
            subcommand.get_name().to_owned()
        } else {
            format!("{path} {}", subcommand.get_name())
        };
        leaf_commands(subcommand, &inner, leaves);
    }
}

/// The variable names an "Environment" help section lists, one per line.
fn environment_section(help: &str) -> Option<std::collections::BTreeSet<String>> {
    let start = help.find("Environment")?;
    Some(
        help[start..]
            .lines()
            .skip(1)
            .filter_map(|line| line.strip_prefix("  "))
            .filter_map(|line| {
                let (name, rest) = line.split_once("  ")?;
                let rest = rest.trim_start();
                let is_name = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                (is_name && (rest.starts_with("required") || rest.starts_with("optional"))).then_some(name)
            })
            .map(str::to_owned)
            .collect(),
    )
}

#[test]
fn every_subcommand_help_lists_exactly_the_variables_it_reads() {
    use keshless_ops::config::variables;
    let mut leaves = Vec::new();
    leaf_commands(&keshless_ops::cli::Cli::command_with_environment(), "", &mut leaves);
    let paths: std::collections::BTreeSet<&str> = leaves.iter().map(|(path, _)| path.as_str()).collect();
    for expected in [
        "backups list",
        "backups show",
        "backups verify",
        "backups pin",
        "backups unpin",
        "dlq list",
        "dlq replay",
        "dlq discard",
        "documents url",
        "restore postgres",
        "restore secrets",
        "restore documents",
        "drill",
        "status",
    ] {
        assert!(paths.contains(expected), "{expected} is not a subcommand: {paths:?}");
    }
    let tabled: std::collections::BTreeSet<&str> = variables::COMMANDS.iter().map(|(path, _)| *path).collect();
    assert_eq!(
        paths, tabled,
        "the table of config::variables must have exactly the CLI's subcommands"
    );
    for (path, mut command) in leaves {
        let help = command.render_long_help().to_string();
        let listed = environment_section(&help).unwrap_or_else(|| panic!("{path}: no Environment section:\n{help}"));
        let table: std::collections::BTreeSet<String> = variables::variables(&path)
            .into_iter()
            .map(|variable| variable.name.to_owned())
            .collect();
        assert_eq!(listed, table, "{path} --help:\n{help}");
    }
    // The binary shows the same section.
    let output = keshless_ops(&["drill", "--help"], &[]);
    let help = text(&output.stdout);
    assert!(
        help.contains("DRILL_DATABASE_URL") && help.contains("required unless DATABASE_URL is set"),
        "{help}"
    );
    assert!(!help.contains("JOB_SECRET") && !help.contains("PUBSUB_"), "{help}");
}

#[test]
fn a_command_reports_every_missing_or_invalid_variable_it_reads_at_once() {
    let output = keshless_ops(
        &["dlq", "discard", "12345", "--reason", "poison"],
        &[("LEDGER_DATABASE_URL", "mysql://root:hunter2@db/ledger")],
    );
    assert_eq!(output.status.code(), Some(78));
    let errors = text(&output.stderr);
    assert!(errors.contains("invalid configuration (2 problems)"), "{errors}");
    assert!(errors.contains("JOB_SECRET is not set"), "{errors}");
    assert!(errors.contains("LEDGER_DATABASE_URL: "), "{errors}");
    assert!(!errors.contains("hunter2"), "{errors}");
    // Only what backups read: no job secret, no database, no encryption key.
    let output = keshless_ops(&["backups", "list"], &[]);
    assert_eq!(output.status.code(), Some(78));
    let errors = text(&output.stderr);
    assert!(
        errors.contains("invalid configuration (1 problem)") && errors.contains("BACKUP_STORE is not set"),
        "{errors}"
    );
    assert!(errors.contains("GCS_BACKUPS_BUCKET=BUCKET works too"), "{errors}");
}

#[tokio::test]
async fn the_drill_on_file_stores_needs_neither_the_job_secret_nor_bucket_names() {
    let (backups, _backups_directory) = common::file_store().await;
    let (documents, _documents_directory) = common::file_store().await;
    let backups_url = keshless_ops::storage::BlobStore::location(backups.as_ref()).to_string();
    let documents_url = keshless_ops::storage::BlobStore::location(documents.as_ref()).to_string();
    let database_url = common::admin_database_url();
    let output = keshless_ops(
        &["drill"],
        &[
            ("BACKUP_STORE", &backups_url),
            ("DOCUMENTS_STORE", &documents_url),
            ("DATABASE_URL", &database_url),
            ("SECRETS_ENCRYPTION_KEY", "encryption-key-0123456789abcdefghijkl"),
            ("PATH", &std::env::var("PATH").unwrap_or_default()),
        ],
    );
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    // An empty store fails the rehearsal itself (exit 1), never the configuration (78).
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stderr.contains("invalid configuration"), "{stderr}");
    assert!(stdout.contains("drill FAILED: postgres-restore"), "{stdout}");
}

#[test]
fn publish_refuses_an_unknown_job_or_parameter_with_the_workers_words() {
    // No emulator listens there: a refused message never reaches Pub/Sub.
    let environment = [
        ("JOB_SECRET", "job-secret-value-7f3a"),
        ("PUBSUB_EMULATOR_HOST", "127.0.0.1:9"),
    ];
    let output = keshless_ops(&["publish", "postgres-bakcup"], &environment);
    assert_eq!(output.status.code(), Some(2));
    let errors = text(&output.stderr);
    assert!(errors.contains("not published: job: "), "{errors}");
    for job in [
        "postgres-backup",
        "secrets-backup",
        "cleanup-old-backups",
        "documents-inventory",
        "dr-drill",
    ] {
        assert!(errors.contains(job), "{job} not listed among the accepted: {errors}");
    }
    assert!(errors.contains("error_kind=invalid-message"), "{errors}");
    assert!(!errors.contains("job-secret-value-7f3a"), "{errors}");

    let output = keshless_ops(&["publish", "postgres-backup", "--param", "montly=force"], &environment);
    assert_eq!(output.status.code(), Some(2));
    let errors = text(&output.stderr);
    assert!(errors.contains("params: unknown field `montly`"), "{errors}");
    assert!(errors.contains("monthly"), "the accepted fields are named: {errors}");
    let output = keshless_ops(
        &["publish", "postgres-backup", "--param", "monthly=sometimes"],
        &environment,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("monthly"), "{}", text(&output.stderr));
}

#[test]
fn every_date_flag_accepts_the_same_forms_and_names_them_when_refusing() {
    let accepted_forms = ["YYYY-MM-DD", "RFC 3339", "2026-11-26T03:00:00Z"];
    for arguments in [
        &[
            "restore",
            "postgres",
            "--date",
            "01-12-2026",
            "--target-url",
            "postgres://u@h/d",
        ][..],
        &["restore", "secrets", "--date", "01-12-2026", "--out", "x.env"],
        &["secrets", "verify", "--date", "2026/12/01"],
        &["backups", "verify", "--all", "--since", "yesterday"],
        &[
            "restore",
            "documents",
            "--prefix",
            "kyc/",
            "--as-of",
            "2026-11-26 03:00",
        ],
        &["restore", "documents", "--prefix", "kyc/", "--inventory", "26.11.2026"],
        &["documents", "check", "--inventory", "2026-13-01"],
    ] {
        let output = keshless_ops(arguments, &[]);
        assert_eq!(output.status.code(), Some(2), "{arguments:?}");
        let errors = text(&output.stderr);
        for form in accepted_forms {
            assert!(errors.contains(form), "{arguments:?}: {form} not named:\n{errors}");
        }
        assert!(!errors.contains("trailing input"), "{errors}");
    }
    // Both forms pass the parser everywhere (the commands then stop at the
    // configuration they lack, exit 78).
    for arguments in [
        &["restore", "documents", "--prefix", "kyc/", "--as-of", "2026-11-26"][..],
        &[
            "restore",
            "documents",
            "--prefix",
            "kyc/",
            "--inventory",
            "2026-11-26T03:00:00Z",
        ],
        &["backups", "verify", "--all", "--since", "2026-11-01T00:00:00+01:00"],
        &["restore", "secrets", "--date", "2026-11-22T04:00:00Z", "--out", "x.env"],
    ] {
        let output = keshless_ops(arguments, &[]);
        assert_eq!(
            output.status.code(),
            Some(78),
            "{arguments:?}: {}",
            text(&output.stderr)
        );
    }
}

#[tokio::test]
async fn verifying_an_unknown_backup_says_so_and_points_at_the_list() {
    let (store, _directory) = common::file_store().await;
    let location = keshless_ops::storage::BlobStore::location(store.as_ref()).to_string();
    let output = keshless_ops(
        &["backups", "verify", "daily/2026-11-26/keshless-20261126T020000Z"],
        &[("BACKUP_STORE", &location)],
    );
    assert_eq!(output.status.code(), Some(2));
    let errors = text(&output.stderr);
    assert!(
        errors.contains("no backup with id \"daily/2026-11-26/keshless-20261126T020000Z\""),
        "{errors}"
    );
    assert!(errors.contains("keshless-ops backups list"), "{errors}");
}

#[test]
fn config_lines_up_every_value_in_one_column() {
    // `config` lines up every name, however long.
    let output = keshless_ops(&["config"], VALID);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let shown = text(&output.stdout);
    let columns: std::collections::BTreeSet<usize> = shown
        .lines()
        .map(|line| {
            line.find("  ")
                .map(|gap| gap + line[gap..].len() - line[gap..].trim_start().len())
        })
        .map(Option::unwrap_or_default)
        .collect();
    assert_eq!(columns.len(), 1, "values start in one column:\n{shown}");
}
