//! The decisions behind point-in-time restore and `documents check`, as pure
//! functions over listings: which generation was live at a time, whether two
//! generations hold the same bytes, and what to do with one object name.

use chrono::{DateTime, Utc};

use crate::storage::ObjectInfo;

/// What is known about the bytes of one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub size: u64,
    pub crc32c: Option<String>,
    pub md5: Option<String>,
}

impl Content {
    pub fn of(object: &ObjectInfo) -> Content {
        Content {
            size: object.size,
            crc32c: object.crc32c.clone(),
            md5: object.md5.clone(),
        }
    }

    /// Same bytes, judged by size and every checksum both sides have. A
    /// restored copy is a new generation, so generation numbers cannot tell;
    /// without any shared checksum the answer is "different" (restoring again
    /// is harmless, skipping a real difference is not).
    pub fn same_as(&self, other: &Content) -> bool {
        let both = |left: &Option<String>, right: &Option<String>| match (left, right) {
            (Some(left), Some(right)) => Some(left == right),
            _ => None,
        };
        let checks = [both(&self.crc32c, &other.crc32c), both(&self.md5, &other.md5)];
        self.size == other.size
            && checks.iter().any(Option::is_some)
            && checks.iter().all(|check| *check != Some(false))
    }
}

/// The generation of one object name that was live at `time`: created at or
/// before `time` and not yet replaced or deleted at `time`. `versions` are all
/// generations of one name, in any order. A non-current generation whose end
/// the store does not report ends when the next generation was created; with
/// no next generation either, it cannot be shown live at `time` and is skipped.
pub fn live_at(versions: &[ObjectInfo], time: DateTime<Utc>) -> Option<&ObjectInfo> {
    versions
        .iter()
        .filter(|version| version.created <= time)
        .filter(|version| {
            let ended = if version.live {
                None
            } else {
                version.noncurrent_since.or_else(|| {
                    versions
                        .iter()
                        .filter(|other| other.generation > version.generation)
                        .map(|other| other.created)
                        .min()
                })
            };
            match (version.live, ended) {
                (true, _) => true,
                (false, Some(ended)) => ended > time,
                (false, None) => false,
            }
        })
        .max_by_key(|version| version.generation)
}

/// What to do with one object name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The live object already holds the wanted bytes.
    Unchanged,
    /// Copy the wanted generation back to live (missing or different now).
    Restore,
    /// No generation was live at the point, but one is now: kept.
    NewerKept,
    /// No generation was live at the point, but one is now: deleted (`--delete-newer`).
    NewerDeleted,
    /// Absent then and now: nothing to do or report.
    AbsentBoth,
}

/// Decides from what was live at the point (`wanted`) and what is live now.
pub fn decide(wanted: Option<&Content>, live: Option<&Content>, delete_newer: bool) -> Decision {
    match (wanted, live) {
        (Some(wanted), Some(live)) if wanted.same_as(live) => Decision::Unchanged,
        (Some(_), _) => Decision::Restore,
        (None, Some(_)) if delete_newer => Decision::NewerDeleted,
        (None, Some(_)) => Decision::NewerKept,
        (None, None) => Decision::AbsentBoth,
    }
}

/// How the store compares with an inventory, for one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Comparison {
    Unchanged,
    /// In the inventory, not in the store.
    Missing,
    /// In both, with different bytes.
    Changed,
    /// In the store, not in the inventory (created since): not a finding.
    Added,
}

