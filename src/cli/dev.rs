//! `keshless-ops dev`: the whole system on one machine — the in-process
//! Pub/Sub emulator with the production topics and subscriptions, the
//! Secret Manager fake with demo secrets (the secrets backup's source unless
//! SECRETS_SOURCE says otherwise), the worker
//! with its HTTP endpoints, file:// stores under a local state directory, the
//! local PostgreSQL (a demo database is created when `DATABASE_URL` is not
//! set), and an embedded scheduler publishing the schedule table.
//! `--once` publishes every job now, waits for each, prints a summary and exits.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rand::Rng as _;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::emulator::secret_manager::{seed_demo, FakeConfig, SecretManagerFake};
use crate::emulator::{EmulatorConfig, RunningEmulator};
use crate::runtime::ledger::{Ledger, RunStatus};
use crate::runtime::{pubsub, scheduler};

/// Run everything locally: the in-process Pub/Sub emulator, file:// stores
/// under --state-dir, the local PostgreSQL (a demo database is created when
/// DATABASE_URL is not set), the worker with its HTTP endpoints (PORT, default
/// 8080), and an embedded scheduler publishing the production schedule.
/// Environment variables override every default (BACKUP_STORE,
/// DOCUMENTS_STORE, DATABASE_URL, SECRETS_SOURCE, ...).
#[derive(Debug, clap::Args)]
pub struct DevCmd {
    /// Publish every job once (in dependency order), wait for each, print a
    /// summary table and exit: 0 when all succeeded, 1 otherwise. Jobs whose
    /// period already succeeded (a second run the same day) are reported as
    /// done and not run again.
    #[arg(long)]
    pub once: bool,
    /// Where local state lives: backups/, documents/, and the generated dev
    /// secrets (dev.env, mode 0600).
    #[arg(long, default_value = "var")]
    pub state_dir: PathBuf,
    /// The demo database created on DEV_POSTGRES_URL's server when DATABASE_URL is not set.
    #[arg(long, default_value = "keshless_dev")]
    pub demo_database: String,
    /// How long --once waits for one job before giving up.
    #[arg(long, default_value_t = 600)]
    pub job_timeout_seconds: u64,
    /// Port of the in-process Pub/Sub emulator (another is chosen when it is
    /// taken; dev.env names the one in use). 0: any free port.
    #[arg(long, default_value_t = 8085)]
    pub pubsub_port: u16,
    /// Port of the in-process Secret Manager fake (the same rule).
    #[arg(long, default_value_t = 8086)]
    pub secret_manager_port: u16,
}

/// The order `--once` runs jobs in: the drill needs the backups first.
const ONCE_ORDER: [&str; 5] = [
    "postgres-backup",
    "secrets-backup",
    "documents-inventory",
    "cleanup-old-backups",
    "dr-drill",
];

/// The server a demo database is created on when `DATABASE_URL` is unset.
const DEFAULT_DEV_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

