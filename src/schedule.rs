//! The schedule as data (SPEC section 2): which job Cloud Scheduler fires
//! when, and the period each fire belongs to. The period label is what makes a
//! double or late fire run once: the runtime derives a scheduled message's
//! idempotency key from it, so every fire inside one period shares a key.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;

const fn hours(count: u64) -> Duration {
    Duration::from_secs(count * 3600)
}

const fn days(count: u64) -> Duration {
    hours(count * 24)
}

/// How a scheduled job's runs are grouped; one run per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Daily,
    Weekly,
    Monthly,
}

impl Period {
    /// The period containing `at`, in `time_zone`: "2026-11-26" (daily), ISO
    /// week "2026-W48" (weekly), "2026-11" (monthly).
    pub fn label(self, at: DateTime<Utc>, time_zone: Tz) -> String {
        // The calendar date is read in the schedule's zone, not UTC: a 01:30
        // Brussels fire is still "today" there even though UTC says yesterday,
        // and that is the day the operator scheduled.
        let date: NaiveDate = at.with_timezone(&time_zone).date_naive();
        match self {
            Period::Daily => format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day()),
            Period::Weekly => {
                // The ISO week-year, not the calendar year: 2024-12-30 belongs
                // to 2025-W01, and pairing it with 2024 would name a week that
                // does not exist.
                let week = date.iso_week();
                format!("{:04}-W{:02}", week.year(), week.week())
            }
            Period::Monthly => format!("{:04}-{:02}", date.year(), date.month()),
        }
    }
}

/// One row of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledJob {
    /// The job's registry name.
    pub job: &'static str,
    /// Five-field cron expression, read in the schedule time zone
    /// (`SCHEDULE_TIME_ZONE`), as given to Cloud Scheduler.
    pub cron: &'static str,
    /// The period one run covers; a second fire in the same period is a duplicate.
    pub period: Period,
    pub description: &'static str,
    /// How old the newest success may be before `status` calls the job
    /// overdue: the period plus slack for a late or retried run. Overridden
    /// by `FRESHNESS_<JOB>_HOURS` (see [`freshness_limits`]).
    pub max_age: Duration,
    /// The parameter that divides a period: one run per period *per value*
    /// of it (postgres-backup: one per database). Its value becomes part of
    /// the scheduled key, `<job>:<value>:<period>`, so two databases fired in
    /// the same period are two runs, and a repeated fire of either is none.
    pub scope: Option<&'static str>,
}

/// SPEC section 2, in one table.
pub const SCHEDULE: &[ScheduledJob] = &[
    ScheduledJob {
        job: "postgres-backup",
        cron: "0 2 * * *",
        period: Period::Daily,
        description: "daily 02:00: pg_dump of each database in DATABASES",
        max_age: hours(26),
        scope: Some("database"),
    },
    ScheduledJob {
        job: "secrets-backup",
        cron: "0 4 * * 0",
        period: Period::Weekly,
        description: "weekly, Sunday 04:00: encrypted copy of the configured secrets",
        max_age: days(8),
        scope: None,
    },
    ScheduledJob {
        job: "cleanup-old-backups",
        cron: "0 5 * * 0",
        period: Period::Weekly,
        description: "weekly, Sunday 05:00: apply the retention policies",
        max_age: days(8),
        scope: None,
    },
    ScheduledJob {
        job: "documents-inventory",
        cron: "0 3 * * *",
        period: Period::Daily,
        description: "daily 03:00: manifest of every live object in the documents bucket",
        max_age: hours(26),
        scope: None,
    },
    ScheduledJob {
        job: "dr-drill",
        cron: "0 6 1 * *",
        period: Period::Monthly,
        description: "monthly, 1st 06:00: full restore rehearsal",
        max_age: days(35),
        scope: None,
    },
];

/// The schedule row of `job`, or `None` for jobs that only run on request.
pub fn scheduled(job: &str) -> Option<&'static ScheduledJob> {
    SCHEDULE.iter().find(|row| row.job == job)
}

