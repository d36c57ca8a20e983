//! Secrets backup and recovery (issue 6): the envelope's errors and
//! properties, the job through both storage backends, the compatibility test
//! vector, the CLI binary (`restore secrets`, `secrets verify|rekey`), and a
//! log capture proving no secret value is ever logged.
//!
//! Argon2id at production cost runs only where production code paths demand
//! it (the test vector, the job feeding the binary, the binary itself); the
//! rest uses `KdfParams::INSECURE_FOR_TESTS`.

mod common;

use common::{keshless_ops, text};

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use keshless_ops::crypto::{DerivedKey, EnvelopeCodec, EnvelopeError, KdfParams, SecretMap};
use keshless_ops::jobs::secrets_backup::{SecretsBackup, LATEST_KEY};
use keshless_ops::jobs::secrets_source::{EnvSource, FileSource};
use keshless_ops::runtime::job::{Job, JobError, RunContext};
use keshless_ops::storage::{BlobStore, BlobStoreExt, WriteMode};
use proptest::prelude::*;
use secrecy::{ExposeSecret, SecretString};

const KEY: &str = "test-passphrase-for-secrets-0123456789";
const OTHER_KEY: &str = "another-passphrase-for-secrets-9876543210";
const VECTOR_KEY: &str = "keshless-test-vector-key-0123456789abcdef";
const VECTOR_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/secrets-v1.json.encrypted");
const WEEKLY: &str = "secrets/weekly/2026-11-29.json.encrypted";

fn key(text: &str) -> SecretString {
    SecretString::from(text.to_owned())
}

fn fast_codec() -> EnvelopeCodec {
    EnvelopeCodec::with_params(KdfParams::INSECURE_FOR_TESTS, KdfParams::INSECURE_FOR_TESTS)
}

fn sunday() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, 4, 0, 0).unwrap()
}

fn context() -> RunContext {
    RunContext {
        job: "secrets-backup",
        idempotency_key: "secrets-backup:2026-W48".into(),
        message_id: None,
        source: "cli".into(),
        requested_by: None,
        attempt: 1,
        cancel: Default::default(),
    }
}

/// Values chosen to be unmistakable in any log line.
fn sample_variables() -> Vec<(&'static str, &'static str)> {
    vec![
        ("KESHLESS_DB_PASSWORD", "pw-7c1f0e9a-VALUE"),
        ("KESHLESS_API_TOKEN", "tok 'quoted' $dollar-VALUE"),
        ("KESHLESS_MULTILINE", "line-one-VALUE\nline-two-VALUE"),
        ("UNRELATED", "not-backed-up"),
    ]
}

fn env_job(store: Arc<dyn BlobStore>, codec: EnvelopeCodec) -> SecretsBackup {
    SecretsBackup::new(
        store,
        Box::new(EnvSource::with_variables(
            vec!["KESHLESS_DB_PASSWORD".into()],
            Some("KESHLESS_".into()),
            sample_variables(),
        )),
        key(KEY),
        chrono_tz::UTC,
    )
    .with_codec(codec)
    .with_clock(keshless_ops::clock::Clock::from_fn(sunday))
}

common::on_both_backends!(
    backup_round_trips_through_storage,
    rerun_on_the_same_day_is_idempotent,
    existing_weekly_under_another_key_is_permanent,
);

async fn backup_round_trips_through_storage(store: Arc<impl BlobStore + 'static>) {
    let job = env_job(store.clone(), fast_codec());
    let outcome = job.run(&context(), Default::default()).await.expect("backup");
    assert_eq!(outcome.details["count"], 3);
    assert_eq!(
        outcome.details["names"],
        serde_json::json!(["KESHLESS_API_TOKEN", "KESHLESS_DB_PASSWORD", "KESHLESS_MULTILINE"])
    );
    assert_eq!(outcome.details["weekly"]["key"], WEEKLY);
    assert_eq!(outcome.details["weekly"]["result"]["status"], "created");
    let ledger = outcome.details.to_string() + &outcome.summary;
    for (_, value) in sample_variables() {
        assert!(!ledger.contains(value), "ledger result contains a value");
    }
    let weekly = store.get_bytes(WEEKLY, 1 << 20).await.unwrap();
    let latest = store.get_bytes(LATEST_KEY, 1 << 20).await.unwrap();
    assert_eq!(weekly, latest, "latest is the weekly envelope");
    let secrets = fast_codec().open(&key(KEY), &weekly).expect("decrypt");
    assert_eq!(
        secrets.get("KESHLESS_MULTILINE").unwrap().expose_secret(),
        "line-one-VALUE\nline-two-VALUE"
    );
    assert!(!secrets.contains("UNRELATED"));
}

