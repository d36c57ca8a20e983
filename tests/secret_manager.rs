//! Secret Manager as a secrets source and restore target (issue 17), against
//! the REST fake of `keshless_ops::emulator::secret_manager` over HTTP and
//! Google's client crate: the backup of 300 secrets across pages and back
//! into an empty project, CRC32C mismatches, 429 storms within the quota,
//! restore's decisions, the fake's documented behaviour, and no payload in
//! any log line, error, `--json` output or `Debug`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use keshless_ops::crypto::{Contents, EnvelopeCodec, KdfParams};
use keshless_ops::emulator::secret_manager::{EnumEncoding, FakeConfig, Faults, SecretManagerFake, Store};
use keshless_ops::jobs::secrets_backup::{SecretsBackup, LATEST_KEY};
use keshless_ops::jobs::secrets_source::{SecretManagerSource, Source};
use keshless_ops::runtime::job::{Job, JobError, RunContext};
use keshless_ops::secret_manager::restore::{restore, RestoreAction, RestoreOptions};
use keshless_ops::secret_manager::{
    ClientSettings, ProjectSelection, RetrySettings, SecretManagerBackup, SecretManagerClient,
};
use keshless_ops::storage::{BlobStore, BlobStoreExt};
use secrecy::SecretString;
use serde_json::{json, Value};

const KEY: &str = "test-passphrase-for-secret-manager-0123456789";
const REGION: &str = "europe-west1";

fn key() -> SecretString {
    SecretString::from(KEY.to_owned())
}

fn context() -> RunContext {
    RunContext {
        job: "secrets-backup",
        idempotency_key: "secrets-backup:2026-W49".into(),
        message_id: None,
        source: "cli".into(),
        requested_by: None,
        attempt: 1,
        cancel: Default::default(),
    }
}

/// A payload no log line could contain by accident.
fn payload(secret: usize, version: usize) -> String {
    format!("sm-payload-{secret:03}-v{version}-VALUE-7f3a")
}

fn fast_retries() -> RetrySettings {
    RetrySettings {
        min_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        max_retries: 6,
    }
}

fn settings(fake: &SecretManagerFake) -> ClientSettings {
    ClientSettings {
        emulator_host: Some(fake.host()),
        requests_per_minute: 600_000,
        retry: fast_retries(),
    }
}

fn selection(project: &str) -> ProjectSelection {
    ProjectSelection {
        project: project.into(),
        filter: None,
        locations: vec![REGION.into()],
    }
}

fn source(fake: &SecretManagerFake, project: &str) -> Source {
    Source::SecretManager(SecretManagerSource {
        selection: selection(project),
        client: settings(fake),
    })
}

fn add(store: &mut Store, secret: &str, value: &str) {
    let data = BASE64.encode(value.as_bytes());
    store
        .add_version(secret, &json!({"payload": {"data": data}}), EnumEncoding::Names)
        .expect("add version");
}

/// Secret `index`'s metadata: labels on all, and on some annotations, CMEK
/// replicas, rotation with topics, an expiry, a version-destroy TTL.
fn metadata(index: usize) -> Value {
    let mut metadata = json!({
        "replication": {"automatic": {}},
        "labels": {"backup": "true", "index": index.to_string()},
    });
    if index.is_multiple_of(3) {
        metadata["annotations"] = json!({"owner": format!("team-{}", index % 7), "purpose": "payments"});
    }
    if index.is_multiple_of(5) {
        metadata["replication"] = json!({"userManaged": {"replicas": [
            {"location": "europe-west1",
             "customerManagedEncryption": {"kmsKeyName": "projects/keys/locations/europe-west1/keyRings/r/cryptoKeys/k1"}},
            {"location": "europe-west4",
             "customerManagedEncryption": {"kmsKeyName": "projects/keys/locations/europe-west4/keyRings/r/cryptoKeys/k2"}},
        ]}});
    }
    if index == 3 {
        metadata["topics"] = json!([{"name": "projects/prod/topics/secret-events"}]);
        metadata["rotation"] = json!({"nextRotationTime": "2099-01-01T00:00:00Z", "rotationPeriod": "2592000s"});
    }
    if index == 4 {
        metadata["expireTime"] = json!("2099-06-01T00:00:00Z");
    }
    if index == 20 {
        metadata["versionDestroyTtl"] = json!("86400s");
    }
    metadata
}

