//! The idempotency ledger against a real PostgreSQL: claims are atomic, leases
//! expire, and every transition is recorded.

mod common;

use std::time::Duration;

use common::TestDatabase;
use keshless_ops::config::DatabaseUrl;
use keshless_ops::runtime::job::Outcome;
use keshless_ops::runtime::ledger::{Claim, ClaimRequest, DeadLetteredKeys, Ledger, RunStatus};

async fn ledger(database: &TestDatabase) -> Ledger {
    let url: DatabaseUrl = database.url.parse().expect("database URL");
    Ledger::connect(&url).await.expect("connect and migrate")
}

fn request<'a>(key: &'a str, owner: &'a str, lease: Duration) -> ClaimRequest<'a> {
    ClaimRequest {
        idempotency_key: key,
        job: "postgres-backup",
        owner,
        lease,
        message_id: Some("m-1"),
        source: "cloud-scheduler",
        dead_lettered: DeadLetteredKeys::Respect,
    }
}

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn eight_concurrent_claimers_one_winner() {
    common::init_test_logs();
    let database = TestDatabase::create().await;
    let ledger = ledger(&database).await;
    let claims = futures::future::join_all((0..8).map(|worker| {
        let ledger = ledger.clone();
        async move {
            let owner = format!("worker-{worker}");
            ledger
                .claim(&request("postgres-backup:2026-11-26", &owner, LEASE))
                .await
                .expect("claim")
        }
    }))
    .await;
    let winners = claims
        .iter()
        .filter(|claim| matches!(claim, Claim::Claimed { .. }))
        .count();
    assert_eq!(winners, 1, "{claims:#?}");
    let held = claims
        .iter()
        .filter(|claim| matches!(claim, Claim::HeldBy { .. }))
        .count();
    assert_eq!(held, 7, "{claims:#?}");
    let run = ledger
        .find("postgres-backup:2026-11-26")
        .await
        .expect("find")
        .expect("row");
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.attempts, 1);
}