async fn rerun_on_the_same_day_is_idempotent(store: Arc<impl BlobStore + 'static>) {
    env_job(store.clone(), fast_codec())
        .run(&context(), Default::default())
        .await
        .expect("first run");
    let first = store.get_bytes(WEEKLY, 1 << 20).await.unwrap();
    let outcome = env_job(store.clone(), fast_codec())
        .run(&context(), Default::default())
        .await
        .expect("rerun");
    assert_eq!(outcome.details["weekly"]["result"]["status"], "existing");
    assert_eq!(
        store.get_bytes(WEEKLY, 1 << 20).await.unwrap(),
        first,
        "weekly never rewritten"
    );

    // Same day, a secret rotated: the weekly object stays, latest gets the new value.
    let rotated = SecretsBackup::new(
        store.clone(),
        Box::new(EnvSource::with_variables(
            vec![],
            Some("KESHLESS_".into()),
            [("KESHLESS_DB_PASSWORD", "rotated-VALUE"), ("KESHLESS_API_TOKEN", "tok")],
        )),
        key(KEY),
        chrono_tz::UTC,
    )
    .with_codec(fast_codec())
    .with_clock(keshless_ops::clock::Clock::from_fn(sunday));
    let outcome = rotated
        .run(&context(), Default::default())
        .await
        .expect("rotated rerun");
    let result = &outcome.details["weekly"]["result"];
    assert_eq!(result["status"], "existing-differs");
    assert_eq!(result["removed"], serde_json::json!(["KESHLESS_MULTILINE"]));
    assert_eq!(
        result["changed"],
        serde_json::json!(["KESHLESS_API_TOKEN", "KESHLESS_DB_PASSWORD"])
    );
    assert!(!outcome.details.to_string().contains("rotated-VALUE"));
    let latest = fast_codec()
        .open(&key(KEY), &store.get_bytes(LATEST_KEY, 1 << 20).await.unwrap())
        .unwrap();
    assert_eq!(
        latest.get("KESHLESS_DB_PASSWORD").unwrap().expose_secret(),
        "rotated-VALUE"
    );
}

async fn existing_weekly_under_another_key_is_permanent(store: Arc<impl BlobStore + 'static>) {
    let foreign = fast_codec()
        .seal(&key(OTHER_KEY), &[("A", "1")].into_iter().collect(), sunday())
        .unwrap();
    store
        .put_bytes(WEEKLY, Bytes::from(foreign), WriteMode::CreateOnly)
        .await
        .unwrap();
    let error = env_job(store.clone(), fast_codec())
        .run(&context(), Default::default())
        .await
        .unwrap_err();
    assert!(matches!(error, JobError::Permanent(_)), "{error}");
    let message = error.to_string();
    assert!(message.contains("wrong key"), "{message}");
    assert!(message.contains(WEEKLY), "{message}");
    assert!(store.stat(LATEST_KEY).await.unwrap().is_none(), "latest untouched");
}

#[tokio::test]
async fn missing_listed_variables_are_a_permanent_error_naming_them() {
    let (store, _directory) = common::file_store().await;
    let job = SecretsBackup::new(
        store.clone(),
        Box::new(EnvSource::with_variables(
            vec!["PRESENT".into(), "ABSENT_ONE".into(), "ABSENT_TWO".into()],
            None,
            [("PRESENT", "present-VALUE")],
        )),
        key(KEY),
        chrono_tz::UTC,
    )
    .with_codec(fast_codec());
    let error = job.run(&context(), Default::default()).await.unwrap_err();
    assert!(matches!(error, JobError::Permanent(_)));
    let message = error.to_string();
    assert!(message.contains("ABSENT_ONE, ABSENT_TWO"), "{message}");
    assert!(!message.contains("present-VALUE"));
    assert!(store.stat(LATEST_KEY).await.unwrap().is_none());

    let empty = SecretsBackup::new(
        store.clone(),
        Box::new(EnvSource::with_variables(vec![], Some("NOPE_".into()), [("A", "1")])),
        key(KEY),
        chrono_tz::UTC,
    )
    .with_codec(fast_codec());
    let error = empty.run(&context(), Default::default()).await.unwrap_err();
    assert!(matches!(error, JobError::Permanent(_)));
    assert!(error.to_string().contains("is empty"), "{error}");
}