impl DevCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let state = std::path::absolute(&self.state_dir)
            .with_context(|| format!("--state-dir {}", self.state_dir.display()))?;
        for directory in ["backups", "documents"] {
            std::fs::create_dir_all(state.join(directory))
                .with_context(|| format!("cannot create {}", state.join(directory).display()))?;
        }
        let mut variables: HashMap<String, String> = std::env::vars().collect();
        let generated = dev_secrets(&state)?;
        for (name, value) in &generated {
            variables.entry(name.clone()).or_insert_with(|| value.clone());
        }
        if !variables.contains_key("DATABASE_URL") {
            let server = variables
                .get("DEV_POSTGRES_URL")
                .cloned()
                .unwrap_or_else(|| DEFAULT_DEV_POSTGRES_URL.to_owned());
            let url = ensure_demo_database(&server, &self.demo_database).await?;
            variables.insert("DATABASE_URL".into(), url);
        }
        // dev always uses its own in-process fakes, never a real project.
        let secret_manager =
            match SecretManagerFake::start(([127, 0, 0, 1], self.secret_manager_port).into(), FakeConfig::default())
                .await
            {
                Ok(fake) => fake,
                Err(error) if self.secret_manager_port != 0 => {
                    eprintln!(
                        "port {} is taken ({error}): the Secret Manager fake uses another; dev.env names it",
                        self.secret_manager_port
                    );
                    SecretManagerFake::start(([127, 0, 0, 1], 0).into(), FakeConfig::default()).await?
                }
                Err(error) => return Err(error).context("cannot start the in-process Secret Manager fake"),
            };
        secret_manager
            .with_store(|store| seed_demo(store, crate::runtime::pubsub::EMULATOR_PROJECT))
            .map_err(|error| anyhow!("cannot seed the demo secrets: {}", error.message))?;
        variables.insert("SECRET_MANAGER_EMULATOR_HOST".into(), secret_manager.host());
        match variables.get("SECRETS_SOURCE").map(String::as_str) {
            None => {
                variables.insert("SECRETS_SOURCE".into(), "secret-manager".into());
                variables
                    .entry("SECRETS_LOCATIONS".into())
                    .or_insert_with(|| "europe-west1".into());
            }
            Some("file") if !variables.contains_key("SECRETS_FILE") => {
                variables.insert("SECRETS_FILE".into(), demo_secrets_file(&state)?.display().to_string());
            }
            Some(_) => {}
        }
        seed_documents(&state.join("documents"))?;
        // Encrypted by default, as in production: a development key pair.
        if !variables.contains_key("BACKUP_ENCRYPTION_RECIPIENTS") {
            let (identity_file, public) = dev_age_key(&state)?;
            variables.insert("BACKUP_ENCRYPTION_RECIPIENTS".into(), public);
            variables
                .entry("BACKUP_AGE_IDENTITY_FILE".into())
                .or_insert_with(|| identity_file.display().to_string());
        }
        let defaults = [
            ("GCS_BACKUPS_BUCKET", "keshless-backups".to_owned()),
            ("GCS_DOCUMENTS_BUCKET", "keshless-documents".to_owned()),
            ("BACKUP_STORE", format!("file://{}", state.join("backups").display())),
            (
                "DOCUMENTS_STORE",
                format!("file://{}", state.join("documents").display()),
            ),
        ];
        for (name, value) in defaults {
            variables.entry(name.to_owned()).or_insert(value);
        }

        // dev always uses its own in-process emulator, never a real project.
        let emulator =
            match RunningEmulator::start(([127, 0, 0, 1], self.pubsub_port).into(), EmulatorConfig::default()).await {
                Ok(emulator) => emulator,
                Err(error) if self.pubsub_port != 0 => {
                    eprintln!(
                        "port {} is taken ({error}): the Pub/Sub emulator uses another; dev.env names it",
                        self.pubsub_port
                    );
                    RunningEmulator::start(([127, 0, 0, 1], 0).into(), EmulatorConfig::default()).await?
                }
                Err(error) => return Err(error).context("cannot start the in-process Pub/Sub emulator"),
            };
        super::emulator::create_topology(&emulator.host())
            .await
            .context("cannot create the topics and subscriptions")?;
        variables.insert("PUBSUB_EMULATOR_HOST".into(), emulator.host());
        // The fakes' project (Pub/Sub uses it too when none is given).
        variables.insert(
            "GOOGLE_CLOUD_PROJECT".into(),
            crate::runtime::pubsub::EMULATOR_PROJECT.into(),
        );

        let environment_file = state.join("dev.env");
        write_environment(&environment_file, &variables)?;
        let config = match Config::from_vars(variables) {
            Ok(config) => config,
            Err(error) => {
                eprintln!("{error}");
                return Ok(ExitCode::from(super::exit::CONFIG));
            }
        };
        eprintln!(
            "keshless-ops dev\n  database   {}\n  backups    {}\n  documents  {}\n  Pub/Sub    PUBSUB_EMULATOR_HOST={} (in-process)\n  Secret Manager SECRET_MANAGER_EMULATOR_HOST={} (in-process, demo secrets)\n  HTTP       port {}\n  shell      set -a; . {}; set +a   (every variable the runbook's commands need here)",
            config.database_url,
            config.backup_store,
            config.documents_store,
            emulator.host(),
            secret_manager.host(),
            config.port,
            environment_file.display()
        );

        let shutdown = CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                super::shutdown_signal().await;
                shutdown.cancel();
            }
        });
        let worker_stopped = CancellationToken::new();
        let worker = tokio::spawn({
            let config = config.clone();
            let shutdown = shutdown.clone();
            let worker_stopped = worker_stopped.clone();
            async move {
                let result = super::worker::serve(&config, shutdown).await;
                if let Err(error) = &result {
                    eprintln!("the worker stopped: {error:#}");
                }
                worker_stopped.cancel();
                result
            }
        });

        let code = if self.once {
            let outcome = run_once(
                &config,
                Duration::from_secs(self.job_timeout_seconds),
                &shutdown,
                &worker_stopped,
            )
            .await;
            shutdown.cancel();
            match outcome {
                Ok(rows) => {
                    print_summary(&rows);
                    if rows.iter().all(|row| row.ok) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(error) => {
                    eprintln!("dev --once: {error:#}");
                    ExitCode::FAILURE
                }
            }
        } else {
            let client = pubsub::connect(None, config.pubsub.emulator_host.as_deref()).await?;
            let publisher = client.topic(&config.pubsub.topic).new_publisher(None);
            eprintln!("embedded scheduler running (Ctrl-C to stop); publish now with `keshless-ops publish <job>` and the variables above");
            scheduler::run(
                publisher,
                config.job_secret.clone(),
                config.schedule_time_zone,
                config.databases.clone(),
                crate::clock::Clock::system(),
                shutdown.clone(),
            )
            .await;
            ExitCode::SUCCESS
        };
        match worker.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                eprintln!("worker: {error:#}");
                emulator.shutdown().await;
                return Ok(ExitCode::FAILURE);
            }
            Err(error) => return Err(anyhow!("worker task: {error}")),
        }
        emulator.shutdown().await;
        Ok(code)
    }
}