#[tokio::test]
async fn success_makes_later_claims_duplicates() {
    let database = TestDatabase::create().await;
    let ledger = ledger(&database).await;
    let key = "postgres-backup:2026-11-26";
    assert_eq!(
        ledger.claim(&request(key, "a", LEASE)).await.unwrap(),
        Claim::Claimed { attempt: 1 }
    );
    let outcome = Outcome::new("backed up 3 tables").with_details(serde_json::json!({"bytes": 1234}));
    assert!(ledger.succeed(key, "a", &outcome).await.unwrap());
    match ledger.claim(&request(key, "b", LEASE)).await.unwrap() {
        Claim::AlreadySucceeded { result: Some(result) } => {
            assert_eq!(result["summary"], "backed up 3 tables");
            assert_eq!(result["details"]["bytes"], 1234);
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let run = ledger.find(key).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert!(run.lease_owner.is_none() && run.finished_at.is_some());
    // A worker that lost the key cannot record anything.
    assert!(!ledger.succeed(key, "b", &outcome).await.unwrap());
    assert!(!ledger.fail(key, "a", "late").await.unwrap());
}

#[tokio::test]
async fn expired_lease_is_taken_over() {
    let database = TestDatabase::create().await;
    let ledger = ledger(&database).await;
    let key = "secrets-backup:2026-W48";
    let short = Duration::from_millis(300);
    assert_eq!(
        ledger.claim(&request(key, "a", short)).await.unwrap(),
        Claim::Claimed { attempt: 1 }
    );
    match ledger.claim(&request(key, "b", LEASE)).await.unwrap() {
        Claim::HeldBy { owner, .. } => assert_eq!(owner, "a"),
        other => panic!("expected HeldBy, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ledger.claim(&request(key, "b", LEASE)).await.unwrap(),
        Claim::Claimed { attempt: 2 }
    );
    // The old owner finds out it lost the key.
    assert!(!ledger.renew(key, "a", LEASE).await.unwrap());
    assert!(ledger.renew(key, "b", LEASE).await.unwrap());
}

#[tokio::test]
async fn renewing_keeps_the_lease() {
    let database = TestDatabase::create().await;
    let ledger = ledger(&database).await;
    let key = "dr-drill:2026-12";
    let short = Duration::from_millis(400);
    ledger.claim(&request(key, "a", short)).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(ledger.renew(key, "a", short).await.unwrap());
    }
    assert!(matches!(
        ledger.claim(&request(key, "b", LEASE)).await.unwrap(),
        Claim::HeldBy { .. }
    ));
}

#[tokio::test]
async fn failed_runs_are_claimed_again_with_a_higher_attempt() {
    let database = TestDatabase::create().await;
    let ledger = ledger(&database).await;
    let key = "postgres-backup:msg:42";
    ledger.claim(&request(key, "a", LEASE)).await.unwrap();
    assert!(ledger.fail(key, "a", "connection refused").await.unwrap());
    let run = ledger.find(key).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.last_error.as_deref(), Some("connection refused"));
    assert_eq!(
        ledger.claim(&request(key, "b", LEASE)).await.unwrap(),
        Claim::Claimed { attempt: 2 }
    );
    assert!(ledger.release(key, "b").await.unwrap());
    assert_eq!(
        ledger.claim(&request(key, "c", LEASE)).await.unwrap(),
        Claim::Claimed { attempt: 3 }
    );
}

#[tokio::test]
async fn dead_lettered_keys_are_only_retaken_by_replays() {
    let database = TestDatabase::create().await;
    let ledger = ledger(&database).await;
    let key = "postgres-backup:msg:7";
    ledger.claim(&request(key, "a", LEASE)).await.unwrap();
    assert!(ledger
        .dead_letter(key, "a", "pg_dump: permission denied")
        .await
        .unwrap());
    assert_eq!(
        ledger.claim(&request(key, "b", LEASE)).await.unwrap(),
        Claim::AlreadyDeadLettered { attempts: 1 }
    );
    let replay = ClaimRequest {
        dead_lettered: DeadLetteredKeys::Retake,
        source: "replay",
        ..request(key, "b", LEASE)
    };
    assert_eq!(ledger.claim(&replay).await.unwrap(), Claim::Claimed { attempt: 2 });
    let run = ledger.find(key).await.unwrap().unwrap();
    assert_eq!(run.source.as_deref(), Some("replay"));
}

#[tokio::test]
async fn a_key_belongs_to_one_job() {
    let database = TestDatabase::create().await;
    let ledger = ledger(&database).await;
    ledger.claim(&request("shared-key", "a", LEASE)).await.unwrap();
    ledger.fail("shared-key", "a", "x").await.unwrap();
    let other_job = ClaimRequest {
        job: "secrets-backup",
        ..request("shared-key", "b", LEASE)
    };
    assert_eq!(
        ledger.claim(&other_job).await.unwrap(),
        Claim::KeyConflict {
            existing_job: "postgres-backup".into()
        }
    );
}

#[tokio::test]
async fn migrations_are_safe_to_run_concurrently_and_repeatedly() {
    let database = TestDatabase::create().await;
    let url: DatabaseUrl = database.url.parse().unwrap();
    let results = futures::future::join_all((0..4).map(|_| Ledger::connect(&url))).await;
    for result in results {
        result.expect("concurrent start-up");
    }
    let ledger = Ledger::connect(&url).await.expect("again");
    ledger.ping().await.expect("ping");
    let client = database.connect().await;
    let applied: i64 = client
        .query_one("SELECT count(*) FROM keshless_ops.refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    // Each embedded migration exactly once, however many workers started.
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|extension| extension == "sql")
        })
        .count();
    assert!(migrations >= 2, "V1 (job_runs) and V2 (dead_letter_discards)");
    assert_eq!(applied, migrations as i64);
}

#[tokio::test]
async fn an_unreachable_database_is_an_error_not_a_hang() {
    let port = common::free_port();
    let url: DatabaseUrl = format!("postgres://nobody@127.0.0.1:{port}/none").parse().unwrap();
    let started = std::time::Instant::now();
    let error = Ledger::connect(&url).await.expect_err("nothing listens");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(error.to_string().contains("ledger"), "{error}");
}
