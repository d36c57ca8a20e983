//! Table tests of the freshness decision and the report built on it.

use std::collections::BTreeMap;

use chrono::TimeZone;

use super::*;
use crate::runtime::ledger::RunStatus;
use crate::schedule::{scheduled, SCHEDULE};

const HOUR: Duration = Duration::from_secs(3600);

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
}

fn hours_ago(hours: i64) -> DateTime<Utc> {
    now() - chrono::Duration::hours(hours)
}

#[test]
fn freshness_takes_the_newer_source_and_compares_with_the_limit() {
    use Evidence::{Known, NotApplicable, Unavailable};
    let limit = 26 * HOUR;
    // (why, ledger, storage, expected)
    let cases: Vec<(&str, Evidence, Evidence, Freshness)> = vec![
        (
            "ledger success 2 h ago",
            Known(Some(hours_ago(2))),
            Known(None),
            Freshness::Fresh {
                age: 2 * HOUR,
                last_success: hours_ago(2),
                source: Source::Ledger,
            },
        ),
        (
            "storage newer than the ledger wins",
            Known(Some(hours_ago(30))),
            Known(Some(hours_ago(3))),
            Freshness::Fresh {
                age: 3 * HOUR,
                last_success: hours_ago(3),
                source: Source::Storage,
            },
        ),
        (
            "ledger newer than storage wins",
            Known(Some(hours_ago(1))),
            Known(Some(hours_ago(25))),
            Freshness::Fresh {
                age: HOUR,
                last_success: hours_ago(1),
                source: Source::Ledger,
            },
        ),
        (
            "a tie names the ledger",
            Known(Some(hours_ago(4))),
            Known(Some(hours_ago(4))),
            Freshness::Fresh {
                age: 4 * HOUR,
                last_success: hours_ago(4),
                source: Source::Ledger,
            },
        ),
        (
            "exactly at the limit is still fresh",
            Known(Some(hours_ago(26))),
            NotApplicable,
            Freshness::Fresh {
                age: 26 * HOUR,
                last_success: hours_ago(26),
                source: Source::Ledger,
            },
        ),
        (
            "one second past the limit is overdue",
            Known(Some(hours_ago(26) - chrono::Duration::seconds(1))),
            NotApplicable,
            Freshness::Overdue {
                age: Some(26 * HOUR + Duration::from_secs(1)),
                last_success: Some((hours_ago(26) - chrono::Duration::seconds(1), Source::Ledger)),
                limit,
            },
        ),
        (
            "30 h old in both sources",
            Known(Some(hours_ago(30))),
            Known(Some(hours_ago(31))),
            Freshness::Overdue {
                age: Some(30 * HOUR),
                last_success: Some((hours_ago(30), Source::Ledger)),
                limit,
            },
        ),
        (
            "never succeeded anywhere",
            Known(None),
            Known(None),
            Freshness::Overdue {
                age: None,
                last_success: None,
                limit,
            },
        ),
        (
            "lost ledger, fresh backup in storage",
            Unavailable,
            Known(Some(hours_ago(5))),
            Freshness::Fresh {
                age: 5 * HOUR,
                last_success: hours_ago(5),
                source: Source::Storage,
            },
        ),
        (
            "lost ledger, stale backup in storage",
            Unavailable,
            Known(Some(hours_ago(40))),
            Freshness::Overdue {
                age: Some(40 * HOUR),
                last_success: Some((hours_ago(40), Source::Storage)),
                limit,
            },
        ),
        (
            "lost ledger and an empty store: storage answered, nothing there",
            Unavailable,
            Known(None),
            Freshness::Overdue {
                age: None,
                last_success: None,
                limit,
            },
        ),
        (
            "store down, ledger fresh",
            Known(Some(hours_ago(1))),
            Unavailable,
            Freshness::Fresh {
                age: HOUR,
                last_success: hours_ago(1),
                source: Source::Ledger,
            },
        ),
        ("both down", Unavailable, Unavailable, Freshness::Unknown),
        (
            "ledger-only job with the ledger down",
            Unavailable,
            NotApplicable,
            Freshness::Unknown,
        ),
        (
            "ledger-only job never run",
            Known(None),
            NotApplicable,
            Freshness::Overdue {
                age: None,
                last_success: None,
                limit,
            },
        ),
        (
            "a success in the future (clock skew) is age zero",
            Known(Some(now() + chrono::Duration::minutes(5))),
            Known(None),
            Freshness::Fresh {
                age: Duration::ZERO,
                last_success: now() + chrono::Duration::minutes(5),
                source: Source::Ledger,
            },
        ),
    ];
    for (why, ledger, storage, expected) in cases {
        assert_eq!(freshness(ledger, storage, now(), limit), expected, "{why}");
    }
}

