//! The retention decision (SPEC section 6) as one pure function: given every
//! backup the store holds and the policy, say for each one `Keep` or `Delete`
//! and why. No I/O here, so the table tests below are the whole truth about
//! what retention may delete, and the dry run and the real run cannot differ.
//!
//! The rules, in the order they are applied to each backup:
//! 0. A pinned backup (`keshless-ops backups pin`: a hold on its objects) is
//!    kept, with the pin's reason, and never counts toward a floor: the
//!    newest N unpinned backups are still kept beside it.
//! 1. `secrets/latest.json.encrypted` is never deleted.
//! 2. Anything retention does not understand (an unreadable manifest, an
//!    object it cannot classify) is kept and reported: a person decides.
//! 3. An incomplete backup (no manifest) is deleted only when the newest
//!    evidence of it is older than the grace period (48 h): a younger one may
//!    still be in progress.
//! 4. A complete backup dated in the future (beyond a small clock tolerance)
//!    is kept and reported as an anomaly; it never counts toward a floor, so a
//!    skewed clock cannot push a real backup out of the floor.
//! 5. A complete backup younger than its class's age limit is kept.
//! 6. The newest N complete backups of each class (per database for
//!    PostgreSQL) are kept whatever their age: a stopped backup job, or a
//!    clock that jumped forward, can never make retention delete the last good
//!    backups.
//! 7. Everything else is expired and deleted.
//!
//! Times always come from the manifest (or, for a secrets envelope, its
//! authenticated `created_at`), never from object names or upload order.
//!
//! Then [`hold_back_locked`]: a deletion the store's retention policy would
//! refuse (an object younger than the bucket's retention period) is turned
//! into a keep, "locked until …", so a run never fails on it.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Duration, Months, Utc};
use serde::Serialize;

/// The kinds of backup, each with its own age limit and safety floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    PostgresDaily,
    PostgresMonthly,
    SecretsWeekly,
    /// `secrets/latest.json.encrypted`: never deleted.
    SecretsLatest,
    Inventory,
    DrillReport,
    /// An object under a backup prefix that is none of the above.
    Unrecognised,
    /// `documents/objects/<name>@<generation>`: kept while a kept inventory
    /// references it, decided by [`super::mirror::decide`], never by [`decide`].
    DocumentsMirror,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::PostgresDaily => "postgres-daily",
            Class::PostgresMonthly => "postgres-monthly",
            Class::SecretsWeekly => "secrets-weekly",
            Class::SecretsLatest => "secrets-latest",
            Class::Inventory => "inventory",
            Class::DrillReport => "drill-report",
            Class::Unrecognised => "unrecognised",
            Class::DocumentsMirror => "documents-mirror",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One stored object of a backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    /// When the store created it: a bucket retention policy counts from here.
    pub created: DateTime<Utc>,
    /// The hold on it (a pin), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<crate::storage::Hold>,
}

impl StoredObject {
    /// What retention needs of a listed object.
    pub fn of(object: &crate::storage::ObjectInfo) -> StoredObject {
        StoredObject {
            key: object.key.clone(),
            size: object.size,
            created: object.created,
            hold: object.hold.clone(),
        }
    }
}

/// What retention knows about one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum State {
    /// The manifest was read; `at` is the time it records for the backup.
    Complete { at: DateTime<Utc> },
    /// No manifest (or its data object is gone): the newest time any of its
    /// objects was written or named.
    Incomplete { last_written: DateTime<Utc> },
    /// A manifest that could not be parsed: never deleted automatically.
    Unreadable { problem: String },
    /// Needs no time: protected or unrecognised objects.
    Untimed,
    /// A mirrored document generation: no manifest, only the store's
    /// `updated` time of the copy.
    Mirrored { updated: DateTime<Utc> },
}

/// One backup: its class, the objects that make it up, and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backup {
    pub class: Class,
    /// Backups sharing a safety floor within a class: the database name for
    /// PostgreSQL backups, empty otherwise.
    pub series: String,
    /// How operators name it: the key of its main object.
    pub id: String,
    /// Deletion order: data first, manifest last, so an interrupted deletion
    /// leaves a backup that is visibly incomplete rather than one that looks
    /// complete and is not.
    pub objects: Vec<StoredObject>,
    #[serde(flatten)]
    pub state: State,
}

impl Backup {
    pub fn bytes(&self) -> u64 {
        self.objects.iter().map(|object| object.size).sum()
    }

    /// The pin on it: the hold of any of its objects (a pin interrupted
    /// half-way still holds what it reached, and those cannot be deleted).
    pub fn pin(&self) -> Option<&crate::storage::Hold> {
        self.objects.iter().find_map(|object| object.hold.as_ref())
    }