#[tokio::test]
async fn file_sources_json_and_dotenv_and_unreadable() {
    let (store, directory) = common::file_store().await;
    let dotenv = directory.path().join("secrets.env");
    std::fs::write(&dotenv, "# app\nexport DB_PASSWORD='p w'\nTOKEN=t0k\n").unwrap();
    let json = directory.path().join("secrets.json");
    std::fs::write(&json, r#"{"DB_PASSWORD": "p w", "TOKEN": "t0k"}"#).unwrap();
    for path in [dotenv, json] {
        let job = SecretsBackup::new(
            store.clone(),
            Box::new(FileSource { path: path.clone() }),
            key(KEY),
            chrono_tz::UTC,
        )
        .with_codec(fast_codec())
        .with_clock(keshless_ops::clock::Clock::from_fn(sunday));
        let outcome = job.run(&context(), Default::default()).await.expect("backup");
        assert_eq!(outcome.details["names"], serde_json::json!(["DB_PASSWORD", "TOKEN"]));
    }
    let missing = directory.path().join("absent.env");
    let job = SecretsBackup::new(store, Box::new(FileSource { path: missing }), key(KEY), chrono_tz::UTC)
        .with_codec(fast_codec());
    let error = job.run(&context(), Default::default()).await.unwrap_err();
    assert!(matches!(error, JobError::Permanent(_)));
    assert!(error.to_string().contains("absent.env"), "{error}");
}

// ---------------------------------------------------------------- envelope

fn sealed_sample() -> Vec<u8> {
    let secrets: SecretMap = [("A", "alpha-VALUE"), ("B", "beta-VALUE")].into_iter().collect();
    fast_codec().seal(&key(KEY), &secrets, sunday()).unwrap()
}

fn edit(bytes: &[u8], change: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut document: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    change(&mut document);
    serde_json::to_vec(&document).unwrap()
}

fn open_error(bytes: &[u8]) -> (EnvelopeError, String) {
    let error = fast_codec().open(&key(KEY), bytes).unwrap_err();
    let message = error.to_string();
    (error, message)
}

#[test]
fn each_failure_has_its_own_clear_error() {
    let good = sealed_sample();
    assert_eq!(fast_codec().open(&key(KEY), &good).unwrap().len(), 2);

    let error = fast_codec().open(&key(OTHER_KEY), &good).unwrap_err();
    assert_eq!(error, EnvelopeError::WrongKey);
    assert!(error
        .to_string()
        .starts_with("wrong key: the key fingerprint does not match"));

    let (error, message) = open_error(&good[..good.len() / 2]);
    assert!(matches!(error, EnvelopeError::Truncated(_)));
    assert!(message.contains("truncated or not valid JSON"), "{message}");

    let flipped = edit(&good, |document| {
        let mut ciphertext = BASE64.decode(document["ciphertext"].as_str().unwrap()).unwrap();
        ciphertext[3] ^= 0x01;
        document["ciphertext"] = BASE64.encode(ciphertext).into();
    });
    let (error, message) = open_error(&flipped);
    assert_eq!(error, EnvelopeError::Tampered);
    assert!(message.contains("corrupted or was tampered with"), "{message}");
    assert!(message.contains("fingerprint matches"), "{message}");

    for header in ["created_at", "nonce"] {
        let changed = edit(&good, |document| {
            let text = document[header].as_str().unwrap().to_owned();
            let replaced = if header == "created_at" {
                text.replace("2026", "2025")
            } else {
                let mut bytes = BASE64.decode(&text).unwrap();
                bytes[0] ^= 0x80;
                BASE64.encode(bytes)
            };
            document[header] = replaced.into();
        });
        assert_eq!(open_error(&changed).0, EnvelopeError::Tampered, "{header}");
    }

    let (error, message) = open_error(&edit(&good, |document| document["version"] = 3.into()));
    assert_eq!(error, EnvelopeError::UnsupportedVersion("3".into()));
    assert!(message.contains("unsupported secrets envelope version 3"), "{message}");
    // Version 2 (a Secret Manager backup) names its content in the header.
    let (error, _) = open_error(&edit(&good, |document| document["version"] = 2.into()));
    assert_eq!(
        error,
        EnvelopeError::Malformed("a version 2 envelope needs a \"content\" field".into())
    );

    let (_, message) = open_error(&edit(&good, |document| document["cipher"] = "ChaCha20-Poly1305".into()));
    assert!(
        message.contains("unsupported cipher \"ChaCha20-Poly1305\""),
        "{message}"
    );
    let (_, message) = open_error(&edit(&good, |document| document["kdf"]["alg"] = "scrypt".into()));
    assert!(message.contains("unsupported kdf.alg \"scrypt\""), "{message}");
    let (_, message) = open_error(&edit(&good, |document| document["format"] = "other".into()));
    assert!(message.contains("not a secrets envelope"), "{message}");
    let (_, message) = open_error(&edit(&good, |document| document["extra"] = "x".into()));
    assert!(message.contains("malformed secrets envelope"), "{message}");

    // The production reader refuses anything below the standard parameters.
    let error = EnvelopeCodec::standard().open(&key(KEY), &good).unwrap_err();
    assert!(matches!(error, EnvelopeError::WeakKdf(_)));
    assert!(
        error.to_string().contains("m=64 KiB is below the minimum 65536"),
        "{error}"
    );
    let weakened = edit(&good, |document| document["kdf"]["t"] = 0.into());
    assert!(matches!(open_error(&weakened).0, EnvelopeError::WeakKdf(_)));

    for message in [
        fast_codec().open(&key(OTHER_KEY), &good).unwrap_err().to_string(),
        open_error(&flipped).1,
    ] {
        assert!(!message.contains(KEY) && !message.contains("VALUE"), "{message}");
    }
}

fn shared_test_key() -> &'static DerivedKey {
    static KEY_ONCE: OnceLock<DerivedKey> = OnceLock::new();
    KEY_ONCE.get_or_init(|| DerivedKey::derive(&key(KEY), KdfParams::INSECURE_FOR_TESTS, &[7u8; 16]).unwrap())
}

