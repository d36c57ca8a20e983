//! Retention of the documents mirror (issue 8) as pure decisions: a mirrored
//! copy `documents/objects/<name>@<generation>` follows the retention of the
//! inventories that reference it. No I/O here; [`super::plan`] streams the
//! kept inventories' entries into a [`ReferenceCollector`] and then decides
//! each mirrored object, as the store lists it, with [`decide`].
//!
//! The rules, in order:
//! 1. A key that [`parse_mirror_key`] does not understand is unrecognised:
//!    kept and reported, like any object retention does not know.
//! 2. A generation referenced by an inventory kept in this same run is kept.
//!    Inventories deleted in this run protect nothing.
//! 3. A copy written under 48 h ago (store `updated`) is kept: an inventory
//!    in progress copies first and writes its summary last, so it may
//!    reference the copy without being complete yet.
//! 4. If any kept inventory cannot be read or verified, nothing in the mirror
//!    is deleted: it may reference anything.
//! 5. With no kept complete inventory at all, nothing in the mirror is
//!    deleted: an empty reference set would otherwise condemn all of it.
//! 6. Everything else is no longer referenced and is deleted.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

use super::policy::{Backup, Class, Decision, Reason, State};
use crate::documents::layout::parse_mirror_key;

/// The (name, generation) pairs the kept inventories reference.
///
/// Memory: one map slot per distinct object name (a `Box<str>` of 16 bytes, a
/// `Vec` of 24, one control byte, at a load factor of 7/8: about 48 bytes),
/// plus the name's own bytes, plus 8 bytes per distinct generation. With
/// 60-byte names that is about 120 bytes per document: 1 million documents
/// take roughly 120 MB, however many inventories name them (90 daily
/// inventories of the same documents add only their new generations).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReferenceSet {
    generations_by_name: HashMap<Box<str>, Vec<i64>>,
    count: usize,
}

impl ReferenceSet {
    /// Records one reference; repeats (the same generation in many
    /// inventories) cost nothing more.
    pub fn insert(&mut self, name: &str, generation: i64) {
        match self.generations_by_name.get_mut(name) {
            // A name has few generations: a linear scan beats a set.
            Some(generations) => {
                if !generations.contains(&generation) {
                    generations.push(generation);
                    self.count += 1;
                }
            }
            None => {
                self.generations_by_name.insert(name.into(), vec![generation]);
                self.count += 1;
            }
        }
    }

    pub fn contains(&self, name: &str, generation: i64) -> bool {
        self.generations_by_name
            .get(name)
            .is_some_and(|generations| generations.contains(&generation))
    }

    /// Distinct (name, generation) pairs.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// What the kept inventories say about the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum References {
    /// No inventory is kept complete: nothing can be called unreferenced.
    NoKeptInventory,
    /// These kept inventories could not be read or verified: they may
    /// reference anything, so nothing can be called unreferenced.
    Unknown { inventories: Vec<String> },
    /// Every kept inventory was read; these are all their references.
    Known(ReferenceSet),
}

/// Gathers [`References`] while the kept inventories are streamed, one entry
/// at a time, so no inventory is ever held in memory whole.
#[derive(Debug, Default)]
pub struct ReferenceCollector {
    references: ReferenceSet,
    inventories_read: usize,
    unreadable: Vec<String>,
}

impl ReferenceCollector {
    /// One entry of a kept inventory.
    pub fn add(&mut self, name: &str, generation: i64) {
        self.references.insert(name, generation);
    }

    /// A kept inventory was read to its end and verified.
    pub fn inventory_read(&mut self) {
        self.inventories_read += 1;
    }

    /// A kept inventory could not be read or verified. Entries already added
    /// from it do no harm: the result is [`References::Unknown`] anyway.
    pub fn inventory_unreadable(&mut self, id: &str) {
        self.unreadable.push(id.to_owned());
    }

    pub fn finish(self) -> References {
        if !self.unreadable.is_empty() {
            References::Unknown {
                inventories: self.unreadable,
            }
        } else if self.inventories_read == 0 {
            References::NoKeptInventory
        } else {
            References::Known(self.references)
        }
    }
}

/// How one backup, already decided, bears on the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// A kept complete inventory: its entries must be read.
    Read,
    /// A kept inventory whose summary is unreadable: it may reference anything.
    Unknowable,
    /// Anything else: deleted inventories, incomplete ones (their in-progress
    /// copies are covered by the 48 h rule), other classes.
    Nothing,
}

/// Which inventories protect mirrored copies: those this run keeps.
pub fn protection(backup: &Backup, decision: &Decision) -> Protection {
    if backup.class != Class::Inventory || decision.is_delete() {
        return Protection::Nothing;
    }
    match backup.state {
        State::Complete { .. } => Protection::Read,
        State::Unreadable { .. } => Protection::Unknowable,
        State::Incomplete { .. } | State::Untimed | State::Mirrored { .. } => Protection::Nothing,
    }
}