    /// The time shown as its age: the manifest's, or the newest write.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        match self.state {
            State::Complete { at } => Some(at),
            State::Incomplete { last_written } => Some(last_written),
            State::Mirrored { updated } => Some(updated),
            State::Unreadable { .. } | State::Untimed => None,
        }
    }
}

/// An age limit, in the unit the configuration uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Age {
    Days(u32),
    Weeks(u32),
    /// Calendar months: 12 months before 2027-02-28 is 2026-02-28.
    Months(u32),
}

impl Age {
    /// The instant `self` before `now`; backups before it are past the limit.
    /// Months are calendar months, clamped to the end of a shorter month.
    pub fn cutoff(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Age::Days(days) => now - Duration::days(i64::from(days)),
            Age::Weeks(weeks) => now - Duration::weeks(i64::from(weeks)),
            Age::Months(months) => now
                .checked_sub_months(Months::new(months))
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }
}

impl fmt::Display for Age {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Age::Days(days) => write!(formatter, "{days} days"),
            Age::Weeks(weeks) => write!(formatter, "{weeks} weeks"),
            Age::Months(months) => write!(formatter, "{months} months"),
        }
    }
}

/// Age limit and safety floor of one class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClassRule {
    pub max_age: Age,
    /// The newest `keep_min` complete backups are kept whatever their age.
    pub keep_min: u32,
}

/// The whole policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub postgres_daily: ClassRule,
    pub postgres_monthly: ClassRule,
    pub secrets_weekly: ClassRule,
    pub inventory: ClassRule,
    pub drill_report: ClassRule,
    /// Incomplete backups younger than this may still be in progress.
    pub incomplete_grace: Duration,
    /// Mirrored document copies younger than this are kept whatever the
    /// references: an inventory in progress may already have copied them.
    pub mirror_grace: Duration,
    /// How far in the future a manifest time may be before it is an anomaly
    /// (clocks of the writer and of this run differ a little).
    pub future_tolerance: Duration,
}

impl Policy {
    /// The policy a [`crate::config::RetentionConfig`] describes.
    pub fn from_config(config: &crate::config::RetentionConfig) -> Policy {
        Policy {
            postgres_daily: ClassRule {
                max_age: Age::Days(config.daily_days),
                keep_min: config.keep_min_daily,
            },
            postgres_monthly: ClassRule {
                max_age: Age::Months(config.monthly_months),
                keep_min: config.keep_min_monthly,
            },
            secrets_weekly: ClassRule {
                max_age: Age::Weeks(config.weekly_secrets_weeks),
                keep_min: config.keep_min_weekly_secrets,
            },
            inventory: ClassRule {
                max_age: Age::Days(config.inventory_days),
                keep_min: config.keep_min_inventories,
            },
            drill_report: ClassRule {
                max_age: Age::Months(config.drill_report_months),
                keep_min: config.keep_min_drill_reports,
            },
            incomplete_grace: Duration::hours(48),
            mirror_grace: Duration::hours(48),
            future_tolerance: Duration::minutes(10),
        }
    }

    /// The rule of a class that ages out; `None` for classes that never do.
    pub fn rule(&self, class: Class) -> Option<ClassRule> {
        match class {
            Class::PostgresDaily => Some(self.postgres_daily),
            Class::PostgresMonthly => Some(self.postgres_monthly),
            Class::SecretsWeekly => Some(self.secrets_weekly),
            Class::Inventory => Some(self.inventory),
            Class::DrillReport => Some(self.drill_report),
            // The mirror follows the inventories, not an age of its own.
            Class::SecretsLatest | Class::Unrecognised | Class::DocumentsMirror => None,
        }
    }
}

/// Keep or delete, always with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", content = "reason", rename_all = "lowercase")]
pub enum Decision {
    Keep(Reason),
    Delete(Reason),
}

impl Decision {
    pub fn is_delete(&self) -> bool {
        matches!(self, Decision::Delete(_))
    }

    pub fn reason(&self) -> &Reason {
        match self {
            Decision::Keep(reason) | Decision::Delete(reason) => reason,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Decision::Keep(_) => "keep",
            Decision::Delete(_) => "delete",
        }
    }
}