#[test]
fn nonces_never_repeat_across_10_000_encryptions() {
    let key = shared_test_key();
    let secrets: SecretMap = [("A", "a")].into_iter().collect();
    let mut nonces = std::collections::HashSet::new();
    for _ in 0..10_000 {
        let envelope = key.seal(&secrets, sunday()).unwrap();
        assert!(nonces.insert(envelope.nonce().to_owned()), "nonce repeated");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn arbitrary_secret_maps_round_trip(
        entries in proptest::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,20}", any::<String>(), 0..12)
    ) {
        let secrets: SecretMap = entries.clone().into_iter().collect();
        let key = shared_test_key();
        let stored = key.seal(&secrets, sunday()).unwrap().to_bytes();
        let envelope = keshless_ops::crypto::Envelope::parse(&stored, &KdfParams::INSECURE_FOR_TESTS).unwrap();
        let opened = envelope.decrypt(key).unwrap();
        prop_assert!(opened.same_contents(&secrets));
        // The env rendering reads back through the .env parser too.
        let env = secrets.to_env().unwrap();
        let reparsed = keshless_ops::jobs::secrets_source::parse_dotenv(&env).unwrap();
        prop_assert!(reparsed.same_contents(&secrets));
    }
}

// ---------------------------------------------------------------- compatibility

fn vector_secrets() -> SecretMap {
    [
        ("KESHLESS_API_TOKEN", "vector-token-5d1c"),
        ("KESHLESS_DB_PASSWORD", "vector-pass 'quoted' $x"),
        ("KESHLESS_MULTILINE", "line one\nline two"),
    ]
    .into_iter()
    .collect()
}

