//! Every backup in the store as one [`Entry`], and the ids operators type.
//!
//! ```text
//! daily/2026-11-26/keshless-20261126T020000Z      postgresql/daily/2026-11-26/keshless-20261126T020000Z.{dump,globals.json,manifest.json}
//! monthly/2026-11/keshless-20261126T020000Z       postgresql/monthly/2026-11/…
//! secrets/weekly/2026-11-22                       secrets/weekly/2026-11-22.json.encrypted
//! secrets/latest                                  secrets/latest.json.encrypted
//! inventory/2026-11-26                            documents/inventory/2026-11-26.{jsonl.gz,summary.json}
//! drills/2026-12-01                               drills/2026-12-01.json
//! ```
//!
//! An id may also be typed as any of its objects' keys, or as any part of it
//! that names one backup alone (`2026-11-22` when one backup has it); a part
//! shared by several is refused with those it matches, an unknown id with the
//! closest ones.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::postgres::layout::Manifest;
use crate::retention::listing;
use crate::retention::policy::StoredObject;
use crate::retention::{Backup, Class, State};
use crate::storage::{BlobStore, BlobStoreExt, Hold, StorageError};

/// The backup classes `backups list` and `backups verify --class` take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Every class.
    All,
    /// PostgreSQL dumps, daily and monthly.
    Postgres,
    /// Encrypted secrets backups, weekly and latest.
    Secrets,
    /// Documents inventories.
    Inventories,
    /// DR drill reports.
    Drills,
}

impl Kind {
    pub fn includes(self, class: Class) -> bool {
        match self {
            Kind::All => true,
            Kind::Postgres => matches!(class, Class::PostgresDaily | Class::PostgresMonthly),
            Kind::Secrets => matches!(class, Class::SecretsWeekly | Class::SecretsLatest),
            Kind::Inventories => class == Class::Inventory,
            Kind::Drills => class == Class::DrillReport,
        }
    }
}

/// Whether a backup is whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Completeness {
    /// Its manifest (summary, envelope, report) was read: restorable.
    Complete,
    /// No manifest yet (in progress) or any more (a deletion was interrupted).
    Incomplete,
    /// A manifest that cannot be read or does not describe this backup.
    Unreadable,
}

/// One backup of any class.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The id `backups show|verify|pin` take.
    pub id: String,
    pub class: Class,
    /// PostgreSQL: the database it is of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    pub state: Completeness,
    /// When it was taken (manifest, envelope header, summary, report), else
    /// when its newest object was written.
    pub time: Option<DateTime<Utc>>,
    /// All its objects together.
    pub size_bytes: u64,
    /// Data first, manifest last.
    pub objects: Vec<StoredObject>,
    /// The pin holding it, if any.
    pub pinned: Option<Hold>,
    /// Why it is incomplete or unreadable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// PostgreSQL: the manifest (tables and row counts, globals, checksums).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
}

impl Entry {
    pub fn is_complete(&self) -> bool {
        self.state == Completeness::Complete
    }

    /// The backup's main object: the dump, the envelope, the entries, the report.
    pub fn main_key(&self) -> &str {
        self.objects
            .first()
            .map(|object| object.key.as_str())
            .unwrap_or(&self.id)
    }

    /// The key of the object ending in `suffix`, if the backup has one.
    pub fn key_ending(&self, suffix: &str) -> Option<&str> {
        self.objects
            .iter()
            .map(|object| object.key.as_str())
            .find(|key| key.ends_with(suffix))
    }

    /// Backups that count as one series: a database's dailies, the weekly secrets, …
    pub fn series(&self) -> (Class, Option<&str>) {
        (self.class, self.database.as_deref())
    }
}

/// Everything the store holds, newest first.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Catalog {
    pub entries: Vec<Entry>,
}

/// Suffixes an operator may type after an id (any object of the backup).
const OBJECT_SUFFIXES: [&str; 11] = [
    ".manifest.json",
    ".globals.json.age",
    ".globals.json",
    ".dump.zst.age",
    ".dump.age",
    ".dump.zst",
    ".dump",
    ".json.encrypted",
    ".jsonl.gz",
    ".summary.json",
    ".json",
];