/// Why a backup is kept or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum Reason {
    /// Younger than its class's age limit.
    WithinAge { limit: Age },
    /// Past the age limit but among the newest `floor` complete backups.
    SafetyFloor { rank: usize, floor: u32, limit: Age },
    /// Past the age limit and outside the floor.
    Expired { limit: Age },
    /// `secrets/latest.json.encrypted`.
    NeverDeleted,
    /// No manifest, but recent enough to be in progress.
    IncompleteRecent,
    /// No manifest and older than the grace period: a leftover.
    IncompleteAbandoned,
    /// Anomaly: dated after the time of this run.
    FutureDated,
    /// Anomaly: the manifest cannot be read.
    Unreadable { problem: String },
    /// Anomaly: an object retention does not recognise.
    Unrecognised,
    /// Anomaly: a kept inventory whose entries cannot be read or do not match
    /// its summary; while it exists no mirrored object is deleted.
    InventoryUnreadable { problem: String },
    /// A mirrored generation some kept inventory references.
    MirrorReferenced,
    /// A mirrored generation no kept inventory references.
    MirrorUnreferenced,
    /// A mirrored copy written under 48 h ago: a running inventory may have
    /// copied it before writing its summary.
    MirrorRecent,
    /// No kept complete inventory at all: nothing says what is unreferenced.
    MirrorNoKeptInventory,
    /// A kept inventory could not be read: it may reference anything.
    MirrorReferencesUnknown,
    /// Held by `keshless-ops backups pin` (or a hold placed by hand): kept
    /// whatever its age, and not counted toward a floor.
    Pinned { reason: String },
    /// Would be deleted, but the bucket's retention policy protects an
    /// object of it until then: kept this run, deleted by a later one.
    LockedUntil {
        until: DateTime<Utc>,
        /// What would have happened otherwise.
        instead: Box<Reason>,
    },
}

impl Reason {
    /// Whether a person should look at it.
    pub fn is_anomaly(&self) -> bool {
        matches!(
            self,
            Reason::FutureDated | Reason::Unreadable { .. } | Reason::Unrecognised | Reason::InventoryUnreadable { .. }
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::WithinAge { limit } => write!(formatter, "younger than {limit}"),
            Reason::SafetyFloor { rank, floor, limit } => write!(
                formatter,
                "older than {limit} but newest #{rank} of the {floor} always kept"
            ),
            Reason::Expired { limit } => write!(formatter, "older than {limit}"),
            Reason::NeverDeleted => formatter.write_str("the latest secrets backup is never deleted"),
            Reason::IncompleteRecent => {
                formatter.write_str("incomplete (no manifest), last written under 48 h ago: may still be in progress")
            }
            Reason::IncompleteAbandoned => {
                formatter.write_str("incomplete (no manifest), last written over 48 h ago: abandoned")
            }
            Reason::FutureDated => formatter.write_str("ANOMALY: dated in the future; kept, check the clocks"),
            Reason::Unreadable { problem } => write!(formatter, "ANOMALY: manifest unreadable ({problem}); kept"),
            Reason::Unrecognised => formatter.write_str("ANOMALY: not a backup retention knows; kept"),
            Reason::InventoryUnreadable { problem } => write!(
                formatter,
                "ANOMALY: inventory entries unreadable or altered ({problem}); kept, and no mirrored object is deleted"
            ),
            Reason::MirrorReferenced => formatter.write_str("referenced by a kept inventory"),
            Reason::MirrorUnreferenced => formatter.write_str("no longer referenced by any kept inventory"),
            Reason::MirrorRecent => formatter.write_str("younger than 48 h: an inventory in progress may reference it"),
            Reason::MirrorNoKeptInventory => {
                formatter.write_str("no kept complete inventory: the mirror is left alone")
            }
            Reason::MirrorReferencesUnknown => {
                formatter.write_str("a kept inventory could not be read: no mirrored object is deleted this run")
            }
            Reason::Pinned { reason } if reason.is_empty() => {
                formatter.write_str("pinned: held by a temporary hold placed outside keshless-ops")
            }
            Reason::Pinned { reason } => write!(formatter, "pinned: {reason}"),
            Reason::LockedUntil { until, instead } => write!(
                formatter,
                "locked until {} by the bucket's retention policy ({instead}; a later run deletes it)",
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        }
    }
}

/// Decides every backup: the result is parallel to `backups`.
pub fn decide(backups: &[Backup], policy: &Policy, now: DateTime<Utc>) -> Vec<Decision> {
    let future_after = now + policy.future_tolerance;

    // Rank complete, not-future backups newest first within (class, series).
    // Ties on time are broken by id so the ranking is total and repeatable.
    // (class, series) -> [(time, id, index into backups)]
    type Ranked<'a> = Vec<(DateTime<Utc>, &'a str, usize)>;
    let mut series: BTreeMap<(Class, &str), Ranked> = BTreeMap::new();
    for (index, backup) in backups.iter().enumerate() {
        if backup.pin().is_some() {
            continue; // kept anyway; the floor is made of the others
        }
        if let State::Complete { at } = backup.state {
            if at <= future_after {
                series
                    .entry((backup.class, backup.series.as_str()))
                    .or_default()
                    .push((at, backup.id.as_str(), index));
            }
        }
    }
    let mut rank_of = vec![usize::MAX; backups.len()];
    for members in series.values_mut() {
        members.sort_by(|left, right| right.0.cmp(&left.0).then_with(|| right.1.cmp(left.1)));
        for (rank, (_, _, index)) in members.iter().enumerate() {
            rank_of[*index] = rank + 1;
        }
    }