/// The checked-in envelope written by version 1 still decrypts with the
/// production reader. If this fails, old backups would no longer restore.
#[test]
fn checked_in_test_vector_still_decrypts() {
    let bytes = std::fs::read(VECTOR_PATH).expect("test vector");
    let started = std::time::Instant::now();
    let secrets = EnvelopeCodec::standard()
        .open(&key(VECTOR_KEY), &bytes)
        .expect("decrypt test vector");
    eprintln!("Argon2id with production parameters + decrypt: {:?}", started.elapsed());
    assert!(secrets.same_contents(&vector_secrets()));
    assert_eq!(
        EnvelopeCodec::standard().open(&key(KEY), &bytes).unwrap_err(),
        EnvelopeError::WrongKey
    );
}

// The vector was written once by
// `EnvelopeCodec::standard().seal(&key(VECTOR_KEY), &vector_secrets(), sunday())`
// and must never be regenerated: a new envelope version gets a new vector
// beside this one, and this one must keep decrypting.

// ---------------------------------------------------------------- CLI and logs

/// A file store holding the test vector as a weekly backup and as latest.
async fn store_with_vector() -> (tempfile::TempDir, String) {
    let (store, directory) = common::file_store().await;
    let bytes = Bytes::from(std::fs::read(VECTOR_PATH).unwrap());
    store
        .put_bytes(WEEKLY, bytes.clone(), WriteMode::CreateOnly)
        .await
        .unwrap();
    store.put_bytes(LATEST_KEY, bytes, WriteMode::Overwrite).await.unwrap();
    let url = format!("file://{}", directory.path().display());
    (directory, url)
}