/// 300 secrets in `project` (one of them regional); every tenth has six
/// versions (DESTROYED, ENABLED, DISABLED, ENABLED, DISABLED, ENABLED) and
/// two aliases. Returns every ENABLED payload.
fn seed(fake: &SecretManagerFake, project: &str, count: usize) -> Vec<String> {
    let mut payloads = Vec::new();
    fake.with_store(|store| {
        for index in 0..count {
            let (parent, mut metadata) = if index == 7 {
                let mut regional = metadata(index);
                regional.as_object_mut().unwrap().remove("replication");
                (format!("projects/{project}/locations/{REGION}"), regional)
            } else {
                (format!("projects/{project}"), metadata(index))
            };
            let versions_wanted = if index.is_multiple_of(10) { 6 } else { 1 + index % 2 };
            // The TTL is set after destroying, as in a project where it came later.
            let destroy_ttl = metadata.as_object_mut().unwrap().remove("versionDestroyTtl");
            let id = format!("app-secret-{index:03}");
            store.create_secret(&parent, &id, metadata).expect("create");
            let name = format!("{parent}/secrets/{id}");
            for version in 1..=versions_wanted {
                add(store, &name, &payload(index, version));
            }
            if versions_wanted == 6 {
                store.change_state(&name, "1", "destroy", EnumEncoding::Names).unwrap();
                store.change_state(&name, "3", "disable", EnumEncoding::Names).unwrap();
                store.change_state(&name, "5", "disable", EnumEncoding::Names).unwrap();
                store
                    .update_secret(
                        &name,
                        "versionAliases",
                        json!({"versionAliases": {"current": "6", "previous": "4"}}),
                    )
                    .unwrap();
                payloads.extend([2, 4, 6].map(|version| payload(index, version)));
            } else {
                payloads.extend((1..=versions_wanted).map(|version| payload(index, version)));
            }
            if let Some(ttl) = destroy_ttl {
                store
                    .update_secret(&name, "versionDestroyTtl", json!({"versionDestroyTtl": ttl}))
                    .unwrap();
            }
        }
    });
    payloads
}

/// Every difference between two projects of the fake, as readable lines:
/// metadata (topics compared with the project rewritten) and every
/// version's number and state, and payload where ENABLED.
fn differences(fake: &SecretManagerFake, source: &str, target: &str) -> Vec<String> {
    let (left, right) = fake.with_store(|store| (store.dump(source), store.dump(target)));
    let mut differences = Vec::new();
    let names: BTreeSet<&String> = left.keys().chain(right.keys()).collect();
    for name in names {
        let (Some(original), Some(restored)) = (left.get(name), right.get(name)) else {
            differences.push(format!(
                "{name}: only in {}",
                if left.contains_key(name) { source } else { target }
            ));
            continue;
        };
        let normalise = |metadata: &serde_json::Map<String, Value>| {
            let text = Value::Object(metadata.clone())
                .to_string()
                .replace(&format!("projects/{source}/"), "projects/PROJECT/")
                .replace(&format!("projects/{target}/"), "projects/PROJECT/");
            serde_json::from_str::<Value>(&text).unwrap()
        };
        let (before, after) = (normalise(&original.metadata), normalise(&restored.metadata));
        let fields: BTreeSet<&String> = before
            .as_object()
            .unwrap()
            .keys()
            .chain(after.as_object().unwrap().keys())
            .collect();
        for field in fields {
            if before.get(field) != after.get(field) {
                differences.push(format!(
                    "{name}: {field} {:?} != {:?}",
                    before.get(field),
                    after.get(field)
                ));
            }
        }
        if original.versions.len() != restored.versions.len() {
            differences.push(format!(
                "{name}: {} versions != {}",
                original.versions.len(),
                restored.versions.len()
            ));
        }
        for (before, after) in original.versions.iter().zip(&restored.versions) {
            if (before.number, before.state) != (after.number, after.state) {
                differences.push(format!(
                    "{name}: version {} {} != version {} {}",
                    before.number, before.state, after.number, after.state
                ));
            } else if before.state == "ENABLED" && before.payload != after.payload {
                differences.push(format!("{name}: version {} payload differs", before.number));
            }
        }
    }
    differences
}

/// The job with the production KDF (the binary restores what it writes).
fn job(store: Arc<dyn BlobStore>, source: Source) -> SecretsBackup {
    SecretsBackup::with_source(store, source, key(), chrono_tz::UTC)
}

fn restore_command(directory: &std::path::Path, fake: &SecretManagerFake, arguments: &[&str]) -> (Value, String) {
    let url = format!("file://{}", directory.display());
    let host = fake.host();
    let mut all = vec!["restore", "secrets", "--to-secret-manager", "--json"];
    all.extend_from_slice(arguments);
    let output = common::keshless_ops(
        &all,
        &[
            ("BACKUP_STORE", url.as_str()),
            ("SECRETS_ENCRYPTION_KEY", KEY),
            ("SECRET_MANAGER_EMULATOR_HOST", host.as_str()),
            ("SECRET_MANAGER_REQUESTS_PER_MINUTE", "100000"),
            ("RUST_LOG", "trace"),
        ],
    );
    let stdout = common::text(&output.stdout);
    let stderr = common::text(&output.stderr);
    assert!(output.status.success(), "restore failed: {stdout}\n{stderr}");
    (serde_json::from_str(&stdout).expect("--json output"), stdout + &stderr)
}