/// The class a key under `documents/objects/` is listed as.
pub fn class_of(key: &str) -> Class {
    if parse_mirror_key(key).is_some() {
        Class::DocumentsMirror
    } else {
        Class::Unrecognised
    }
}

/// Decides one mirrored object from its key and its store `updated` time.
/// `grace` is how young a copy must be to be kept whatever the references.
pub fn decide(
    key: &str,
    updated: DateTime<Utc>,
    references: &References,
    grace: Duration,
    now: DateTime<Utc>,
) -> Decision {
    let Some((name, generation)) = parse_mirror_key(key) else {
        return Decision::Keep(Reason::Unrecognised);
    };
    if let References::Known(set) = references {
        if set.contains(name, generation) {
            return Decision::Keep(Reason::MirrorReferenced);
        }
    }
    // Exactly 48 h is still kept, as for incomplete backups.
    if updated >= now - grace {
        return Decision::Keep(Reason::MirrorRecent);
    }
    match references {
        References::Unknown { .. } => Decision::Keep(Reason::MirrorReferencesUnknown),
        References::NoKeptInventory => Decision::Keep(Reason::MirrorNoKeptInventory),
        References::Known(_) => Decision::Delete(Reason::MirrorUnreferenced),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::policy::StoredObject;

    fn time(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    const NOW: &str = "2026-11-26T05:00:00Z";
    const OLD: &str = "2026-10-01T00:00:00Z";

    fn known(pairs: &[(&str, i64)]) -> References {
        let mut collector = ReferenceCollector::default();
        for (name, generation) in pairs {
            collector.add(name, *generation);
        }
        collector.inventory_read();
        collector.finish()
    }

    fn rule(decision: &Decision) -> (&'static str, String) {
        let rule = serde_json::to_value(decision.reason()).unwrap()["rule"]
            .as_str()
            .unwrap()
            .to_owned();
        (decision.label(), rule)
    }

    fn decide_at(key: &str, updated: &str, references: &References) -> (&'static str, String) {
        rule(&decide(key, time(updated), references, Duration::hours(48), time(NOW)))
    }

    #[test]
    fn mirrored_objects_follow_the_kept_inventories() {
        let references = known(&[("kyc/u-1/passport.jpg", 7), ("kyc/me@example.com/id.png", 42)]);
        let unknown = References::Unknown {
            inventories: vec!["documents/inventory/2026-11-20.jsonl.gz".into()],
        };
        let none = References::NoKeptInventory;
        let cases: &[(&str, &str, &References, (&str, &str))] = &[
            // Referenced, however old.
            (
                "documents/objects/kyc/u-1/passport.jpg@7",
                OLD,
                &references,
                ("keep", "mirror-referenced"),
            ),
            // `@` inside the name: only the last one splits.
            (
                "documents/objects/kyc/me@example.com/id.png@42",
                OLD,
                &references,
                ("keep", "mirror-referenced"),
            ),
            // Another generation of a referenced name is not referenced.
            (
                "documents/objects/kyc/u-1/passport.jpg@6",
                OLD,
                &references,
                ("delete", "mirror-unreferenced"),
            ),
            (
                "documents/objects/kyc/gone.jpg@1",
                OLD,
                &references,
                ("delete", "mirror-unreferenced"),
            ),
            // Young: kept whatever the references.
            (
                "documents/objects/kyc/gone.jpg@1",
                "2026-11-24T05:00:01Z",
                &references,
                ("keep", "mirror-recent"),
            ),
            (
                "documents/objects/kyc/gone.jpg@1",
                "2026-11-24T05:00:00Z",
                &references,
                ("keep", "mirror-recent"),
            ),
            (
                "documents/objects/kyc/gone.jpg@1",
                "2026-11-24T04:59:59Z",
                &references,
                ("delete", "mirror-unreferenced"),
            ),
            // Dated in the future (a skewed clock): young, kept.
            (
                "documents/objects/kyc/gone.jpg@1",
                "2027-01-01T00:00:00Z",
                &references,
                ("keep", "mirror-recent"),
            ),
            // An unreadable inventory or no kept inventory: nothing goes.
            (
                "documents/objects/kyc/gone.jpg@1",
                OLD,
                &unknown,
                ("keep", "mirror-references-unknown"),
            ),
            (
                "documents/objects/kyc/u-1/passport.jpg@7",
                OLD,
                &unknown,
                ("keep", "mirror-references-unknown"),
            ),
            (
                "documents/objects/kyc/gone.jpg@1",
                "2026-11-25T00:00:00Z",
                &unknown,
                ("keep", "mirror-recent"),
            ),
            (
                "documents/objects/kyc/gone.jpg@1",
                OLD,
                &none,
                ("keep", "mirror-no-kept-inventory"),
            ),
            // Keys that do not parse: unrecognised, kept, whatever else holds.
            (
                "documents/objects/kyc/no-generation.jpg",
                OLD,
                &references,
                ("keep", "unrecognised"),
            ),
            ("documents/objects/kyc/a@x1", OLD, &references, ("keep", "unrecognised")),
            ("documents/objects/@1", OLD, &references, ("keep", "unrecognised")),
            ("documents/objects/kyc/a@", OLD, &none, ("keep", "unrecognised")),
        ];
        for (key, updated, references, expected) in cases {
            let got = decide_at(key, updated, references);
            assert_eq!((got.0, got.1.as_str()), *expected, "{key} updated {updated}");
        }
    }

    #[test]
    fn unparseable_keys_are_listed_as_unrecognised_and_are_anomalies() {
        assert_eq!(class_of("documents/objects/kyc/a.jpg@12"), Class::DocumentsMirror);
        assert_eq!(class_of("documents/objects/kyc/a.jpg"), Class::Unrecognised);
        let decision = decide(
            "documents/objects/kyc/a.jpg",
            time(OLD),
            &known(&[]),
            Duration::hours(48),
            time(NOW),
        );
        assert!(decision.reason().is_anomaly());
        // Ordinary mirror decisions are not anomalies: they would drown the real ones.
        for reason in [
            Reason::MirrorReferenced,
            Reason::MirrorUnreferenced,
            Reason::MirrorRecent,
            Reason::MirrorNoKeptInventory,
            Reason::MirrorReferencesUnknown,
        ] {
            assert!(!reason.is_anomaly(), "{reason}");
        }
        assert!(Reason::InventoryUnreadable { problem: "x".into() }.is_anomaly());
    }

    #[test]
    fn the_collector_says_unknown_if_any_inventory_was_unreadable_and_none_if_none_was_kept() {
        assert_eq!(ReferenceCollector::default().finish(), References::NoKeptInventory);

        let mut collector = ReferenceCollector::default();
        collector.add("a", 1);
        collector.inventory_read();
        collector.add("b", 2);
        collector.inventory_unreadable("documents/inventory/2026-11-20.jsonl.gz");
        collector.inventory_read();
        assert_eq!(
            collector.finish(),
            References::Unknown {
                inventories: vec!["documents/inventory/2026-11-20.jsonl.gz".into()]
            }
        );

        // An inventory that was read but listed nothing (an empty bucket)
        // still makes the references known: everything old goes.
        let references = known(&[]);
        assert_eq!(
            decide_at("documents/objects/a@1", OLD, &references),
            ("delete", "mirror-unreferenced".to_owned())
        );
    }

    #[test]
    fn the_reference_set_counts_distinct_pairs() {
        let mut set = ReferenceSet::default();
        for _ in 0..90 {
            set.insert("kyc/a.jpg", 1);
            set.insert("kyc/b.jpg", 1);
        }
        set.insert("kyc/a.jpg", 2);
        assert_eq!(set.len(), 3);
        assert!(set.contains("kyc/a.jpg", 2));
        assert!(!set.contains("kyc/b.jpg", 2));
        assert!(!set.contains("kyc/c.jpg", 1));
    }

    #[test]
    fn only_kept_inventories_protect_the_mirror() {
        let inventory = |state: State| Backup {
            class: Class::Inventory,
            series: String::new(),
            id: "documents/inventory/2026-11-20.jsonl.gz".into(),
            objects: vec![StoredObject {
                key: "documents/inventory/2026-11-20.jsonl.gz".into(),
                size: 1,
                ..StoredObject::default()
            }],
            state,
        };
        let complete = inventory(State::Complete { at: time(OLD) });
        let unreadable = inventory(State::Unreadable {
            problem: "not JSON".into(),
        });
        let incomplete = inventory(State::Incomplete {
            last_written: time(NOW),
        });
        let keep = Decision::Keep(Reason::WithinAge {
            limit: super::super::policy::Age::Days(90),
        });
        let floor = Decision::Keep(Reason::FutureDated);
        let delete = Decision::Delete(Reason::Expired {
            limit: super::super::policy::Age::Days(90),
        });
        let daily = Backup {
            class: Class::PostgresDaily,
            ..complete.clone()
        };
        let cases = [
            (&complete, &keep, Protection::Read),
            (&complete, &floor, Protection::Read),
            (&complete, &delete, Protection::Nothing),
            (
                &unreadable,
                &Decision::Keep(Reason::Unreadable { problem: "x".into() }),
                Protection::Unknowable,
            ),
            (
                &incomplete,
                &Decision::Keep(Reason::IncompleteRecent),
                Protection::Nothing,
            ),
            (
                &incomplete,
                &Decision::Delete(Reason::IncompleteAbandoned),
                Protection::Nothing,
            ),
            (&daily, &keep, Protection::Nothing),
        ];
        for (backup, decision, expected) in cases {
            assert_eq!(
                protection(backup, decision),
                expected,
                "{:?} {decision:?}",
                backup.state
            );
        }
    }
}