#[tokio::test]
async fn restore_secrets_writes_a_private_file_and_refuses_to_overwrite() {
    let (directory, url) = store_with_vector().await;
    let environment = [("BACKUP_STORE", url.as_str()), ("SECRETS_ENCRYPTION_KEY", VECTOR_KEY)];
    let out = directory.path().join("restored.env");
    let out_text = out.to_str().unwrap();

    let output = keshless_ops(&["restore", "secrets", "--latest", "--out", out_text], &environment);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let restored = keshless_ops::jobs::secrets_source::parse_dotenv(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(restored.same_contents(&vector_secrets()));
    let shown = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(shown.contains("restored 3 secrets"), "{shown}");
    assert!(shown.contains("KESHLESS_API_TOKEN"), "{shown}");
    assert!(!shown.contains("vector-token-5d1c"), "a value was printed: {shown}");

    std::fs::write(&out, "keep me").unwrap();
    let output = keshless_ops(
        &[
            "restore",
            "secrets",
            "--date",
            "2026-11-29",
            "--out",
            out_text,
            "--format",
            "json",
        ],
        &environment,
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("already exists; refusing to overwrite it (use --force"));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me");

    let output = keshless_ops(
        &[
            "restore",
            "secrets",
            "--date",
            "2026-11-29",
            "--out",
            out_text,
            "--format",
            "json",
            "--force",
        ],
        &environment,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(json["KESHLESS_MULTILINE"], "line one\nline two");

    let output = keshless_ops(
        &["restore", "secrets", "--date", "2026-11-22", "--out", out_text],
        &environment,
    );
    assert_eq!(output.status.code(), Some(1));
    let errors = text(&output.stderr);
    assert!(
        errors.contains("no secrets backup secrets/weekly/2026-11-22.json.encrypted"),
        "{errors}"
    );
    assert!(errors.contains(WEEKLY), "lists what is available: {errors}");
}

#[tokio::test]
async fn restore_secrets_prints_values_only_with_stdout_and_needs_only_two_variables() {
    let (_directory, url) = store_with_vector().await;
    let environment = [("BACKUP_STORE", url.as_str()), ("SECRETS_ENCRYPTION_KEY", VECTOR_KEY)];
    let output = keshless_ops(&["restore", "secrets", "--stdout", "--format", "json"], &environment);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is exactly the JSON");
    assert_eq!(printed["KESHLESS_API_TOKEN"], "vector-token-5d1c");
    assert!(!text(&output.stderr).contains("vector-token-5d1c"));

    let output = keshless_ops(&["restore", "secrets", "--latest"], &environment);
    assert_eq!(output.status.code(), Some(2), "--out or --stdout is required");

    let output = keshless_ops(
        &["restore", "secrets", "--stdout"],
        &[("SECRETS_ENCRYPTION_KEY", "short")],
    );
    assert_eq!(output.status.code(), Some(78));
    let errors = text(&output.stderr);
    assert!(errors.contains("BACKUP_STORE is not set"), "{errors}");
    assert!(errors.contains("SECRETS_ENCRYPTION_KEY is too short"), "{errors}");

    let output = keshless_ops(
        &["restore", "secrets", "--stdout"],
        &[("BACKUP_STORE", url.as_str()), ("SECRETS_ENCRYPTION_KEY", KEY)],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("wrong key"), "{}", text(&output.stderr));
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn verify_prints_names_and_rekey_moves_every_backup_to_the_new_key() {
    let (directory, url) = store_with_vector().await;
    let environment = [
        ("BACKUP_STORE", url.as_str()),
        ("SECRETS_ENCRYPTION_KEY", VECTOR_KEY),
        ("NEW_SECRETS_KEY", OTHER_KEY),
    ];
    let output = keshless_ops(&["secrets", "verify", "--date", "2026-11-29", "--json"], &environment);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["count"], 3);
    assert!(!text(&output.stdout).contains("vector-token-5d1c"));

    let output = keshless_ops(
        &["secrets", "rekey", "--new-key-env", "NEW_SECRETS_KEY", "--dry-run"],
        &environment,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout).matches("would re-encrypt").count(),
        2,
        "{}",
        text(&output.stdout)
    );

    let output = keshless_ops(
        &["secrets", "rekey", "--new-key-env", "NEW_SECRETS_KEY", "--json"],
        &environment,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let actions: Vec<&str> = report["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["re-encrypted", "re-encrypted"]);
    for object in [WEEKLY, LATEST_KEY] {
        let bytes = std::fs::read(directory.path().join(object)).unwrap();
        let secrets = EnvelopeCodec::standard().open(&key(OTHER_KEY), &bytes).expect(object);
        assert!(secrets.same_contents(&vector_secrets()));
    }

    // Running it again (e.g. after an interruption) skips what is done.
    let output = keshless_ops(&["secrets", "rekey", "--new-key-env", "NEW_SECRETS_KEY"], &environment);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).matches("already on the new key").count(), 2);
}

#[tokio::test]
async fn no_log_line_of_backup_or_recovery_contains_a_secret_value() {
    let (store, directory) = common::file_store().await;
    let logs = common::CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .finish();
    {
        let _guard = tracing::subscriber::set_default(subscriber);
        // Production parameters: the binary below reads what the job wrote.
        let job = env_job(store.clone(), EnvelopeCodec::standard());
        job.run(&context(), Default::default()).await.expect("backup");
        // A rerun walks the "already exists" branch, which logs more.
        job.run(&context(), Default::default()).await.expect("rerun");
        tracing::info!("end of in-process part");
    }
    let mut captured = logs.text();
    assert!(
        captured.contains("secrets backup written"),
        "logs were captured: {captured}"
    );
    assert!(captured.contains("end of in-process part"));

    let url = format!("file://{}", directory.path().display());
    let out = directory.path().join("restored.env");
    let environment = [
        ("BACKUP_STORE", url.as_str()),
        ("SECRETS_ENCRYPTION_KEY", KEY),
        ("RUST_LOG", "trace"),
    ];
    for arguments in [
        &["restore", "secrets", "--out", out.to_str().unwrap()][..],
        &["secrets", "verify"],
        &["restore", "secrets", "--out", out.to_str().unwrap()],
    ] {
        let output = keshless_ops(arguments, &environment);
        captured.push_str(&text(&output.stderr));
        captured.push_str(&text(&output.stdout));
    }
    assert!(
        captured.contains("secrets restored"),
        "binary logs were captured: {captured}"
    );
    assert!(captured.contains("already exists; refusing"), "{captured}");
    for (name, value) in sample_variables() {
        for fragment in value.split('\n') {
            assert!(
                !captured.contains(fragment),
                "{name}'s value appears in the logs:\n{captured}"
            );
        }
    }
    assert!(!captured.contains(KEY), "the encryption key appears in the logs");
    let restored = keshless_ops_restored(&out);
    assert_eq!(
        restored.get("KESHLESS_DB_PASSWORD").unwrap().expose_secret(),
        "pw-7c1f0e9a-VALUE"
    );
}

fn keshless_ops_restored(path: &std::path::Path) -> SecretMap {
    keshless_ops::jobs::secrets_source::parse_dotenv(&std::fs::read_to_string(path).unwrap()).unwrap()
}