/// Compares one name's inventory record with its live object.
pub fn compare(recorded: Option<&Content>, live: Option<&Content>) -> Option<Comparison> {
    match (recorded, live) {
        (Some(recorded), Some(live)) if recorded.same_as(live) => Some(Comparison::Unchanged),
        (Some(_), Some(_)) => Some(Comparison::Changed),
        (Some(_), None) => Some(Comparison::Missing),
        (None, Some(_)) => Some(Comparison::Added),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + second, 0).unwrap()
    }

    fn version(generation: i64, created: i64, ended: Option<i64>, live: bool) -> ObjectInfo {
        ObjectInfo {
            key: "kyc/a".into(),
            size: 1,
            generation: Some(generation),
            live,
            updated: at(created),
            created: at(created),
            noncurrent_since: ended.map(at),
            crc32c: Some(format!("crc{generation}")),
            md5: None,
            content_type: None,
            hold: None,
        }
    }

    #[test]
    fn generation_live_at_a_time() {
        // g1 created at 10, replaced at 20 by g2, deleted at 30; g3 created at 40 and live.
        let history = vec![
            version(3, 40, None, true),
            version(1, 10, Some(20), false),
            version(2, 20, Some(30), false),
        ];
        let cases: &[(&str, i64, Option<i64>)] = &[
            ("before anything existed", 5, None),
            ("exactly at creation", 10, Some(1)),
            ("while g1 was live", 15, Some(1)),
            ("at the replacement instant the new one is live", 20, Some(2)),
            ("while g2 was live", 25, Some(2)),
            ("at deletion: gone", 30, None),
            ("between deletion and re-creation", 35, None),
            ("after re-creation", 50, Some(3)),
        ];
        for (why, time, expected) in cases {
            let found = live_at(&history, at(*time)).and_then(|version| version.generation);
            assert_eq!(found, *expected, "{why}");
        }
    }

    #[test]
    fn missing_end_times_fall_back_to_the_next_generation() {
        let history = vec![version(1, 10, None, false), version(2, 20, None, true)];
        assert_eq!(live_at(&history, at(15)).and_then(|v| v.generation), Some(1));
        assert_eq!(live_at(&history, at(25)).and_then(|v| v.generation), Some(2));
        // A deleted generation with no end and no successor cannot be shown live.
        let deleted = vec![version(1, 10, None, false)];
        assert_eq!(live_at(&deleted, at(15)), None);
    }

    fn content(size: u64, crc32c: Option<&str>, md5: Option<&str>) -> Content {
        Content {
            size,
            crc32c: crc32c.map(str::to_owned),
            md5: md5.map(str::to_owned),
        }
    }

    #[test]
    fn content_equality() {
        let cases = [
            (
                "same size and crc",
                content(3, Some("a"), None),
                content(3, Some("a"), Some("m")),
                true,
            ),
            (
                "same everything",
                content(3, Some("a"), Some("m")),
                content(3, Some("a"), Some("m")),
                true,
            ),
            (
                "crc differs",
                content(3, Some("a"), None),
                content(3, Some("b"), None),
                false,
            ),
            (
                "md5 differs",
                content(3, Some("a"), Some("m")),
                content(3, Some("a"), Some("n")),
                false,
            ),
            (
                "size differs",
                content(3, Some("a"), None),
                content(4, Some("a"), None),
                false,
            ),
            (
                "no shared checksum",
                content(3, Some("a"), None),
                content(3, None, Some("m")),
                false,
            ),
        ];
        for (why, left, right, expected) in cases {
            assert_eq!(left.same_as(&right), expected, "{why}");
            assert_eq!(right.same_as(&left), expected, "{why} (reversed)");
        }
    }

    #[test]
    fn decisions() {
        let a = content(3, Some("a"), None);
        let b = content(3, Some("b"), None);
        let cases = [
            (Some(&a), Some(&a), false, Decision::Unchanged),
            (Some(&a), Some(&b), false, Decision::Restore),
            (Some(&a), None, false, Decision::Restore),
            (None, Some(&b), false, Decision::NewerKept),
            (None, Some(&b), true, Decision::NewerDeleted),
            (None, None, true, Decision::AbsentBoth),
        ];
        for (wanted, live, delete_newer, expected) in cases {
            assert_eq!(
                decide(wanted, live, delete_newer),
                expected,
                "{wanted:?} {live:?} {delete_newer}"
            );
        }
    }

    #[test]
    fn comparisons() {
        let a = content(3, Some("a"), None);
        let b = content(3, Some("b"), None);
        let cases = [
            (Some(&a), Some(&a), Some(Comparison::Unchanged)),
            (Some(&a), Some(&b), Some(Comparison::Changed)),
            (Some(&a), None, Some(Comparison::Missing)),
            (None, Some(&a), Some(Comparison::Added)),
            (None, None, None),
        ];
        for (recorded, live, expected) in cases {
            assert_eq!(compare(recorded, live), expected, "{recorded:?} {live:?}");
        }
    }
}