/// The hours `FRESHNESS_<JOB>_HOURS` accepts: one hour to one (leap) year.
pub const FRESHNESS_HOURS_RANGE: std::ops::RangeInclusive<u64> = 1..=8784;

/// The variable that overrides `job`'s freshness limit:
/// `postgres-backup` -> `FRESHNESS_POSTGRES_BACKUP_HOURS`.
pub fn freshness_variable(job: &str) -> String {
    format!("FRESHNESS_{}_HOURS", job.to_ascii_uppercase().replace('-', "_"))
}

/// Every scheduled job with its freshness limit: the row's `max_age`, or the
/// whole hours its `FRESHNESS_<JOB>_HOURS` variable gives. `lookup` reads one
/// variable (the environment in production, a table in tests). Every bad
/// value is reported, each naming its variable and the accepted range.
pub fn freshness_limits(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(&'static ScheduledJob, Duration)>, Vec<String>> {
    let mut limits = Vec::with_capacity(SCHEDULE.len());
    let mut problems = Vec::new();
    for row in SCHEDULE {
        let variable = freshness_variable(row.job);
        let Some(text) = lookup(&variable).map(|value| value.trim().to_owned()) else {
            limits.push((row, row.max_age));
            continue;
        };
        match text.parse::<u64>() {
            Ok(hours) if FRESHNESS_HOURS_RANGE.contains(&hours) => limits.push((row, self::hours(hours))),
            _ => problems.push(format!(
                "{variable}={text:?} is not a whole number of hours from {} to {} (the default for {} is {} h)",
                FRESHNESS_HOURS_RANGE.start(),
                FRESHNESS_HOURS_RANGE.end(),
                row.job,
                row.max_age.as_secs() / 3600
            )),
        }
    }
    if problems.is_empty() {
        Ok(limits)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use chrono_tz::{America::Los_Angeles, Asia::Tokyo, Europe::Brussels, Pacific::Kiritimati, UTC};

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|error| panic!("bad test timestamp {text}: {error}"))
            .with_timezone(&Utc)
    }

    #[test]
    fn label_reads_the_period_in_the_schedule_time_zone() {
        use Period::{Daily, Monthly, Weekly};
        let cases: &[(&str, Period, &str, Tz, &str)] = &[
            // (why, period, instant, zone, expected)
            ("plain day", Daily, "2026-11-26T12:00:00Z", UTC, "2026-11-26"),
            ("plain week", Weekly, "2026-11-26T12:00:00Z", UTC, "2026-W48"),
            ("plain month", Monthly, "2026-11-26T12:00:00Z", UTC, "2026-11"),
            // Time-zone boundaries.
            (
                "late UTC evening is tomorrow in Brussels",
                Daily,
                "2026-11-25T23:30:00Z",
                Brussels,
                "2026-11-26",
            ),
            (
                "the same instant is still today in UTC",
                Daily,
                "2026-11-25T23:30:00Z",
                UTC,
                "2026-11-25",
            ),
            (
                "morning UTC is yesterday in Los Angeles",
                Daily,
                "2026-11-26T07:59:00Z",
                Los_Angeles,
                "2026-11-25",
            ),
            (
                "Saturday 23:30 UTC is Sunday in Brussels (week unchanged)",
                Weekly,
                "2026-11-28T23:30:00Z",
                Brussels,
                "2026-W48",
            ),
            (
                "Sunday 23:30 UTC is Monday in Brussels: next ISO week",
                Weekly,
                "2026-11-29T23:30:00Z",
                Brussels,
                "2026-W49",
            ),
            (
                "Sunday 23:30 UTC is still Sunday in UTC",
                Weekly,
                "2026-11-29T23:30:00Z",
                UTC,
                "2026-W48",
            ),
            // ISO week-year boundaries.
            (
                "2026-12-31 is a Thursday: last week of 2026",
                Weekly,
                "2026-12-31T12:00:00Z",
                UTC,
                "2026-W53",
            ),
            (
                "2027-01-01 is a Friday: still 2026-W53",
                Weekly,
                "2027-01-01T12:00:00Z",
                UTC,
                "2026-W53",
            ),
            (
                "2027-01-04 is the Monday of 2027-W01",
                Weekly,
                "2027-01-04T00:00:00Z",
                UTC,
                "2027-W01",
            ),
            (
                "2024-12-30 belongs to the next ISO year",
                Weekly,
                "2024-12-30T12:00:00Z",
                UTC,
                "2025-W01",
            ),
            (
                "2021-01-03 belongs to the previous ISO year",
                Weekly,
                "2021-01-03T12:00:00Z",
                UTC,
                "2020-W53",
            ),
            (
                "single-digit weeks are zero-padded",
                Weekly,
                "2026-02-10T12:00:00Z",
                UTC,
                "2026-W07",
            ),
            (
                "2027-01-01 in Tokyo is still 2026-W53",
                Weekly,
                "2026-12-31T20:00:00Z",
                Tokyo,
                "2026-W53",
            ),
            (
                "2024-12-29 23:30 UTC is 2024-12-30 in Brussels: 2025-W01",
                Weekly,
                "2024-12-29T23:30:00Z",
                Brussels,
                "2025-W01",
            ),
            // Month boundaries in zones ahead of UTC.
            (
                "Nov 30 23:30 UTC is Dec 1 in Brussels",
                Monthly,
                "2026-11-30T23:30:00Z",
                Brussels,
                "2026-12",
            ),
            (
                "Nov 30 15:00 UTC is Dec 1 in Tokyo",
                Monthly,
                "2026-11-30T15:00:00Z",
                Tokyo,
                "2026-12",
            ),
            (
                "Nov 30 14:59 UTC is still Nov 30 in Tokyo",
                Monthly,
                "2026-11-30T14:59:59Z",
                Tokyo,
                "2026-11",
            ),
            (
                "Dec 31 10:00 UTC is next year in Kiritimati (UTC+14)",
                Monthly,
                "2026-12-31T10:00:00Z",
                Kiritimati,
                "2027-01",
            ),
            (
                "the same instant is still December in UTC",
                Monthly,
                "2026-12-31T10:00:00Z",
                UTC,
                "2026-12",
            ),
            (
                "the dr-drill fire, 1st 06:00 Brussels, is that month",
                Monthly,
                "2026-12-01T05:00:00Z",
                Brussels,
                "2026-12",
            ),
            // DST: Brussels springs forward 2026-03-29 02:00 CET -> 03:00 CEST,
            // falls back 2026-10-25 03:00 CEST -> 02:00 CET.
            (
                "spring-forward day, before the jump (UTC+1)",
                Daily,
                "2026-03-28T23:30:00Z",
                Brussels,
                "2026-03-29",
            ),
            (
                "spring-forward day, after the jump (UTC+2)",
                Daily,
                "2026-03-29T21:59:00Z",
                Brussels,
                "2026-03-29",
            ),
            (
                "spring-forward day ends an hour earlier in UTC",
                Daily,
                "2026-03-29T22:00:00Z",
                Brussels,
                "2026-03-30",
            ),
            (
                "the day before spring-forward ends at 23:00 UTC",
                Daily,
                "2026-03-27T23:00:00Z",
                Brussels,
                "2026-03-28",
            ),
            (
                "fall-back day starts at 22:00 UTC the day before",
                Daily,
                "2026-10-24T22:00:00Z",
                Brussels,
                "2026-10-25",
            ),
            (
                "fall-back day, first 02:30 (CEST)",
                Daily,
                "2026-10-25T00:30:00Z",
                Brussels,
                "2026-10-25",
            ),
            (
                "fall-back day, second 02:30 (CET)",
                Daily,
                "2026-10-25T01:30:00Z",
                Brussels,
                "2026-10-25",
            ),
            (
                "fall-back day ends at 23:00 UTC",
                Daily,
                "2026-10-25T22:59:59Z",
                Brussels,
                "2026-10-25",
            ),
            (
                "the day after fall-back",
                Daily,
                "2026-10-25T23:00:00Z",
                Brussels,
                "2026-10-26",
            ),
            (
                "fall-back Sunday is still the week it started",
                Weekly,
                "2026-10-25T22:59:59Z",
                Brussels,
                "2026-W43",
            ),
            (
                "first Monday hour after fall-back is the next week",
                Weekly,
                "2026-10-25T23:00:00Z",
                Brussels,
                "2026-W44",
            ),
            (
                "spring-forward Sunday stays in March",
                Monthly,
                "2026-03-29T21:00:00Z",
                Brussels,
                "2026-03",
            ),
            (
                "March 31 22:30 UTC is April 1 in Brussels (summer time)",
                Monthly,
                "2026-03-31T22:30:00Z",
                Brussels,
                "2026-04",
            ),
            (
                "March 31 21:59 UTC is still March in Brussels",
                Monthly,
                "2026-03-31T21:59:00Z",
                Brussels,
                "2026-03",
            ),
        ];
        for (why, period, instant, zone, expected) in cases {
            assert_eq!(
                period.label(utc(instant), *zone),
                *expected,
                "{why}: {period:?} of {instant} in {zone}"
            );
        }
    }

    #[test]
    fn label_pads_years_to_four_digits() {
        let at = Utc.with_ymd_and_hms(987, 6, 5, 12, 0, 0).unwrap();
        assert_eq!(Period::Daily.label(at, UTC), "0987-06-05");
        assert_eq!(Period::Monthly.label(at, UTC), "0987-06");
    }

    #[test]
    fn schedule_lists_every_scheduled_job_of_spec_section_2() {
        let rows: Vec<(&str, &str, Period)> = SCHEDULE.iter().map(|row| (row.job, row.cron, row.period)).collect();
        assert_eq!(
            rows,
            vec![
                ("postgres-backup", "0 2 * * *", Period::Daily),
                ("secrets-backup", "0 4 * * 0", Period::Weekly),
                ("cleanup-old-backups", "0 5 * * 0", Period::Weekly),
                ("documents-inventory", "0 3 * * *", Period::Daily),
                ("dr-drill", "0 6 1 * *", Period::Monthly),
            ]
        );
    }

    #[test]
    fn each_cron_fires_once_per_its_period() {
        // If a cron fired more often than its period, the second fire of a
        // period would be silently deduplicated; if less often, periods
        // would be skipped. Check the shape that guarantees exactly once.
        for row in SCHEDULE {
            let fields: Vec<&str> = row.cron.split_whitespace().collect();
            assert_eq!(fields.len(), 5, "{}: cron {:?} must have 5 fields", row.job, row.cron);
            let (minute, hour, day_of_month, month, day_of_week) =
                (fields[0], fields[1], fields[2], fields[3], fields[4]);
            assert!(
                minute.parse::<u8>().is_ok_and(|value| value < 60),
                "{}: minute",
                row.job
            );
            assert!(hour.parse::<u8>().is_ok_and(|value| value < 24), "{}: hour", row.job);
            assert_eq!(month, "*", "{}: every month", row.job);
            let fixed = |field: &str| field.parse::<u8>().is_ok();
            match row.period {
                Period::Daily => assert!(day_of_month == "*" && day_of_week == "*", "{}: daily", row.job),
                Period::Weekly => assert!(day_of_month == "*" && fixed(day_of_week), "{}: weekly", row.job),
                Period::Monthly => assert!(fixed(day_of_month) && day_of_week == "*", "{}: monthly", row.job),
            }
        }
    }

    #[test]
    fn job_names_are_unique() {
        for (index, row) in SCHEDULE.iter().enumerate() {
            assert!(
                SCHEDULE[index + 1..].iter().all(|other| other.job != row.job),
                "{} is scheduled twice",
                row.job
            );
        }
    }

    #[test]
    fn scheduled_finds_rows_by_name() {
        let cases: &[(&str, Option<Period>)] = &[
            ("postgres-backup", Some(Period::Daily)),
            ("secrets-backup", Some(Period::Weekly)),
            ("cleanup-old-backups", Some(Period::Weekly)),
            ("documents-inventory", Some(Period::Daily)),
            ("dr-drill", Some(Period::Monthly)),
            ("restore", None),
            ("Postgres-Backup", None),
            ("", None),
        ];
        for (job, expected) in cases {
            assert_eq!(scheduled(job).map(|row| row.period), *expected, "{job:?}");
        }
    }

    #[test]
    fn freshness_variables_name_the_job() {
        let cases = [
            ("postgres-backup", "FRESHNESS_POSTGRES_BACKUP_HOURS"),
            ("secrets-backup", "FRESHNESS_SECRETS_BACKUP_HOURS"),
            ("cleanup-old-backups", "FRESHNESS_CLEANUP_OLD_BACKUPS_HOURS"),
            ("documents-inventory", "FRESHNESS_DOCUMENTS_INVENTORY_HOURS"),
            ("dr-drill", "FRESHNESS_DR_DRILL_HOURS"),
        ];
        for (job, variable) in cases {
            assert_eq!(freshness_variable(job), variable);
        }
    }

    #[test]
    fn freshness_limits_default_to_the_schedule() {
        let limits = freshness_limits(|_| None).expect("no overrides");
        let hours: Vec<(&str, u64)> = limits
            .iter()
            .map(|(row, limit)| (row.job, limit.as_secs() / 3600))
            .collect();
        assert_eq!(
            hours,
            vec![
                ("postgres-backup", 26),
                ("secrets-backup", 8 * 24),
                ("cleanup-old-backups", 8 * 24),
                ("documents-inventory", 26),
                ("dr-drill", 35 * 24),
            ]
        );
    }

    #[test]
    fn freshness_overrides_are_whole_hours_in_range() {
        // (why, value of FRESHNESS_POSTGRES_BACKUP_HOURS, expected hours or None for an error)
        let cases: &[(&str, &str, Option<u64>)] = &[
            ("plain", "30", Some(30)),
            ("surrounding blanks are trimmed", " 30 ", Some(30)),
            ("lowest", "1", Some(1)),
            ("highest: a leap year", "8784", Some(8784)),
            ("zero would make everything overdue", "0", None),
            ("above a year", "8785", None),
            ("negative", "-5", None),
            ("fractions are not hours here", "1.5", None),
            ("units are not accepted", "30h", None),
            ("empty", "", None),
            ("words", "thirty", None),
        ];
        for (why, value, expected) in cases {
            let result =
                freshness_limits(|variable| (variable == "FRESHNESS_POSTGRES_BACKUP_HOURS").then(|| value.to_string()));
            match (result, expected) {
                (Ok(limits), Some(hours)) => {
                    assert_eq!(limits[0].0.job, "postgres-backup");
                    assert_eq!(limits[0].1, Duration::from_secs(hours * 3600), "{why}");
                    assert_eq!(limits[1].1, days(8), "{why}: other jobs keep their default");
                }
                (Err(problems), None) => {
                    assert_eq!(problems.len(), 1, "{why}: {problems:?}");
                    assert!(
                        problems[0].starts_with("FRESHNESS_POSTGRES_BACKUP_HOURS=")
                            && problems[0].contains("from 1 to 8784"),
                        "{why}: {}",
                        problems[0]
                    );
                }
                (other, _) => panic!("{why}: {value:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn every_bad_freshness_override_is_reported() {
        let problems = freshness_limits(|variable| match variable {
            "FRESHNESS_DR_DRILL_HOURS" => Some("0".into()),
            "FRESHNESS_SECRETS_BACKUP_HOURS" => Some("week".into()),
            "FRESHNESS_POSTGRES_BACKUP_HOURS" => Some("30".into()),
            _ => None,
        })
        .expect_err("two bad values");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("FRESHNESS_SECRETS_BACKUP_HOURS=\"week\""));
        assert!(problems[1].starts_with("FRESHNESS_DR_DRILL_HOURS=\"0\""));
    }

    #[test]
    fn every_job_tolerates_one_late_run() {
        // A limit below one period would call every healthy job overdue
        // just before its next fire.
        for row in SCHEDULE {
            let period = match row.period {
                Period::Daily => days(1),
                Period::Weekly => days(7),
                Period::Monthly => days(31),
            };
            assert!(row.max_age > period, "{}: {:?} <= {:?}", row.job, row.max_age, period);
        }
    }
}