/// One line of the `--once` summary.
#[derive(Debug)]
struct Row {
    job: &'static str,
    ok: bool,
    outcome: String,
    duration: Duration,
    bytes: Option<u64>,
    object: Option<String>,
}

/// Publishes each job as Cloud Scheduler would and waits for its ledger row.
async fn run_once(
    config: &Config,
    timeout: Duration,
    shutdown: &CancellationToken,
    worker_stopped: &CancellationToken,
) -> anyhow::Result<Vec<Row>> {
    let ledger = Ledger::connect(&config.ledger_database_url)
        .await
        .with_context(|| format!("cannot open the ledger at {}", config.ledger_database_url))?;
    let client = pubsub::connect(None, config.pubsub.emulator_host.as_deref()).await?;
    let mut publisher = client.topic(&config.pubsub.topic).new_publisher(None);
    let mut rows = Vec::new();
    let now = chrono::Utc::now();
    let messages = ONCE_ORDER.iter().flat_map(|job| {
        scheduler::scheduled_messages(
            job,
            &config.databases,
            now,
            config.schedule_time_zone,
            &config.job_secret,
        )
    });
    for message in messages {
        let job = message.job;
        let key = message.idempotency_key().to_owned();
        let before = ledger.find(&key).await?;
        if let Some(run) = before.as_ref().filter(|run| run.status == RunStatus::Succeeded) {
            rows.push(row_from(
                job,
                true,
                "already succeeded this period".into(),
                Duration::ZERO,
                run.result.as_ref(),
            ));
            continue;
        }
        if let Some(run) = before.as_ref().filter(|run| run.status == RunStatus::DeadLettered) {
            // The worker acks a dead-lettered key as done; waiting would time out.
            rows.push(row_from(
                job,
                false,
                format!(
                    "dead-lettered earlier this period ({}); fix the cause, then `keshless-ops dlq replay --key {key}`",
                    run.last_error.clone().unwrap_or_default()
                ),
                Duration::ZERO,
                None,
            ));
            break;
        }
        let attempts_before = before.as_ref().map_or(0, |run| run.attempts);
        let started = Instant::now();
        pubsub::publish(&publisher, message.data, message.attributes)
            .await
            .with_context(|| format!("cannot publish {job}"))?;
        eprintln!("published {job} (key {key}); waiting for the worker");
        let row = loop {
            if shutdown.is_cancelled() {
                bail!("interrupted");
            }
            if worker_stopped.is_cancelled() {
                bail!("the worker stopped before {job} finished");
            }
            if started.elapsed() > timeout {
                break row_from(
                    job,
                    false,
                    format!("no result after {} s", timeout.as_secs()),
                    started.elapsed(),
                    None,
                );
            }
            match ledger.find(&key).await? {
                Some(run) if run.attempts > attempts_before && run.status != RunStatus::Running => {
                    let ok = run.status == RunStatus::Succeeded;
                    let outcome = if ok {
                        "succeeded".to_owned()
                    } else {
                        format!("{:?}: {}", run.status, run.last_error.clone().unwrap_or_default()).to_lowercase()
                    };
                    break row_from(job, ok, outcome, started.elapsed(), run.result.as_ref());
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let failed = !row.ok;
        rows.push(row);
        if failed {
            // Later jobs depend on earlier ones (the drill on the backups):
            // stop rather than report a cascade.
            break;
        }
    }
    publisher.shutdown().await;
    Ok(rows)
}

/// What the summary shows of a ledger result: bytes and the object written.
fn row_from(
    job: &'static str,
    ok: bool,
    outcome: String,
    duration: Duration,
    result: Option<&serde_json::Value>,
) -> Row {
    let details = result.and_then(|result| result.get("details"));
    let pick = |paths: &[&[&str]]| -> Option<serde_json::Value> {
        paths.iter().find_map(|path| {
            let mut value = details?;
            for field in *path {
                value = value.get(*field)?;
            }
            Some(value.clone())
        })
    };
    let bytes = pick(&[
        &["size_bytes"],
        &["latest", "bytes"],
        &["total_bytes"],
        &["bytes_freed"],
    ])
    .and_then(|value| value.as_u64());
    let object = pick(&[&["dump"], &["weekly", "key"], &["inventory"], &["report"]])
        .and_then(|value| value.as_str().map(str::to_owned));
    Row {
        job,
        ok,
        outcome,
        duration,
        bytes,
        object,
    }
}

fn print_summary(rows: &[Row]) {
    println!(
        "{:<20} {:<10} {:>9} {:>22}  object / outcome",
        "job", "result", "duration", "bytes"
    );
    for row in rows {
        println!(
            "{:<20} {:<10} {:>8.1}s {:>22}  {}",
            row.job,
            if row.ok { "ok" } else { "FAILED" },
            row.duration.as_secs_f64(),
            row.bytes.map(super::bytes_and_human).unwrap_or_else(|| "-".into()),
            match (&row.object, row.ok) {
                (Some(object), true) => format!("{object} ({})", row.outcome),
                _ => row.outcome.clone(),
            }
        );
    }
    let skipped = ONCE_ORDER.len() - rows.len();
    if skipped > 0 {
        println!("{skipped} later jobs not run: an earlier one failed");
    }
}

/// `dev.env` in the state directory: a generated JOB_SECRET and
/// SECRETS_ENCRYPTION_KEY for development, created once (mode 0600) so the
/// secrets backups of one run decrypt in the next.
fn dev_secrets(state: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let path = state.join("dev.env");
    if !path.exists() {
        let random = || hex::encode(rand::thread_rng().gen::<[u8; 24]>());
        let text = format!(
            "# Generated by `keshless-ops dev` for local development only.\nJOB_SECRET=dev-{}\nSECRETS_ENCRYPTION_KEY=dev-{}\n",
            random(),
            random()
        );
        write_private(&path, text.as_bytes())?;
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    // Only the generated secrets come back from the file: everything else in
    // it describes the previous run and is derived again.
    Ok(text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.trim(), unquote(value.trim())))
        .filter(|(name, _)| GENERATED_SECRETS.contains(name))
        .map(|(name, value)| (name.to_owned(), value))
        .collect())
}

/// The variables `dev` generates once and keeps in `dev.env`.
const GENERATED_SECRETS: [&str; 2] = ["JOB_SECRET", "SECRETS_ENCRYPTION_KEY"];

/// A value as `sh` reads it from between single quotes (what [`shell_quote`] writes).
fn unquote(value: &str) -> String {
    match value.strip_prefix('\'').and_then(|rest| rest.strip_suffix('\'')) {
        Some(inner) => inner.replace("'\\''", "'"),
        None => value.to_owned(),
    }
}

/// `value` in single quotes, for `sh`.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// Rewrites `dev.env` (mode 0600, through a temporary file) with every
/// variable of this setup that the CLI reads, so `set -a; . var/dev.env; set +a`
/// gives a shell everything the runbook's commands need here.
fn write_environment(path: &Path, variables: &HashMap<String, String>) -> anyhow::Result<()> {
    let mut names: Vec<&'static str> = crate::config::variables::variables("worker")
        .into_iter()
        .map(|variable| variable.name)
        .chain(["STORAGE_EMULATOR_HOST", "SECRET_MANAGER_EMULATOR_HOST"])
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut text = String::from(
        "# Generated by `keshless-ops dev` for local development only; rewritten on every start\n\
         # (JOB_SECRET and SECRETS_ENCRYPTION_KEY are kept). In a shell: set -a; . var/dev.env; set +a\n",
    );
    for name in names {
        if let Some(value) = variables.get(name).filter(|value| !value.is_empty()) {
            text.push_str(&format!("{name}={}\n", shell_quote(value)));
        }
    }
    let temporary = path.with_extension("env.tmp");
    let _ = std::fs::remove_file(&temporary);
    write_private(&temporary, text.as_bytes())?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Creates `path` (it must not exist) readable by its owner only.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `dev-age-key.txt` in the state directory: an age identity for development
/// (as `age-keygen` writes it, mode 0600), created once so the backups of one
/// run restore in the next. Returns its path and public key.
fn dev_age_key(state: &Path) -> anyhow::Result<(PathBuf, String)> {
    let path = state.join("dev-age-key.txt");
    if !path.exists() {
        let (identity, _) = crate::postgres::archive::generate_identity();
        write_private(&path, identity.as_bytes())?;
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let identities =
        crate::postgres::archive::Identities::parse(&text, &path.display().to_string()).map_err(anyhow::Error::msg)?;
    let public = identities.public_keys().remove(0);
    Ok((path, public))
}

/// Demo secrets for the `secrets-backup` job (file source), created once.
fn demo_secrets_file(state: &Path) -> anyhow::Result<PathBuf> {
    let path = state.join("dev-secrets.json");
    if !path.exists() {
        let random = || hex::encode(rand::thread_rng().gen::<[u8; 16]>());
        let secrets = serde_json::json!({
            "PAYMENT_GATEWAY_API_KEY": format!("pk_dev_{}", random()),
            "SMS_PROVIDER_TOKEN": random(),
            "WEBHOOK_SIGNING_SECRET": random(),
            "KYC_VENDOR_API_KEY": random(),
        });
        write_private(&path, serde_json::to_string_pretty(&secrets)?.as_bytes())?;
    }
    Ok(path)
}

/// A few documents under the production prefixes, when the directory is empty.
fn seed_documents(directory: &Path) -> anyhow::Result<()> {
    let empty = std::fs::read_dir(directory)?.next().is_none();
    if !empty {
        return Ok(());
    }
    for (name, body) in [
        ("kyc/user-1001/passport.jpg", "demo passport scan of user 1001"),
        ("kyc/user-1002/national-id.png", "demo national ID of user 1002"),
        ("selfies/user-1001.jpg", "demo selfie of user 1001"),
        ("vendor-kyc/vendor-77/registration.pdf", "demo company registration"),
        ("vendor-media/vendor-77/logo.png", "demo logo"),
    ] {
        let path = directory.join(name);
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Creates `name` on `server` with realistic demo tables, unless it exists;
/// returns its URL.
async fn ensure_demo_database(server: &str, name: &str) -> anyhow::Result<String> {
    let server_url: crate::config::DatabaseUrl = server
        .parse()
        .map_err(|problem| anyhow!("DEV_POSTGRES_URL: {problem}"))?;
    let target = server_url
        .with_database(name)
        .map_err(|problem| anyhow!("--demo-database: {problem}"))?;
    let admin = crate::postgres::connect(server_url.postgres_config())
        .await
        .map_err(|error| anyhow!("cannot reach PostgreSQL at {server_url} (start it, or set DATABASE_URL): {error}"))?;
    let exists: i64 = admin
        .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .get(0);
    if exists == 0 {
        admin
            .batch_execute(&format!("CREATE DATABASE {}", crate::postgres::quote_identifier(name)))
            .await
            .with_context(|| format!("cannot create the demo database {name}"))?;
        eprintln!("created the demo database {name} on {server_url}");
    }
    // In one transaction, and checked every run: an interrupted first run
    // must not leave an empty demo database that backs up "successfully".
    let demo = crate::postgres::connect(target.postgres_config())
        .await
        .map_err(|error| anyhow!("{error}"))?;
    let populated: bool = demo
        .query_one("SELECT to_regclass('payments.transfers') IS NOT NULL", &[])
        .await?
        .get(0);
    if !populated {
        demo.batch_execute(&format!("BEGIN; {DEMO_SCHEMA} COMMIT;"))
            .await
            .context("cannot create the demo tables")?;
    }
    Ok(target.expose().to_owned())
}

/// A small payments platform: users, wallets, transfers, KYC records.
const DEMO_SCHEMA: &str = r#"
CREATE SCHEMA payments;
CREATE TYPE payments.transfer_status AS ENUM ('pending', 'settled', 'reversed');
CREATE TABLE public.users (
    id bigserial PRIMARY KEY,
    phone text NOT NULL UNIQUE,
    full_name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE payments.wallets (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES public.users (id),
    currency char(3) NOT NULL DEFAULT 'SZL',
    balance numeric(14, 2) NOT NULL DEFAULT 0
);
CREATE TABLE payments.transfers (
    id bigserial PRIMARY KEY,
    from_wallet bigint NOT NULL REFERENCES payments.wallets (id),
    to_wallet bigint NOT NULL REFERENCES payments.wallets (id),
    amount numeric(14, 2) NOT NULL CHECK (amount > 0),
    status payments.transfer_status NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.kyc_records (
    user_id bigint PRIMARY KEY REFERENCES public.users (id),
    document_object text NOT NULL,
    verified boolean NOT NULL DEFAULT false
);
INSERT INTO public.users (phone, full_name)
    SELECT '+2687600' || lpad(i::text, 4, '0'), 'Demo User ' || i FROM generate_series(1, 200) AS i;
INSERT INTO payments.wallets (user_id, balance) SELECT id, (id * 37 % 5000) + 0.5 FROM public.users;
INSERT INTO payments.transfers (from_wallet, to_wallet, amount, status, metadata)
    SELECT 1 + i % 200, 1 + (i * 7) % 200, (i % 900) + 1.25,
           (ARRAY['pending', 'settled', 'reversed']::payments.transfer_status[])[1 + i % 3],
           jsonb_build_object('channel', CASE WHEN i % 2 = 0 THEN 'app' ELSE 'ussd' END)
    FROM generate_series(1, 2000) AS i;
INSERT INTO public.kyc_records SELECT id, 'kyc/user-' || id || '/passport.jpg', id % 3 <> 0 FROM public.users;
"#;