    backups
        .iter()
        .zip(rank_of)
        .map(|(backup, rank)| decide_one(backup, rank, policy, now, future_after))
        .collect()
}

fn decide_one(
    backup: &Backup,
    rank: usize,
    policy: &Policy,
    now: DateTime<Utc>,
    future_after: DateTime<Utc>,
) -> Decision {
    if let Some(hold) = backup.pin() {
        return Decision::Keep(Reason::Pinned {
            reason: hold.reason.clone(),
        });
    }
    if backup.class == Class::SecretsLatest {
        return Decision::Keep(Reason::NeverDeleted);
    }
    let Some(rule) = policy.rule(backup.class) else {
        return Decision::Keep(Reason::Unrecognised);
    };
    match &backup.state {
        State::Untimed | State::Mirrored { .. } => Decision::Keep(Reason::Unrecognised),
        State::Unreadable { problem } => Decision::Keep(Reason::Unreadable {
            problem: problem.clone(),
        }),
        State::Incomplete { last_written } => {
            if *last_written > future_after {
                Decision::Keep(Reason::FutureDated)
            } else if *last_written < now - policy.incomplete_grace {
                Decision::Delete(Reason::IncompleteAbandoned)
            } else {
                Decision::Keep(Reason::IncompleteRecent)
            }
        }
        State::Complete { at } => {
            if *at > future_after {
                Decision::Keep(Reason::FutureDated)
            } else if *at >= rule.max_age.cutoff(now) {
                Decision::Keep(Reason::WithinAge { limit: rule.max_age })
            } else if rank <= rule.keep_min as usize {
                Decision::Keep(Reason::SafetyFloor {
                    rank,
                    floor: rule.keep_min,
                    limit: rule.max_age,
                })
            } else {
                Decision::Delete(Reason::Expired { limit: rule.max_age })
            }
        }
    }
}