fn actions(report: &Value) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for row in report["secrets"].as_array().unwrap() {
        *counts.entry(row["action"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    counts
}

// The fake serves from this runtime while the binary runs: more than one thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_secrets_back_up_across_pages_and_restore_into_an_empty_project_unchanged() {
    // A page cap of 40 makes the 299 global secrets take 8 pages.
    let fake = SecretManagerFake::start(
        ([127, 0, 0, 1], 0).into(),
        FakeConfig {
            maximum_page_size: 40,
            ..FakeConfig::default()
        },
    )
    .await
    .unwrap();
    let payloads = seed(&fake, "prod", 300);
    let (store, directory) = common::file_store().await;

    let outcome = job(store.clone(), source(&fake, "prod"))
        .run(&context(), Default::default())
        .await
        .expect("backup");
    let counts = &outcome.details["secret_manager"];
    assert_eq!(outcome.details["count"], 300);
    assert_eq!(counts["secrets"], 300);
    let versions: usize = (0..300usize)
        .map(|index| if index.is_multiple_of(10) { 6 } else { 1 + index % 2 })
        .sum();
    assert_eq!(counts["versions"], versions);
    assert_eq!(counts["enabled_versions"], payloads.len());
    assert_eq!(counts["payload_bytes"], payloads.iter().map(String::len).sum::<usize>());
    let list_calls = fake
        .requests()
        .iter()
        .filter(|request| request.method == "GET" && request.path == "/v1/projects/prod/secrets")
        .count();
    assert_eq!(list_calls, 8, "pages of at most 40 secrets");
    let details = outcome.details.to_string() + &outcome.summary;
    for value in &payloads {
        assert!(!details.contains(value.as_str()), "the job result holds a payload");
    }
    // The envelope holds the document; every payload is in it.
    let sealed = store.get_bytes(LATEST_KEY, 1 << 26).await.unwrap();
    let Contents::SecretManager(document) = EnvelopeCodec::standard().open_contents(&key(), &sealed).unwrap() else {
        panic!("a Secret Manager backup is stored as a document");
    };
    let backup = SecretManagerBackup::from_json(&document).unwrap();
    assert_eq!(backup.secrets.len(), 300);
    assert!(backup
        .names()
        .contains(&format!("projects/prod/locations/{REGION}/secrets/app-secret-007")));

    let (report, _) = restore_command(directory.path(), &fake, &["--project", "recovery"]);
    assert_eq!(report["project"], "recovery");
    assert_eq!(actions(&report), BTreeMap::from([("created".to_owned(), 300)]));
    assert_eq!(differences(&fake, "prod", "recovery"), Vec::<String>::new());

    let (again, _) = restore_command(directory.path(), &fake, &["--project", "recovery"]);
    assert_eq!(actions(&again), BTreeMap::from([("unchanged".to_owned(), 300)]));
    assert_eq!(differences(&fake, "prod", "recovery"), Vec::<String>::new());

    // `secrets rekey` moves a Secret Manager backup to a new key whole.
    let url = format!("file://{}", directory.path().display());
    let new_key = "another-passphrase-for-secret-manager-9876543210";
    let rekeyed = common::keshless_ops(
        &["secrets", "rekey", "--new-key-env", "NEW_KEY", "--json"],
        &[
            ("BACKUP_STORE", url.as_str()),
            ("SECRETS_ENCRYPTION_KEY", KEY),
            ("NEW_KEY", new_key),
        ],
    );
    assert!(rekeyed.status.success(), "{}", common::text(&rekeyed.stderr));
    let report: Value = serde_json::from_slice(&rekeyed.stdout).unwrap();
    assert!(
        report["objects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|object| object["secrets"] == 300),
        "{report}"
    );
    let sealed = store.get_bytes(LATEST_KEY, 1 << 26).await.unwrap();
    let reopened = EnvelopeCodec::standard()
        .open_contents(&SecretString::from(new_key.to_owned()), &sealed)
        .unwrap();
    assert!(reopened.same_contents(&Contents::SecretManager(document)));
}

#[tokio::test]
async fn a_wrong_crc32c_is_retried_then_fails_transiently_and_nothing_is_stored() {
    let fake = SecretManagerFake::start(([127, 0, 0, 1], 0).into(), FakeConfig::default())
        .await
        .unwrap();
    seed(&fake, "prod", 12);
    let damaged = "projects/prod/secrets/app-secret-010/versions/4";
    fake.set_faults(Faults {
        wrong_checksum: BTreeSet::from([damaged.to_owned()]),
        ..Faults::default()
    });
    let (store, _directory) = common::file_store().await;
    let error = job(store.clone(), source(&fake, "prod"))
        .with_codec(EnvelopeCodec::with_params(
            KdfParams::INSECURE_FOR_TESTS,
            KdfParams::INSECURE_FOR_TESTS,
        ))
        .run(&context(), Default::default())
        .await
        .expect_err("a damaged payload fails the backup");
    let JobError::Transient(error) = error else {
        panic!("a checksum mismatch is transient, got {error:?}");
    };
    let message = format!("{error:#}");
    assert!(message.contains(damaged) && message.contains("dataCrc32c"), "{message}");
    let attempts = fake
        .requests()
        .iter()
        .filter(|request| request.path == format!("/v1/{damaged}:access"))
        .count();
    assert_eq!(attempts, 1 + fast_retries().max_retries, "retried, then given up");
    assert!(common::all_keys(store.as_ref()).await.is_empty(), "nothing was stored");

    // Once the payload arrives intact, the same job succeeds.
    fake.set_faults(Faults::default());
    job(store.clone(), source(&fake, "prod"))
        .with_codec(EnvelopeCodec::with_params(
            KdfParams::INSECURE_FOR_TESTS,
            KdfParams::INSECURE_FOR_TESTS,
        ))
        .run(&context(), Default::default())
        .await
        .expect("backup after the fault");
}

#[tokio::test]
async fn a_storm_of_429_is_outlasted_with_backoff_and_calls_stay_within_the_quota() {
    let fake = SecretManagerFake::start(([127, 0, 0, 1], 0).into(), FakeConfig::default())
        .await
        .unwrap();
    let payloads = seed(&fake, "prod", 30);
    // The first 10 calls are refused, then the fake allows 10 calls per 500 ms.
    fake.set_faults(Faults {
        fail_next: 10,
        quota_per_window: Some(10),
        quota_window_ms: 500,
        ..Faults::default()
    });
    let quota_per_minute = 10 * 120;
    let client = ClientSettings {
        emulator_host: Some(fake.host()),
        requests_per_minute: quota_per_minute,
        retry: RetrySettings {
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(400),
            max_retries: 12,
        },
    };
    let (store, _directory) = common::file_store().await;
    let started = Instant::now();
    let outcome = job(
        store.clone(),
        Source::SecretManager(SecretManagerSource {
            selection: selection("prod"),
            client,
        }),
    )
    .with_codec(EnvelopeCodec::with_params(
        KdfParams::INSECURE_FOR_TESTS,
        KdfParams::INSECURE_FOR_TESTS,
    ))
    .run(&context(), Default::default())
    .await
    .expect("the backup outlasts the storm");
    assert_eq!(outcome.details["secret_manager"]["enabled_versions"], payloads.len());
    let requests = fake.requests();
    let refused = requests.iter().filter(|request| request.status == 429).count();
    assert!(refused >= 10, "the storm happened ({refused} refused)");
    // The pacer hands out one slot every 60 s / quota: however the calls
    // bunch on the way, no more can have been sent by any time than slots
    // have passed since the job started.
    let interval = Duration::from_secs(60) / quota_per_minute;
    for (index, request) in requests.iter().enumerate() {
        let slots = (request.at - started).as_nanos() / interval.as_nanos() + 1;
        assert!(
            (index as u128) < slots,
            "request {index} came before its slot ({slots} slots had passed)"
        );
    }
}

/// Restore's decisions other than "created": an existing secret with another
/// value gets the backed-up versions added, an expired secret is skipped,
/// `--dry-run` writes nothing, `--only` names unknown secrets clearly.
#[tokio::test]
async fn restore_adds_versions_to_changed_secrets_skips_expired_ones_and_honours_dry_run() {
    let fake = SecretManagerFake::start(([127, 0, 0, 1], 0).into(), FakeConfig::default())
        .await
        .unwrap();
    seed(&fake, "prod", 12);
    let client = SecretManagerClient::connect(settings(&fake)).await.unwrap();
    let backup = keshless_ops::secret_manager::read_project(&client, &selection("prod"), chrono::Utc::now())
        .await
        .unwrap();
    let options = |dry_run, only: &[&str]| RestoreOptions {
        project: "prod".into(),
        only: only.iter().map(|name| name.to_string()).collect(),
        dry_run,
        // Secret 4 expires in 2099: "now" is after that.
        now: chrono::DateTime::parse_from_rfc3339("2099-07-01T00:00:00Z")
            .unwrap()
            .into(),
        id_prefix: String::new(),
    };
    // Secret 10 gets a new value after the backup; secret 1 is deleted.
    fake.with_store(|store| {
        add(
            store,
            "projects/prod/secrets/app-secret-010",
            "changed-after-the-backup",
        );
        store.delete_secret("projects/prod/secrets/app-secret-001").unwrap();
    });
    let before = fake.with_store(|store| store.dump("prod"));
    let planned = restore(&client, &backup, &options(true, &[])).await.unwrap();
    assert_eq!(
        fake.with_store(|store| store.dump("prod")),
        before,
        "--dry-run wrote nothing"
    );
    let report = restore(&client, &backup, &options(false, &[])).await.unwrap();
    assert_eq!(
        planned.iter().map(|row| row.action).collect::<Vec<_>>(),
        report.iter().map(|row| row.action).collect::<Vec<_>>()
    );
    let action_of = |id: &str| {
        report
            .iter()
            .find(|row| row.secret.ends_with(&format!("/secrets/{id}")))
            .map(|row| (row.action, row.versions))
            .unwrap()
    };
    assert_eq!(action_of("app-secret-001"), (RestoreAction::Created, 2));
    assert_eq!(action_of("app-secret-004"), (RestoreAction::SkippedExpired, 0));
    assert_eq!(action_of("app-secret-010"), (RestoreAction::VersionsAdded, 3));
    assert_eq!(action_of("app-secret-002"), (RestoreAction::Unchanged, 0));
    let after = fake.with_store(|store| store.dump("prod"));
    let changed = &after["secrets/app-secret-010"];
    assert_eq!(changed.versions.len(), 7 + 3);
    assert_eq!(
        changed.versions.last().unwrap().payload.as_deref(),
        Some(payload(10, 6).as_bytes()),
        "the backup's newest value is current again"
    );
    assert_eq!(
        changed.metadata["versionAliases"],
        json!({"current": "10", "previous": "9"}),
        "aliases follow the re-added versions"
    );
    let second = restore(&client, &backup, &options(false, &[])).await.unwrap();
    assert!(second
        .iter()
        .all(|row| matches!(row.action, RestoreAction::Unchanged | RestoreAction::SkippedExpired)));

    let error = restore(&client, &backup, &options(false, &["app-secret-002", "no-such-secret"]))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("--only names no-such-secret that is not in the backup"),
        "{error}"
    );
}

/// Raw HTTP against the fake: the documented JSON shapes and rules, not
/// what our client happens to need.
#[tokio::test]
async fn the_fake_follows_the_documented_rest_api() {
    let fake = SecretManagerFake::start(
        ([127, 0, 0, 1], 0).into(),
        FakeConfig {
            maximum_page_size: 2,
            ..FakeConfig::default()
        },
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{}/v1", fake.host());
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let request = http.request(method, format!("{base}/{path}"));
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    use reqwest::Method;
    let (status, created) = call(
        Method::POST,
        "projects/p/secrets?secretId=db",
        Some(json!({"replication": {"automatic": {}}, "labels": {"backup": "true"}})),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["name"], "projects/p/secrets/db");
    assert!(created["createTime"].is_string() && created["etag"].is_string());
    let (status, missing_replication) = call(Method::POST, "projects/p/secrets?secretId=x", Some(json!({}))).await;
    assert_eq!(
        (status, missing_replication["error"]["status"].clone()),
        (400, json!("INVALID_ARGUMENT"))
    );
    let (status, duplicate) = call(
        Method::POST,
        "projects/p/secrets?secretId=db",
        Some(json!({"replication": {"automatic": {}}})),
    )
    .await;
    assert_eq!(
        (status, duplicate["error"]["status"].clone()),
        (409, json!("ALREADY_EXISTS"))
    );

    let data = BASE64.encode("first");
    let (status, wrong) = call(
        Method::POST,
        "projects/p/secrets/db:addVersion",
        Some(json!({"payload": {"data": data, "dataCrc32c": "12345"}})),
    )
    .await;
    assert_eq!(
        (status, wrong["error"]["status"].clone()),
        (400, json!("INVALID_ARGUMENT")),
        "{wrong}"
    );
    let crc = crc32c::crc32c(b"first").to_string();
    let (status, version) = call(
        Method::POST,
        "projects/p/secrets/db:addVersion",
        Some(json!({"payload": {"data": data, "dataCrc32c": crc}})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(version["name"], "projects/p/secrets/db/versions/1");
    assert_eq!(version["state"], "ENABLED");
    assert_eq!(version["clientSpecifiedPayloadChecksum"], true);
    call(
        Method::POST,
        "projects/p/secrets/db:addVersion",
        Some(json!({"payload": {"data": BASE64.encode("second")}})),
    )
    .await;

    let (_, accessed) = call(Method::GET, "projects/p/secrets/db/versions/1:access", None).await;
    assert_eq!(accessed["name"], "projects/p/secrets/db/versions/1");
    assert_eq!(accessed["payload"]["data"], data);
    assert_eq!(
        accessed["payload"]["dataCrc32c"],
        json!(crc),
        "int64 as a decimal string"
    );

    // `latest` is the newest version whatever its state.
    let (_, disabled) = call(
        Method::POST,
        "projects/p/secrets/db/versions/2:disable",
        Some(json!({})),
    )
    .await;
    assert_eq!(disabled["state"], "DISABLED");
    let (status, refused) = call(Method::GET, "projects/p/secrets/db/versions/latest:access", None).await;
    assert_eq!(status, 400);
    assert_eq!(refused["error"]["status"], "FAILED_PRECONDITION");
    assert_eq!(refused["error"]["code"], 400);
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("versions/2] is in DISABLED state"));
    let (_, enabled) = call(Method::POST, "projects/p/secrets/db/versions/2:enable", Some(json!({}))).await;
    assert_eq!(enabled["state"], "ENABLED");
    let (_, destroyed) = call(
        Method::POST,
        "projects/p/secrets/db/versions/1:destroy",
        Some(json!({})),
    )
    .await;
    assert_eq!(destroyed["state"], "DESTROYED");
    assert!(destroyed["destroyTime"].is_string());
    let (status, gone) = call(Method::POST, "projects/p/secrets/db/versions/1:enable", Some(json!({}))).await;
    assert_eq!(
        (status, gone["error"]["status"].clone()),
        (400, json!("FAILED_PRECONDITION"))
    );
    let (_, numbers) = call(
        Method::GET,
        "projects/p/secrets/db/versions?$alt=json;enum-encoding=int",
        None,
    )
    .await;
    assert_eq!(numbers["versions"][0]["state"], 1, "enum-encoding=int");
    assert_eq!(numbers["versions"][1]["state"], 3);
    assert_eq!(
        numbers["versions"][0]["name"], "projects/p/secrets/db/versions/2",
        "newest first"
    );

    // Paging with the cap, filters on labels and name, regional paths.
    for id in ["api-key", "sms-token", "webhook"] {
        let labels = if id == "webhook" {
            json!({"backup": "false"})
        } else {
            json!({"backup": "true"})
        };
        call(
            Method::POST,
            &format!("projects/p/secrets?secretId={id}"),
            Some(json!({"replication": {"automatic": {}}, "labels": labels})),
        )
        .await;
    }
    call(
        Method::POST,
        "projects/p/locations/europe-west1/secrets?secretId=regional",
        Some(json!({"labels": {"backup": "true"}})),
    )
    .await;
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let (_, page) = call(
            Method::GET,
            &format!("projects/p/secrets?pageSize=100&pageToken={token}"),
            None,
        )
        .await;
        let secrets = page["secrets"].as_array().unwrap();
        assert!(secrets.len() <= 2, "the page size is capped");
        names.extend(secrets.iter().map(|secret| secret["name"].as_str().unwrap().to_owned()));
        match page["nextPageToken"].as_str() {
            Some(next) => token = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(
        names,
        ["api-key", "db", "sms-token", "webhook"].map(|id| format!("projects/p/secrets/{id}"))
    );
    let filtered = |filter: &str| {
        let path = format!(
            "projects/p/secrets?filter={}",
            url::form_urlencoded::byte_serialize(filter.as_bytes()).collect::<String>()
        );
        let call = &call;
        async move {
            let (status, page) = call(Method::GET, &path, None).await;
            (status, page)
        }
    };
    let (_, page) = filtered("labels.backup=true AND name:sms").await;
    let found: Vec<&str> = page["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["projects/p/secrets/sms-token"]);
    let (status, bad) = filtered("colour=blue").await;
    assert_eq!(
        (status, bad["error"]["status"].clone()),
        (400, json!("INVALID_ARGUMENT"))
    );
    let (_, regional) = call(Method::GET, "projects/p/locations/europe-west1/secrets", None).await;
    assert_eq!(
        regional["secrets"][0]["name"],
        "projects/p/locations/europe-west1/secrets/regional"
    );
    let (status, _) = call(Method::GET, "projects/p/secrets?pageToken=not-a-token!", None).await;
    assert_eq!(status, 400);

    // The slow-pages switch delays list calls (and only them).
    fake.set_faults(Faults {
        page_delay_ms: 300,
        ..Faults::default()
    });
    let started = Instant::now();
    let (status, _) = call(Method::GET, "projects/p/secrets", None).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300), "the page was delayed");
    // The 429 switch answers the documented error.
    fake.set_faults(Faults {
        fail_next: 1,
        ..Faults::default()
    });
    let (status, exhausted) = call(Method::GET, "projects/p/secrets/db", None).await;
    assert_eq!(
        (status, exhausted["error"]["status"].clone()),
        (429, json!("RESOURCE_EXHAUSTED"))
    );
    let (status, _) = call(Method::GET, "projects/p/secrets/db", None).await;
    assert_eq!(status, 200, "only the next request failed");
}

// The fake serves from this runtime while the binary runs: more than one thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_payload_in_any_log_line_error_json_output_or_debug() {
    let fake = SecretManagerFake::start(
        ([127, 0, 0, 1], 0).into(),
        FakeConfig {
            maximum_page_size: 5,
            ..FakeConfig::default()
        },
    )
    .await
    .unwrap();
    let payloads = seed(&fake, "prod", 21);
    let (store, directory) = common::file_store().await;
    let logs = common::CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .finish();
    let mut captured = String::new();
    {
        let _guard = tracing::subscriber::set_default(subscriber);
        // A damaged payload and a 429 first: the error paths log too.
        fake.set_faults(Faults {
            fail_next: 3,
            wrong_checksum: BTreeSet::from(["projects/prod/secrets/app-secret-020/versions/6".to_owned()]),
            ..Faults::default()
        });
        let error = job(store.clone(), source(&fake, "prod"))
            .run(&context(), Default::default())
            .await
            .unwrap_err();
        captured.push_str(&format!("{error:?}\n{error}\n"));
        fake.set_faults(Faults::default());
        let backup_job = job(store.clone(), source(&fake, "prod"));
        captured.push_str(&format!("{backup_job:?}\n"));
        let outcome = backup_job.run(&context(), Default::default()).await.expect("backup");
        captured.push_str(&format!("{outcome:?}\n"));
        let client = SecretManagerClient::connect(settings(&fake)).await.unwrap();
        let backup = keshless_ops::secret_manager::read_project(&client, &selection("prod"), chrono::Utc::now())
            .await
            .unwrap();
        captured.push_str(&format!("{backup:?}\n{:?}\n", backup.secrets[0].versions));
        tracing::info!("end of in-process part");
    }
    captured.push_str(&logs.text());
    assert!(captured.contains("backing off"), "the retries were logged: {captured}");
    assert!(captured.contains("end of in-process part"));
    let (_, output) = restore_command(directory.path(), &fake, &["--project", "recovery"]);
    captured.push_str(&output);
    let verify = common::keshless_ops(
        &["secrets", "verify", "--json"],
        &[
            (
                "BACKUP_STORE",
                format!("file://{}", directory.path().display()).as_str(),
            ),
            ("SECRETS_ENCRYPTION_KEY", KEY),
            ("RUST_LOG", "trace"),
        ],
    );
    assert!(verify.status.success(), "{}", common::text(&verify.stderr));
    captured.push_str(&common::text(&verify.stdout));
    captured.push_str(&common::text(&verify.stderr));
    assert!(captured.contains("app-secret-020"), "names are shown: {captured}");
    for value in &payloads {
        assert!(
            !captured.contains(value.as_str()),
            "a payload appears in the output:\n{captured}"
        );
        let encoded = BASE64.encode(value.as_bytes());
        assert!(!captured.contains(&encoded), "a base64 payload appears in the output");
    }
    assert!(!captured.contains(KEY), "the encryption key appears in the output");
}

/// The drill's `secret-manager-coverage` step: a secret created after the
/// newest backup is reported, one that existed before and is missing fails.
#[tokio::test]
async fn the_drill_checks_every_current_secret_is_in_the_newest_backup() {
    use keshless_ops::jobs::dr_drill::{Documents, DrDrill, DrillParams};
    let fake = SecretManagerFake::start(([127, 0, 0, 1], 0).into(), FakeConfig::default())
        .await
        .unwrap();
    seed(&fake, "prod", 12);
    let fast = EnvelopeCodec::with_params(KdfParams::INSECURE_FOR_TESTS, KdfParams::INSECURE_FOR_TESTS);
    let (store, _directory) = common::file_store().await;
    let (documents, _documents_directory) = common::file_store().await;
    let drill = |store: Arc<dyn BlobStore>| DrDrill {
        backups: store,
        scratch_server: common::admin_database_url().parse().unwrap(),
        databases: Vec::new(),
        secrets_key: key(),
        codec: fast,
        documents: Documents::Open(documents.clone()),
        clock: Default::default(),
        secret_manager: Some(SecretManagerSource {
            selection: selection("prod"),
            client: settings(&fake),
        }),
        dumps: Default::default(),
        full: Default::default(),
    };
    let coverage = |report: &keshless_ops::jobs::dr_drill::Report| {
        report
            .steps
            .iter()
            .find(|step| step.name == "secret-manager-coverage")
            .cloned()
            .expect("the step runs with SECRETS_SOURCE=secret-manager")
    };

    // A backup that left secret 5 out (a filter), though it existed then.
    let filtered = Source::SecretManager(SecretManagerSource {
        selection: ProjectSelection {
            filter: Some("-name:app-secret-005".into()),
            ..selection("prod")
        },
        client: settings(&fake),
    });
    job(store.clone(), filtered)
        .with_codec(fast)
        .run(&context(), Default::default())
        .await
        .expect("backup");
    let report = drill(store.clone())
        .rehearse("dr-drill:test", &DrillParams::default())
        .await
        .unwrap();
    let step = coverage(&report);
    assert!(!step.passed, "{step:#?}");
    let error = step.error.unwrap();
    assert!(
        error.contains("lacks 1 secrets that existed before") && error.contains("projects/prod/secrets/app-secret-005"),
        "{error}"
    );

    // A full backup, then a secret created after it: reported, not a failure.
    let (store, _directory) = common::file_store().await;
    job(store.clone(), source(&fake, "prod"))
        .with_codec(fast)
        .run(&context(), Default::default())
        .await
        .expect("backup");
    fake.with_store(|store| {
        store
            .create_secret(
                "projects/prod",
                "created-later",
                json!({"replication": {"automatic": {}}}),
            )
            .unwrap();
    });
    let report = drill(store.clone())
        .rehearse("dr-drill:test", &DrillParams::default())
        .await
        .unwrap();
    let step = coverage(&report);
    assert!(step.passed, "{step:#?}");
    assert!(step.detail.contains("all 12 secrets"), "{}", step.detail);
    assert!(
        step.detail
            .contains("created since: projects/prod/secrets/created-later"),
        "{}",
        step.detail
    );
}

/// The human form of `restore secrets --to-secret-manager`: a table of
/// secret, action and versions; a GOOGLE_CLOUD_PROJECT other than the
/// backup's is refused unless `--project` names the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_prints_a_table_and_refuses_a_project_it_was_not_asked_for() {
    let fake = SecretManagerFake::start(([127, 0, 0, 1], 0).into(), FakeConfig::default())
        .await
        .unwrap();
    seed(&fake, "prod", 3);
    let (store, directory) = common::file_store().await;
    job(store.clone(), source(&fake, "prod"))
        .run(&context(), Default::default())
        .await
        .expect("backup");
    let url = format!("file://{}", directory.path().display());
    let host = fake.host();
    let run = |arguments: &[&str], project: &str| {
        let mut all = vec!["restore", "secrets", "--to-secret-manager"];
        all.extend_from_slice(arguments);
        common::keshless_ops(
            &all,
            &[
                ("BACKUP_STORE", url.as_str()),
                ("SECRETS_ENCRYPTION_KEY", KEY),
                ("SECRET_MANAGER_EMULATOR_HOST", host.as_str()),
                ("SECRET_MANAGER_REQUESTS_PER_MINUTE", "100000"),
                ("GOOGLE_CLOUD_PROJECT", project),
            ],
        )
    };
    let refused = run(&[], "recovery");
    assert!(!refused.status.success());
    let message = common::text(&refused.stderr);
    assert!(
        message.contains("the backup is of project prod but GOOGLE_CLOUD_PROJECT is recovery")
            && message.contains("--project recovery"),
        "{message}"
    );
    assert!(
        fake.with_store(|store| store.dump("recovery")).is_empty(),
        "nothing was written"
    );

    let output = run(
        &["--project", "recovery", "--only", "app-secret-000,app-secret-002"],
        "recovery",
    );
    let table = common::text(&output.stdout);
    assert!(output.status.success(), "{table}{}", common::text(&output.stderr));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("secret") && lines[0].contains("action") && lines[0].contains("versions"));
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[1].contains("projects/recovery/secrets/app-secret-000") && lines[1].contains("created"));
    assert!(lines[1].trim_end().ends_with('6'), "six versions re-created: {table}");
    assert!(lines[2].contains("projects/recovery/secrets/app-secret-002") && lines[2].contains("created"));
    assert_eq!(
        fake.with_store(|store| store.dump("recovery"))
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        ["secrets/app-secret-000", "secrets/app-secret-002"]
    );
}