/// The id of a backup retention knows by `id` (its main object's key, or
/// for PostgreSQL the layout's id).
pub fn id_for(class: Class, retention_id: &str) -> String {
    match class {
        Class::Inventory => format!(
            "inventory/{}",
            normalise(retention_id.trim_start_matches(listing::INVENTORY_PREFIX))
        ),
        _ => normalise(retention_id),
    }
}

/// What an operator typed, as an id: without the store prefixes and the
/// object suffixes.
fn normalise(input: &str) -> String {
    let mut id = input.trim().trim_matches('/');
    for prefix in ["postgresql/", "documents/"] {
        id = id.strip_prefix(prefix).unwrap_or(id);
    }
    for suffix in OBJECT_SUFFIXES {
        if let Some(stripped) = id.strip_suffix(suffix) {
            id = stripped;
            break;
        }
    }
    id.to_owned()
}

/// An id that names no backup, or more than one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    Unknown {
        input: String,
        closest: Vec<String>,
    },
    Ambiguous {
        input: String,
        matches: Vec<String>,
        count: usize,
    },
}

impl fmt::Display for IdError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Unknown { input, closest } if closest.is_empty() => write!(
                formatter,
                "no backup with id {input:?}: the store holds no backups (`keshless-ops backups list` shows what \
                 there is)"
            ),
            IdError::Unknown { input, closest } => write!(
                formatter,
                "no backup with id {input:?}; the closest: {}; `keshless-ops backups list` shows every id",
                closest.join(", ")
            ),
            IdError::Ambiguous { input, matches, count } => {
                let more = if *count > matches.len() {
                    format!(" and {} more", count - matches.len())
                } else {
                    String::new()
                };
                write!(
                    formatter,
                    "{input:?} matches {count} backups: {}{more}; give the whole id",
                    matches.join(", ")
                )
            }
        }
    }
}

/// How many near ids an error names.
const SUGGESTIONS: usize = 5;

impl Catalog {
    /// Lists the store: every PostgreSQL backup, secrets backup, inventory
    /// and drill report (objects retention does not recognise are left out).
    pub async fn load(store: &dyn BlobStore) -> Result<Catalog, StorageError> {
        let listing = listing::list_everything(store).await?;
        let mut entries: Vec<Entry> = listing
            .backups
            .into_iter()
            .filter(|backup| !matches!(backup.class, Class::Unrecognised | Class::DocumentsMirror))
            .map(|backup| {
                let postgres = listing.postgres.iter().find(|listed| listed.id == backup.id);
                entry(backup, postgres)
            })
            .collect();
        entries.sort_by(|left, right| right.time.cmp(&left.time).then_with(|| left.id.cmp(&right.id)));
        Ok(Catalog { entries })
    }

    /// The entries of `kind` (and of `database`, when given).
    pub fn of<'a>(&'a self, kind: Kind, database: Option<&'a str>) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |entry| {
            kind.includes(entry.class) && database.is_none_or(|database| entry.database.as_deref() == Some(database))
        })
    }

    /// The backup `input` names: its id (or an object key of it), else the
    /// one backup whose id contains it.
    pub fn resolve(&self, input: &str) -> Result<&Entry, IdError> {
        let wanted = normalise(input);
        if let Some(found) = self.entries.iter().find(|entry| entry.id == wanted) {
            return Ok(found);
        }
        let matches: Vec<&Entry> = if wanted.is_empty() {
            Vec::new()
        } else {
            self.entries.iter().filter(|entry| entry.id.contains(&wanted)).collect()
        };
        match matches.as_slice() {
            [only] => Ok(only),
            [] => {
                let mut ranked: Vec<(f64, &str)> = self
                    .entries
                    .iter()
                    .map(|entry| (strsim::jaro_winkler(&wanted, &entry.id), entry.id.as_str()))
                    .collect();
                ranked.sort_by(|left, right| right.0.total_cmp(&left.0).then_with(|| left.1.cmp(right.1)));
                Err(IdError::Unknown {
                    input: input.to_owned(),
                    closest: ranked
                        .into_iter()
                        .take(SUGGESTIONS)
                        .map(|(_, id)| id.to_owned())
                        .collect(),
                })
            }
            several => Err(IdError::Ambiguous {
                input: input.to_owned(),
                matches: several
                    .iter()
                    .take(SUGGESTIONS * 2)
                    .map(|entry| entry.id.clone())
                    .collect(),
                count: several.len(),
            }),
        }
    }
}