#[test]
fn human_durations() {
    let cases = [
        (Duration::ZERO, "0 min"),
        (Duration::from_secs(59 * 60), "59 min"),
        (HOUR, "1 h"),
        (30 * HOUR, "30 h"),
        (47 * HOUR + Duration::from_secs(3599), "47 h"),
        (48 * HOUR, "2 d"),
        (35 * 24 * HOUR, "35 d"),
    ];
    for (duration, expected) in cases {
        assert_eq!(human_duration(duration), expected, "{duration:?}");
    }
}

fn run(job: &str, key: &str, status: RunStatus, at: DateTime<Utc>) -> Run {
    Run {
        idempotency_key: key.into(),
        job: job.into(),
        status,
        attempts: 1,
        lease_owner: None,
        lease_expires_at: None,
        message_id: None,
        source: Some("cloud-scheduler".into()),
        created_at: at,
        updated_at: at,
        started_at: Some(at),
        finished_at: (status != RunStatus::Running).then_some(at),
        last_error: None,
        result: (status == RunStatus::Succeeded).then(|| serde_json::json!({"summary": format!("{job} done")})),
    }
}

fn limits() -> Vec<(&'static ScheduledJob, Duration)> {
    SCHEDULE.iter().map(|row| (row, row.max_age)).collect()
}

/// A ledger where every scheduled job succeeded `hours` ago.
fn ledger_all_succeeded(hours: i64) -> JobSummaries {
    JobSummaries {
        database_now: now(),
        jobs: SCHEDULE
            .iter()
            .map(|row| {
                let success = run(
                    row.job,
                    &format!("{}:k", row.job),
                    RunStatus::Succeeded,
                    hours_ago(hours),
                );
                JobSummary {
                    job: row.job.into(),
                    latest: success.clone(),
                    last_success: Some(success),
                    last_failure: None,
                    running: Vec::new(),
                    last_success_by_database: BTreeMap::new(),
                }
            })
            .collect(),
    }
}

fn storage_all(hours: i64) -> BTreeMap<String, Option<Artefact>> {
    artefacts::JOBS_WITH_ARTEFACTS
        .iter()
        .map(|job| {
            (
                (*job).to_owned(),
                Some(Artefact {
                    object: format!("{job}/object"),
                    at: hours_ago(hours),
                }),
            )
        })
        .collect()
}

fn job<'a>(report: &'a Report, name: &str) -> &'a JobStatus {
    report.jobs.iter().find(|job| job.job == name).expect(name)
}

#[test]
fn all_fresh_exits_zero() {
    let report = build_report(&limits(), &[], Ok(&ledger_all_succeeded(1)), Ok(&storage_all(2)), now());
    assert_eq!(report.exit_code, EXIT_FRESH);
    assert_eq!(report.summary, "all 5 jobs fresh");
    assert!(report.overdue.is_empty() && report.unknown.is_empty());
    let postgres = job(&report, "postgres-backup");
    assert_eq!(postgres.freshness, "fresh");
    assert_eq!(postgres.age_seconds, Some(3600));
    assert_eq!(
        postgres.last_success,
        Some(EffectiveSuccess {
            at: hours_ago(1),
            source: Source::Ledger
        })
    );
    match &postgres.ledger {
        LedgerView::Read {
            last_success: Some(success),
            attempts: Some(1),
            ..
        } => assert_eq!(success.summary.as_deref(), Some("postgres-backup done")),
        other => panic!("{other:?}"),
    }
    assert_eq!(job(&report, "cleanup-old-backups").storage, StorageView::NotApplicable);
}

#[test]
fn a_stale_job_exits_two_and_is_named_in_the_summary() {
    let mut ledger = ledger_all_succeeded(1);
    let stale = run(
        "postgres-backup",
        "postgres-backup:old",
        RunStatus::Succeeded,
        hours_ago(30),
    );
    ledger.jobs[0].last_success = Some(stale.clone());
    ledger.jobs[0].latest = stale;
    ledger.jobs.retain(|summary| summary.job != "dr-drill");
    let mut storage = storage_all(1);
    storage.insert(
        "postgres-backup".into(),
        Some(Artefact {
            object: "old".into(),
            at: hours_ago(31),
        }),
    );
    storage.insert("dr-drill".into(), None);
    let report = build_report(&limits(), &[], Ok(&ledger), Ok(&storage), now());
    assert_eq!(report.exit_code, EXIT_OVERDUE);
    assert_eq!(report.overdue, vec!["postgres-backup", "dr-drill"]);
    assert_eq!(
        report.summary,
        "2 overdue: postgres-backup (last success 30 h ago, limit 26 h), dr-drill (never succeeded)"
    );
}