/// A deletion the store's retention policy would refuse becomes a keep:
/// "locked until" the newest object of the backup is old enough. Cloud
/// Storage refuses to delete an object younger than the bucket's retention
/// period (it counts from the object's creation), so trying would only fail.
pub fn hold_back_locked(
    backup: &Backup,
    decision: Decision,
    retention: Option<&crate::storage::RetentionPolicy>,
    now: DateTime<Utc>,
) -> Decision {
    let (Decision::Delete(reason), Some(retention)) = (&decision, retention) else {
        return decision;
    };
    let until = backup
        .objects
        .iter()
        .map(|object| retention.locked_until(object.created))
        .max();
    match until {
        Some(until) if until > now => Decision::Keep(Reason::LockedUntil {
            until,
            instead: Box::new(reason.clone()),
        }),
        _ => decision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn time(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn policy() -> Policy {
        Policy::from_config(&crate::config::RetentionConfig::default())
    }

    fn complete(class: Class, id: &str, at: &str) -> Backup {
        Backup {
            class,
            series: if matches!(class, Class::PostgresDaily | Class::PostgresMonthly) {
                "keshless".into()
            } else {
                String::new()
            },
            id: id.into(),
            objects: vec![StoredObject {
                key: id.into(),
                size: 10,
                ..StoredObject::default()
            }],
            state: State::Complete { at: time(at) },
        }
    }

    fn daily(id: &str, at: &str) -> Backup {
        complete(Class::PostgresDaily, id, at)
    }

    fn incomplete(class: Class, id: &str, last_written: &str) -> Backup {
        Backup {
            state: State::Incomplete {
                last_written: time(last_written),
            },
            ..complete(class, id, "2000-01-01T00:00:00Z")
        }
    }

    /// (id, decision label, reason rule) for compact assertions.
    fn summary(backups: &[Backup], now: &str) -> Vec<(String, &'static str, String)> {
        decide(backups, &policy(), time(now))
            .into_iter()
            .zip(backups)
            .map(|(decision, backup)| {
                let rule = serde_json::to_value(decision.reason()).unwrap()["rule"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                (backup.id.clone(), decision.label(), rule)
            })
            .collect()
    }

    fn deleted(backups: &[Backup], now: &str) -> Vec<String> {
        summary(backups, now)
            .into_iter()
            .filter(|(_, label, _)| *label == "delete")
            .map(|(id, _, _)| id)
            .collect()
    }

    /// A daily backup at 02:00 UTC on each of `days` days ending at `last`.
    fn daily_history(last: DateTime<Utc>, days: i64) -> Vec<Backup> {
        (0..days)
            .map(|offset| {
                let at = last - Duration::days(offset);
                daily(&format!("daily/{}", at.format("%Y-%m-%d")), &at.to_rfc3339())
            })
            .collect()
    }

    #[test]
    fn an_empty_listing_decides_nothing() {
        assert!(decide(&[], &policy(), Utc::now()).is_empty());
    }

    #[test]
    fn daily_backups_older_than_thirty_days_go_and_the_rest_stay() {
        let now = "2026-11-26T05:00:00Z";
        let backups = daily_history(time("2026-11-26T02:00:00Z"), 40);
        let deleted = deleted(&backups, now);
        // 2026-10-27T05:00 is the cutoff: 10-27 02:00 and older are expired.
        assert_eq!(deleted.len(), 10, "{deleted:?}");
        assert_eq!(deleted.first().unwrap(), "daily/2026-10-27");
        assert_eq!(deleted.last().unwrap(), "daily/2026-10-18");
        let kept = summary(&backups, now);
        assert_eq!(kept[0], ("daily/2026-11-26".into(), "keep", "within-age".into()));
    }

    #[test]
    fn exactly_at_the_limit_is_kept_one_second_past_is_not() {
        let backups = vec![
            daily("at-limit", "2026-10-27T05:00:00Z"),
            daily("past-limit", "2026-10-27T04:59:59Z"),
        ];
        // Both are outside the floor only if seven newer ones exist.
        let mut all = daily_history(time("2026-11-26T02:00:00Z"), 7);
        all.extend(backups);
        let decisions = summary(&all, "2026-11-26T05:00:00Z");
        assert_eq!(decisions[7].1, "keep");
        assert_eq!(decisions[8], ("past-limit".into(), "delete", "expired".into()));
    }

    #[test]
    fn only_old_backups_keep_the_newest_seven_by_the_floor() {
        // The backup job stopped 100 days ago: every daily is past 30 days.
        let backups = daily_history(time("2026-08-18T02:00:00Z"), 20);
        let decisions = summary(&backups, "2026-11-26T05:00:00Z");
        for (rank, decision) in decisions.iter().enumerate() {
            if rank < 7 {
                assert_eq!(
                    (decision.1, decision.2.as_str()),
                    ("keep", "safety-floor"),
                    "{decision:?}"
                );
            } else {
                assert_eq!((decision.1, decision.2.as_str()), ("delete", "expired"), "{decision:?}");
            }
        }
    }

    #[test]
    fn the_floor_follows_manifest_times_not_names() {
        // A naming change: the newest backups sort first by name but are the
        // oldest by time. The floor must keep the newest by time.
        let mut backups = Vec::new();
        for day in 1..=9 {
            backups.push(daily(&format!("zzz-old-{day}"), &format!("2026-01-0{day}T02:00:00Z")));
        }
        for day in 10..=17 {
            backups.push(daily(&format!("aaa-new-{day}"), &format!("2026-02-{day}T02:00:00Z")));
        }
        let deleted = deleted(&backups, "2026-11-26T05:00:00Z");
        assert_eq!(deleted.len(), 10);
        assert!(deleted.iter().filter(|id| id.starts_with("zzz-old")).count() == 9);
        // aaa-new-10 is #8 by time: out of the floor; 11..17 are kept.
        assert!(deleted.contains(&"aaa-new-10".to_owned()));
    }

    #[test]
    fn floors_are_per_database() {
        let mut backups = daily_history(time("2026-06-01T02:00:00Z"), 10);
        let mut other = daily_history(time("2026-05-01T02:00:00Z"), 10);
        for backup in &mut other {
            backup.series = "ledger".into();
            backup.id = format!("ledger-{}", backup.id);
        }
        backups.extend(other);
        let deleted = deleted(&backups, "2026-11-26T05:00:00Z");
        assert_eq!(deleted.len(), 6, "3 per database outside each floor of 7: {deleted:?}");
        assert_eq!(deleted.iter().filter(|id| id.starts_with("ledger-")).count(), 3);
    }

    #[test]
    fn a_clock_jumped_far_forward_deletes_nothing_the_floor_protects() {
        let backups = daily_history(time("2026-11-26T02:00:00Z"), 30);
        let deleted = deleted(&backups, "2036-11-26T05:00:00Z");
        assert_eq!(deleted.len(), 23, "only the seven newest survive a ten-year jump");
        assert!(!deleted.contains(&"daily/2026-11-26".to_owned()));
    }

    #[test]
    fn a_clock_behind_keeps_future_backups_and_they_do_not_fill_the_floor() {
        // The run's clock says 2026-11-01, but the store holds backups up to
        // 2026-11-26: those after now+tolerance are kept as anomalies, and the
        // floor of 7 is filled from the ten real ones, all past 30 days.
        let mut backups = daily_history(time("2026-11-26T02:00:00Z"), 25);
        backups.extend(daily_history(time("2026-09-10T02:00:00Z"), 10));
        let decisions = summary(&backups, "2026-11-01T05:00:00Z");
        assert!(
            decisions[..25].iter().all(|decision| decision.2 == "future-dated"),
            "{decisions:?}"
        );
        assert!(
            decisions[25..32].iter().all(|decision| decision.2 == "safety-floor"),
            "{decisions:?}"
        );
        assert!(
            decisions[32..].iter().all(|decision| decision.2 == "expired"),
            "{decisions:?}"
        );
        let reasons = decide(&backups, &policy(), time("2026-11-01T05:00:00Z"));
        assert_eq!(
            reasons.iter().filter(|decision| decision.reason().is_anomaly()).count(),
            25
        );
    }

    #[test]
    fn a_small_skew_into_the_future_is_not_an_anomaly() {
        let backups = vec![daily("fresh", "2026-11-26T05:05:00Z")];
        assert_eq!(summary(&backups, "2026-11-26T05:00:00Z")[0].2, "within-age");
    }

    #[test]
    fn a_future_dated_backup_does_not_take_a_place_in_the_floor() {
        let mut backups = daily_history(time("2026-01-10T02:00:00Z"), 8);
        backups.push(daily("from-the-future", "2027-01-01T00:00:00Z"));
        let deleted = deleted(&backups, "2026-11-26T05:00:00Z");
        assert_eq!(
            deleted,
            ["daily/2026-01-03"],
            "seven real ones kept, the eighth expires"
        );
    }

    #[test]
    fn monthly_limits_are_calendar_months_across_boundaries() {
        let monthly = |id: &str, at: &str| complete(Class::PostgresMonthly, id, at);
        let backups = vec![
            monthly("m-2025-11", "2025-11-26T05:00:00Z"),
            monthly("m-2025-11-early", "2025-11-26T04:59:59Z"),
            monthly("m-2026-10", "2026-10-01T02:00:00Z"),
            monthly("m-2026-09", "2026-09-01T02:00:00Z"),
            monthly("m-2026-08", "2026-08-01T02:00:00Z"),
        ];
        let decisions = summary(&backups, "2026-11-26T05:00:00Z");
        assert_eq!(decisions[0].1, "keep", "exactly 12 months old is within the limit");
        assert_eq!(decisions[1], ("m-2025-11-early".into(), "delete", "expired".into()));
    }

    #[test]
    fn month_arithmetic_on_the_thirty_first_and_the_leap_day() {
        // 12 months before 2025-02-28 is 2024-02-28 (not an invalid date).
        assert_eq!(
            Age::Months(12).cutoff(time("2025-02-28T00:00:00Z")),
            time("2024-02-28T00:00:00Z")
        );
        // One month before March 31 is the last day of February.
        assert_eq!(
            Age::Months(1).cutoff(time("2024-03-31T12:00:00Z")),
            time("2024-02-29T12:00:00Z")
        );
        assert_eq!(
            Age::Months(1).cutoff(time("2025-03-31T12:00:00Z")),
            time("2025-02-28T12:00:00Z")
        );
        // 12 months before the leap day is clamped to 2023-02-28.
        assert_eq!(
            Age::Months(12).cutoff(time("2024-02-29T02:00:00Z")),
            time("2023-02-28T02:00:00Z")
        );
        // A daily backup taken on the leap day is 30 days old on March 30.
        let mut backups = daily_history(time("2024-03-30T02:00:00Z"), 7);
        backups.push(daily("leap-day", "2024-02-29T02:00:00Z"));
        backups.push(daily("day-before", "2024-02-28T02:00:00Z"));
        assert_eq!(deleted(&backups, "2024-03-30T02:00:00Z"), ["day-before"]);
    }

    #[test]
    fn incomplete_backups_go_only_after_forty_eight_hours() {
        let backups = vec![
            incomplete(Class::PostgresDaily, "young", "2026-11-24T05:00:01Z"),
            incomplete(Class::PostgresDaily, "exactly-48h", "2026-11-24T05:00:00Z"),
            incomplete(Class::PostgresDaily, "old", "2026-11-24T04:59:59Z"),
            incomplete(Class::Inventory, "old-inventory", "2026-01-01T00:00:00Z"),
            incomplete(Class::PostgresMonthly, "future", "2027-01-01T00:00:00Z"),
        ];
        let decisions = summary(&backups, "2026-11-26T05:00:00Z");
        assert_eq!(decisions[0].2, "incomplete-recent");
        assert_eq!(decisions[1].2, "incomplete-recent");
        assert_eq!(decisions[2], ("old".into(), "delete", "incomplete-abandoned".into()));
        assert_eq!(decisions[3].1, "delete");
        assert_eq!(decisions[4], ("future".into(), "keep", "future-dated".into()));
    }

    #[test]
    fn incomplete_backups_do_not_count_toward_the_floor() {
        // Seven old complete backups plus newer incomplete ones: the floor
        // must still hold the seven complete ones.
        let mut backups = daily_history(time("2026-01-10T02:00:00Z"), 7);
        for day in 1..=5 {
            backups.push(incomplete(
                Class::PostgresDaily,
                &format!("broken-{day}"),
                &format!("2026-11-0{day}T02:00:00Z"),
            ));
        }
        let decisions = summary(&backups, "2026-11-26T05:00:00Z");
        assert!(decisions[..7].iter().all(|decision| decision.2 == "safety-floor"));
        assert!(decisions[7..]
            .iter()
            .all(|decision| decision.2 == "incomplete-abandoned"));
    }

    #[test]
    fn latest_secrets_unreadable_and_unrecognised_are_never_deleted() {
        let backups = vec![
            Backup {
                class: Class::SecretsLatest,
                series: String::new(),
                id: "secrets/latest.json.encrypted".into(),
                objects: vec![],
                state: State::Complete {
                    at: time("2000-01-01T00:00:00Z"),
                },
            },
            Backup {
                state: State::Unreadable {
                    problem: "not JSON".into(),
                },
                ..daily("garbled", "2000-01-01T00:00:00Z")
            },
            Backup {
                class: Class::Unrecognised,
                state: State::Untimed,
                ..daily("postgresql/daily/notes.txt", "2000-01-01T00:00:00Z")
            },
        ];
        let decisions = decide(&backups, &policy(), time("2026-11-26T05:00:00Z"));
        assert_eq!(decisions[0], Decision::Keep(Reason::NeverDeleted));
        assert!(matches!(&decisions[1], Decision::Keep(Reason::Unreadable { problem }) if problem == "not JSON"));
        assert_eq!(decisions[2], Decision::Keep(Reason::Unrecognised));
    }

    #[test]
    fn each_class_uses_its_own_limit_and_floor() {
        let now = "2026-11-26T05:00:00Z";
        let weekly = |weeks_ago: i64| {
            let at = time(now) - Duration::weeks(weeks_ago) - Duration::hours(1);
            complete(Class::SecretsWeekly, &format!("w{weeks_ago}"), &at.to_rfc3339())
        };
        let inventory = |days_ago: i64| {
            let at = time(now) - Duration::days(days_ago) - Duration::hours(1);
            complete(Class::Inventory, &format!("i{days_ago}"), &at.to_rfc3339())
        };
        let drill = |months_ago: u32| {
            let at = time(now).checked_sub_months(Months::new(months_ago)).unwrap() - Duration::hours(1);
            complete(Class::DrillReport, &format!("d{months_ago}"), &at.to_rfc3339())
        };
        let backups: Vec<Backup> = (0..14)
            .map(weekly)
            .chain((88..=91).map(inventory))
            .chain([22, 23, 24, 25].map(drill))
            .collect();
        let deleted = deleted(&backups, now);
        // weeks 0..=11 are younger than 12 weeks (w11 is 11 weeks + 1 h);
        // w12 and w13 are past it and beyond the floor of 4.
        // inventories: 90 days is the limit (i90, i91 expire; floor 7 keeps all 4!).
        // drills: d24 and d25 are past 24 months, but the floor of 3 keeps d24.
        assert_eq!(deleted, ["w12", "w13", "d25"]);
    }

    #[test]
    fn thousands_of_backups_are_decided_quickly_and_consistently() {
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 5, 0, 0).unwrap();
        let mut backups = daily_history(now - Duration::hours(3), 5_000);
        // Shuffle deterministically: the input order must not matter.
        backups.reverse();
        backups.rotate_left(1_234);
        let decisions = decide(&backups, &policy(), now);
        let deleted = decisions.iter().filter(|decision| decision.is_delete()).count();
        // Days 0..=29 are within 30 days (day 30 at 02:00 is just past).
        assert_eq!(deleted, 5_000 - 30);
        let kept: Vec<&str> = backups
            .iter()
            .zip(&decisions)
            .filter(|(_, decision)| !decision.is_delete())
            .map(|(backup, _)| backup.id.as_str())
            .collect();
        assert!(kept.contains(&"daily/2026-11-25"));
        assert!(!kept.contains(&"daily/2026-10-26"));
    }

    #[test]
    fn pinned_backups_are_kept_and_the_floor_is_made_of_the_others() {
        let hold = |reason: &str| crate::storage::Hold {
            reason: reason.into(),
            since: None,
            by: None,
        };
        // Twenty dailies, all past 30 days: the floor keeps seven. Pin the
        // oldest and the newest: both are kept as pinned, and the floor still
        // keeps the seven newest unpinned ones.
        let mut backups = daily_history(time("2026-08-18T02:00:00Z"), 20);
        backups[0].objects[0].hold = Some(hold("incident 7"));
        backups[19].objects[0].hold = Some(hold(""));
        let decisions = decide(&backups, &policy(), time("2026-11-26T05:00:00Z"));
        assert_eq!(
            decisions[0],
            Decision::Keep(Reason::Pinned {
                reason: "incident 7".into()
            })
        );
        assert_eq!(decisions[0].reason().to_string(), "pinned: incident 7");
        assert!(decisions[19].reason().to_string().contains("outside keshless-ops"));
        for (index, decision) in decisions.iter().enumerate().take(19).skip(1) {
            let expected = if index <= 7 { "safety-floor" } else { "expired" };
            let rule = serde_json::to_value(decision.reason()).unwrap()["rule"].clone();
            assert_eq!(rule, expected, "#{index}: {decision:?}");
        }
        if let Decision::Keep(Reason::SafetyFloor { rank, .. }) = &decisions[1] {
            assert_eq!(*rank, 1, "the newest unpinned is #1");
        }
        // The latest secrets pointer, pinned, says pinned.
        let mut latest = complete(
            Class::SecretsLatest,
            "secrets/latest.json.encrypted",
            "2026-01-01T00:00:00Z",
        );
        latest.objects[0].hold = Some(hold("rotation"));
        assert!(matches!(
            decide(&[latest], &policy(), time("2026-11-26T05:00:00Z"))[0],
            Decision::Keep(Reason::Pinned { .. })
        ));
    }

    #[test]
    fn deletions_the_bucket_retention_policy_refuses_are_held_back() {
        let now = time("2026-11-26T05:00:00Z");
        let seven_days = crate::storage::RetentionPolicy {
            period: Duration::days(7),
            locked: true,
        };
        let backup = |created: &str| Backup {
            objects: vec![
                StoredObject {
                    key: "a".into(),
                    size: 1,
                    created: time("2026-01-01T00:00:00Z"),
                    hold: None,
                },
                StoredObject {
                    key: "b".into(),
                    size: 1,
                    created: time(created),
                    hold: None,
                },
            ],
            ..incomplete(Class::PostgresDaily, "leftover", "2026-11-20T00:00:00Z")
        };
        let delete = Decision::Delete(Reason::IncompleteAbandoned);
        // The newest object was created 6 days ago: locked one more day.
        let young = backup("2026-11-20T05:00:00Z");
        let held = hold_back_locked(&young, delete.clone(), Some(&seven_days), now);
        assert_eq!(
            held,
            Decision::Keep(Reason::LockedUntil {
                until: time("2026-11-27T05:00:00Z"),
                instead: Box::new(Reason::IncompleteAbandoned)
            })
        );
        assert!(
            held.reason()
                .to_string()
                .starts_with("locked until 2026-11-27T05:00:00Z"),
            "{}",
            held.reason()
        );
        // Exactly at the end of the period, and without a policy: deleted.
        let old = backup("2026-11-19T05:00:00Z");
        assert_eq!(hold_back_locked(&old, delete.clone(), Some(&seven_days), now), delete);
        assert_eq!(hold_back_locked(&young, delete.clone(), None, now), delete);
        // Keeps stay keeps.
        let keep = Decision::Keep(Reason::IncompleteRecent);
        assert_eq!(hold_back_locked(&young, keep.clone(), Some(&seven_days), now), keep);
    }
}