fn entry(backup: Backup, postgres: Option<&crate::postgres::layout::Listed>) -> Entry {
    let (state, problem, time) = match &backup.state {
        State::Complete { at } => (Completeness::Complete, None, Some(*at)),
        State::Incomplete { last_written } => (
            Completeness::Incomplete,
            Some("no manifest: in progress, or left over (retention removes it after 48 h)".to_owned()),
            Some(*last_written),
        ),
        State::Unreadable { problem } => (Completeness::Unreadable, Some(problem.clone()), None),
        // The latest secrets pointer has no time of its own but its object's.
        State::Untimed | State::Mirrored { .. } => (
            Completeness::Complete,
            None,
            backup.objects.iter().map(|object| object.created).max(),
        ),
    };
    let manifest = postgres.and_then(|listed| listed.manifest.clone());
    let database = match backup.class {
        Class::PostgresDaily | Class::PostgresMonthly => Some(backup.series.clone()),
        _ => None,
    };
    Entry {
        id: id_for(backup.class, &backup.id),
        class: backup.class,
        database,
        state,
        time,
        size_bytes: backup.bytes(),
        pinned: backup.pin().cloned(),
        objects: backup.objects,
        problem,
        manifest,
    }
}

/// What `backups show` prints beyond the entry, per class: the globals of a
/// PostgreSQL backup (roles, extensions), the encryption header of a secrets
/// backup (never its contents), an inventory's summary, a drill's report.
pub async fn details(store: &dyn BlobStore, entry: &Entry) -> anyhow::Result<serde_json::Value> {
    const LIMIT: u64 = 16 * 1024 * 1024;
    Ok(match entry.class {
        Class::PostgresDaily | Class::PostgresMonthly => {
            let Some(stored) = entry.manifest.as_ref().and_then(|manifest| manifest.globals.as_ref()) else {
                return Ok(serde_json::json!({}));
            };
            let bytes = crate::postgres::layout::read_stored_file(store, &entry.id, stored).await?;
            let globals: crate::postgres::globals::Globals = serde_json::from_slice(&bytes)?;
            serde_json::json!({
                "globals": {
                    "database_owner": globals.database_owner,
                    "roles": globals.roles.iter().map(|role| &role.name).collect::<Vec<_>>(),
                    "extensions": globals
                        .extensions
                        .iter()
                        .map(|extension| format!("{} {}", extension.name, extension.version))
                        .collect::<Vec<_>>(),
                    "policies": globals.policies.len(),
                }
            })
        }
        Class::SecretsWeekly | Class::SecretsLatest => {
            let bytes = store.get_bytes(entry.main_key(), LIMIT).await?;
            let mut header: serde_json::Value = serde_json::from_slice(&bytes)?;
            // The header only: the ciphertext is counted, never shown.
            let ciphertext = header
                .as_object_mut()
                .and_then(|fields| fields.remove("ciphertext"))
                .and_then(|value| value.as_str().map(str::len))
                .unwrap_or(0);
            serde_json::json!({"encryption": header, "ciphertext_base64_chars": ciphertext})
        }
        Class::Inventory => match entry.key_ending(".summary.json") {
            Some(key) => {
                serde_json::json!({"summary": serde_json::from_slice::<serde_json::Value>(&store.get_bytes(key, LIMIT).await?)?})
            }
            None => serde_json::json!({}),
        },
        Class::DrillReport => {
            serde_json::json!({"report": serde_json::from_slice::<serde_json::Value>(&store.get_bytes(entry.main_key(), LIMIT).await?)?})
        }
        Class::Unrecognised | Class::DocumentsMirror => serde_json::json!({}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            id: id.into(),
            class: Class::PostgresDaily,
            database: None,
            state: Completeness::Complete,
            time: None,
            size_bytes: 0,
            objects: Vec::new(),
            pinned: None,
            problem: None,
            manifest: None,
        }
    }

    fn catalog() -> Catalog {
        Catalog {
            entries: [
                "daily/2026-11-26/keshless-20261126T020000Z",
                "daily/2026-11-26/ledger-20261126T020000Z",
                "daily/2026-11-25/keshless-20261125T020000Z",
                "monthly/2026-11/keshless-20261101T020000Z",
                "secrets/weekly/2026-11-22",
                "secrets/latest",
                "inventory/2026-11-26",
                "drills/2026-11-01",
            ]
            .into_iter()
            .map(entry)
            .collect(),
        }
    }

    #[test]
    fn ids_are_the_main_objects_without_store_prefixes_and_suffixes() {
        assert_eq!(
            id_for(Class::SecretsWeekly, "secrets/weekly/2026-11-22.json.encrypted"),
            "secrets/weekly/2026-11-22"
        );
        assert_eq!(
            id_for(Class::SecretsLatest, "secrets/latest.json.encrypted"),
            "secrets/latest"
        );
        assert_eq!(
            id_for(Class::Inventory, "documents/inventory/2026-11-26.jsonl.gz"),
            "inventory/2026-11-26"
        );
        assert_eq!(
            id_for(Class::DrillReport, "drills/2026-12-01.json"),
            "drills/2026-12-01"
        );
        assert_eq!(
            id_for(Class::PostgresDaily, "daily/2026-11-26/keshless-20261126T020000Z"),
            "daily/2026-11-26/keshless-20261126T020000Z"
        );
    }

    #[test]
    fn an_id_resolves_exactly_by_any_object_key_or_by_a_unique_part() {
        let catalog = catalog();
        for (input, expected) in [
            ("secrets/latest", "secrets/latest"),
            ("secrets/latest.json.encrypted", "secrets/latest"),
            (
                "postgresql/daily/2026-11-26/ledger-20261126T020000Z.manifest.json",
                "daily/2026-11-26/ledger-20261126T020000Z",
            ),
            ("documents/inventory/2026-11-26.summary.json", "inventory/2026-11-26"),
            ("2026-11-22", "secrets/weekly/2026-11-22"),
            ("ledger", "daily/2026-11-26/ledger-20261126T020000Z"),
            ("drills/2026-11-01.json", "drills/2026-11-01"),
        ] {
            assert_eq!(
                catalog.resolve(input).map(|entry| entry.id.as_str()),
                Ok(expected),
                "{input}"
            );
        }
    }

    #[test]
    fn an_ambiguous_or_unknown_id_names_the_candidates() {
        let catalog = catalog();
        let ambiguous = catalog.resolve("2026-11-26").unwrap_err();
        assert!(
            matches!(&ambiguous, IdError::Ambiguous { count: 3, .. }),
            "{ambiguous:?}"
        );
        let text = ambiguous.to_string();
        assert!(
            text.contains("matches 3 backups")
                && text.contains("inventory/2026-11-26")
                && text.contains("give the whole id"),
            "{text}"
        );
        let unknown = catalog
            .resolve("daily/2026-11-27/keshless-20261127T020000Z")
            .unwrap_err();
        let IdError::Unknown { closest, .. } = &unknown else {
            panic!("{unknown:?}")
        };
        assert_eq!(closest.len(), SUGGESTIONS);
        assert!(closest[0].starts_with("daily/2026-11-2"), "{closest:?}");
        assert!(unknown.to_string().contains("the closest: daily/"), "{unknown}");
        let empty = Catalog::default().resolve("x").unwrap_err();
        assert!(empty.to_string().contains("holds no backups"), "{empty}");
    }
}