#[test]
fn a_lost_ledger_falls_back_to_storage() {
    let report = build_report(
        &limits(),
        &[],
        Err("schema keshless_ops is missing".into()),
        Ok(&storage_all(3)),
        now(),
    );
    assert_eq!(report.exit_code, EXIT_SOURCE_UNREADABLE, "{}", report.summary);
    assert!(!report.ledger.available);
    assert_eq!(report.ledger.problem.as_deref(), Some("schema keshless_ops is missing"));
    for name in artefacts::JOBS_WITH_ARTEFACTS {
        let status = job(&report, name);
        assert_eq!(status.freshness, "fresh", "{name}");
        assert_eq!(status.last_success.map(|success| success.source), Some(Source::Storage));
        assert_eq!(status.ledger, LedgerView::Unavailable);
    }
    // The ledger-only job cannot be judged; it is named, not called fresh.
    assert_eq!(report.unknown, vec!["cleanup-old-backups"]);
    assert_eq!(
        report.summary,
        "1 unknown: cleanup-old-backups (cannot tell; ledger unreadable)"
    );

    let stale = build_report(&limits(), &[], Err("down".into()), Ok(&storage_all(40)), now());
    assert_eq!(stale.exit_code, EXIT_OVERDUE);
    assert_eq!(stale.overdue, vec!["postgres-backup", "documents-inventory"]);
}

#[test]
fn both_sources_down_exits_one() {
    let report = build_report(
        &limits(),
        &[],
        Err("ledger down".into()),
        Err("store down".into()),
        now(),
    );
    assert_eq!(report.exit_code, EXIT_CANNOT_TELL);
    assert_eq!(report.unknown.len(), SCHEDULE.len());
    assert!(report.overdue.is_empty());
}

#[test]
fn store_down_keeps_ledger_verdicts() {
    let report = build_report(
        &limits(),
        &[],
        Ok(&ledger_all_succeeded(2)),
        Err("store down".into()),
        now(),
    );
    assert_eq!(report.exit_code, EXIT_SOURCE_UNREADABLE);
    assert_eq!(job(&report, "postgres-backup").storage, StorageView::Unavailable);
    assert_eq!(job(&report, "cleanup-old-backups").storage, StorageView::NotApplicable);
    assert_eq!(
        job(&report, "postgres-backup").reason,
        "last success 2 h ago, limit 26 h; storage unreadable"
    );
}

#[test]
fn running_runs_are_reported_with_their_lease() {
    let mut ledger = ledger_all_succeeded(1);
    let mut live = run(
        "postgres-backup",
        "postgres-backup:2026-11-26",
        RunStatus::Running,
        hours_ago(0),
    );
    live.lease_owner = Some("worker-a".into());
    live.lease_expires_at = Some(now() + chrono::Duration::minutes(2));
    live.attempts = 2;
    let mut expired = run(
        "postgres-backup",
        "postgres-backup:manual",
        RunStatus::Running,
        hours_ago(3),
    );
    expired.lease_owner = Some("worker-b".into());
    expired.lease_expires_at = Some(hours_ago(2));
    ledger.jobs[0].latest = live.clone();
    ledger.jobs[0].running = vec![live, expired];
    let mut failure = run(
        "postgres-backup",
        "postgres-backup:2026-11-25",
        RunStatus::DeadLettered,
        hours_ago(20),
    );
    failure.last_error = Some("pg_dump: permission denied".into());
    ledger.jobs[0].last_failure = Some(failure);
    let report = build_report(&limits(), &[], Ok(&ledger), Ok(&storage_all(1)), now());
    match &job(&report, "postgres-backup").ledger {
        LedgerView::Read {
            running,
            attempts,
            last_failure,
            ..
        } => {
            assert_eq!(*attempts, Some(2));
            let live: Vec<(Option<&str>, bool)> = running
                .iter()
                .map(|run| (run.owner.as_deref(), run.lease_live))
                .collect();
            assert_eq!(live, vec![(Some("worker-a"), true), (Some("worker-b"), false)]);
            let failure = last_failure.as_ref().expect("failure");
            assert_eq!(failure.status, RunStatus::DeadLettered);
            assert_eq!(failure.error.as_deref(), Some("pg_dump: permission denied"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn limits_come_from_the_caller() {
    // FRESHNESS_POSTGRES_BACKUP_HOURS=30 turns a 28 h old backup fresh.
    let row = scheduled("postgres-backup").unwrap();
    let ledger = ledger_all_succeeded(28);
    let default = build_report(&[(row, row.max_age)], &[], Ok(&ledger), Ok(&BTreeMap::new()), now());
    assert_eq!(default.exit_code, EXIT_OVERDUE);
    let relaxed = build_report(&[(row, 30 * HOUR)], &[], Ok(&ledger), Ok(&BTreeMap::new()), now());
    assert_eq!(relaxed.exit_code, EXIT_FRESH);
    assert_eq!(relaxed.jobs[0].max_age_seconds, 30 * 3600);
}

#[test]
fn json_field_names_are_stable() {
    let report = build_report(&limits(), &[], Ok(&ledger_all_succeeded(1)), Ok(&storage_all(2)), now());
    let value = serde_json::to_value(&report).unwrap();
    let keys = |value: &serde_json::Value| -> Vec<String> {
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys(&value),
        [
            "checked_at",
            "exit_code",
            "jobs",
            "ledger",
            "overdue",
            "storage",
            "summary",
            "unknown"
        ]
    );
    let postgres = &value["jobs"][0];
    assert_eq!(
        keys(postgres),
        [
            "age_seconds",
            "cron",
            "freshness",
            "job",
            "last_success",
            "ledger",
            "max_age_seconds",
            "reason",
            "storage"
        ]
    );
    assert_eq!(postgres["ledger"]["status"], "read");
    assert_eq!(postgres["storage"]["status"], "read");
    assert_eq!(postgres["storage"]["newest"]["object"], "postgres-backup/object");
    assert_eq!(postgres["last_success"]["source"], "ledger");
    assert_eq!(value["jobs"][2]["storage"]["status"], "not_applicable");
}

#[test]
fn each_database_has_its_own_postgres_backup_row() {
    // The ledger saw `ledger` succeed an hour ago and `payments` 30 hours
    // ago; the store holds only `ledger`'s backup; `archive` never ran.
    let mut ledger = ledger_all_succeeded(1);
    let summary = ledger
        .jobs
        .iter_mut()
        .find(|summary| summary.job == "postgres-backup")
        .unwrap();
    for (database, hours) in [("ledger", 1), ("payments", 30)] {
        let mut success = run(
            "postgres-backup",
            &format!("postgres-backup:{database}:k"),
            RunStatus::Succeeded,
            hours_ago(hours),
        );
        success.result = Some(serde_json::json!({"summary": "ok", "details": {"database": database}}));
        summary.last_success_by_database.insert(database.to_owned(), success);
    }
    let mut storage = storage_all(1);
    storage.insert(
        artefacts::database_series("postgres-backup", "ledger"),
        Some(Artefact {
            object: "postgresql/daily/x/ledger.manifest.json".into(),
            at: hours_ago(1),
        }),
    );
    let databases = ["ledger".to_owned(), "payments".to_owned(), "archive".to_owned()];
    let report = build_report(&limits(), &databases, Ok(&ledger), Ok(&storage), now());
    let rows: Vec<(Option<&str>, &str)> = report
        .jobs
        .iter()
        .filter(|job| job.job == "postgres-backup")
        .map(|job| (job.database.as_deref(), job.freshness))
        .collect();
    assert_eq!(
        rows,
        [
            (Some("ledger"), "fresh"),
            (Some("payments"), "overdue"),
            (Some("archive"), "overdue")
        ],
        "a fresh backup of one database does not hide another's"
    );
    assert_eq!(report.exit_code, EXIT_OVERDUE);
    assert_eq!(report.overdue, ["postgres-backup payments", "postgres-backup archive"]);
    let archive = report
        .jobs
        .iter()
        .find(|job| job.database.as_deref() == Some("archive"))
        .unwrap();
    assert_eq!(archive.reason, "never succeeded");
    // Jobs not divided by a database keep one row.
    assert_eq!(report.jobs.iter().filter(|job| job.job == "secrets-backup").count(), 1);
}
