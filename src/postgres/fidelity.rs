//! What makes a restored database the *same* database, beyond its rows:
//! who owns each object and who may use it, and where every sequence stands.
//! Read under the backup's snapshot into the manifest, read again from the
//! restored target, and compared ([`compare`], a pure function), so a restore
//! or a drill that lost an owner or a GRANT fails naming the object.
//!
//! Sequences are not transactional: the position read here can be behind the
//! one pg_dump reads a moment later, never ahead of it (they only move
//! forward, unless someone resets one). It is read before pg_dump starts, so
//! the check is "restored at or past the recorded position", the property an
//! application needs: its next value collides with no restored row.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::postgres::{classify, EXCLUDED_SCHEMAS};
use crate::runtime::job::JobError;

/// Owners, privileges and sequence positions of one database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fidelity {
    /// SHA-256 over `objects` (as JSON): equal digests, equal privileges.
    pub privileges_sha256: String,
    pub objects: Vec<ObjectPrivileges>,
    pub sequences: Vec<SequencePosition>,
}

/// One object's owner and access list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectPrivileges {
    /// `schema`, `table`, `partitioned table`, `view`, `materialized view`,
    /// `sequence`, `foreign table`, `column`, `function`, `type`,
    /// `large objects` (counted per owner and access list), `default privileges`.
    pub kind: String,
    /// Qualified name (`app.payments`, `app.payments.iban`, `app.f(integer)`).
    pub name: String,
    pub owner: String,
    /// The access list as PostgreSQL prints it (`reader=r/owner`), sorted;
    /// `None` for the default privileges (no GRANT or REVOKE ever made).
    pub acl: Option<Vec<String>>,
}

/// Where a sequence stood.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequencePosition {
    pub name: String,
    /// `None`: never used (`nextval` will return its start).
    pub last_value: Option<i64>,
    pub increment: i64,
}

/// One difference between the backup and the restored database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub kind: String,
    pub name: String,
    /// What differs, for a person: `owner app_owner in the backup, postgres restored`.
    pub problem: String,
}

/// Every object's owner and access list, objects of extensions left out
/// (the extension recreates them, owned by whoever creates it).
const OBJECTS: &str = r#"
WITH excluded(nspname) AS (SELECT unnest($1::text[])),
     schemas AS (
       SELECT n.oid, n.nspname, n.nspowner, n.nspacl FROM pg_namespace n
       WHERE n.nspname NOT IN (SELECT nspname FROM excluded)
         AND n.nspname NOT LIKE 'pg\_%'
         AND NOT EXISTS (SELECT 1 FROM pg_depend d
                         WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')),
     relations AS (
       SELECT c.oid, c.relname, c.relkind, c.relowner, c.relacl, s.nspname FROM pg_class c
       JOIN schemas s ON s.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
         AND NOT EXISTS (SELECT 1 FROM pg_depend d
                         WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'))
SELECT 'schema', nspname, pg_get_userbyid(nspowner), nspacl::text[] FROM schemas
UNION ALL
SELECT CASE relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table' WHEN 'v' THEN 'view'
                    WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' ELSE 'foreign table' END,
       format('%s.%s', nspname, relname), pg_get_userbyid(relowner), relacl::text[]
FROM relations
UNION ALL
SELECT 'column', format('%s.%s.%s', r.nspname, r.relname, a.attname), pg_get_userbyid(r.relowner), a.attacl::text[]
FROM pg_attribute a JOIN relations r ON r.oid = a.attrelid
WHERE a.attacl IS NOT NULL AND NOT a.attisdropped AND a.attnum > 0
UNION ALL
SELECT 'function', format('%s.%s(%s)', s.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
       pg_get_userbyid(p.proowner), p.proacl::text[]
FROM pg_proc p JOIN schemas s ON s.oid = p.pronamespace
WHERE NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
UNION ALL
SELECT 'type', format('%s.%s', s.nspname, t.typname), pg_get_userbyid(t.typowner), t.typacl::text[]
FROM pg_type t JOIN schemas s ON s.oid = t.typnamespace
-- Arrays and multiranges come with their element or range type: pg_dump
-- dumps neither, and ALTER TYPE ... OWNER on a range leaves its multirange's
-- owner as it was (PostgreSQL 15), so the restored one belongs to the
-- restoring user whatever the backup said.
WHERE t.typcategory <> 'A' AND t.typtype <> 'm'
  AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
UNION ALL
-- Large objects by owner and access list, with their number: a database
-- can hold millions, and one entry each would outgrow the manifest.
SELECT 'large objects', format('%s owned by %s', count(*), pg_get_userbyid(l.lomowner)),
       pg_get_userbyid(l.lomowner), l.lomacl::text[]
FROM pg_largeobject_metadata l GROUP BY l.lomowner, l.lomacl
UNION ALL
SELECT 'default privileges',
       format('for %s%s on %s', pg_get_userbyid(d.defaclrole),
              coalesce(' in ' || n.nspname, ''),
              CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions'
                                   WHEN 'T' THEN 'types' ELSE 'schemas' END),
       pg_get_userbyid(d.defaclrole), d.defaclacl::text[]
FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
WHERE n.nspname IS NULL OR n.nspname NOT IN (SELECT nspname FROM excluded)
"#;

/// Every sequence's position (`pg_sequences`: one query, not one per sequence).
const SEQUENCES: &str = r#"
SELECT format('%s.%s', schemaname, sequencename), last_value, increment_by
FROM pg_sequences
WHERE schemaname <> ALL($1) AND schemaname NOT LIKE 'pg\_%'
"#;

/// Reads the facts from `client` (inside the backup's snapshot transaction,
/// or from a restored target).
pub async fn read(client: &Client) -> Result<Fidelity, JobError> {
    let sequences = read_sequences(client).await?;
    read_privileges(client, sequences).await
}

/// Every sequence's position. The backup reads it before pg_dump starts
/// (see the module's note).
pub async fn read_sequences(client: &Client) -> Result<Vec<SequencePosition>, JobError> {
    let excluded: Vec<&str> = EXCLUDED_SCHEMAS.to_vec();
    let rows = client.query(SEQUENCES, &[&excluded]).await.map_err(classify)?;
    let mut sequences: Vec<SequencePosition> = rows
        .iter()
        .map(|row| SequencePosition {
            name: row.get(0),
            last_value: row.get(1),
            increment: row.get(2),
        })
        .collect();
    sequences.sort_by(|left, right| left.name.cmp(&right.name));
    Ok(sequences)
}

/// Every object's owner and privileges, completed with `sequences`.
pub async fn read_privileges(client: &Client, sequences: Vec<SequencePosition>) -> Result<Fidelity, JobError> {
    let excluded: Vec<&str> = EXCLUDED_SCHEMAS.to_vec();
    let rows = client.query(OBJECTS, &[&excluded]).await.map_err(classify)?;
    let mut objects: Vec<ObjectPrivileges> = rows
        .iter()
        .map(|row| ObjectPrivileges {
            kind: row.get(0),
            name: row.get(1),
            owner: row.get(2),
            acl: row.get::<_, Option<Vec<String>>>(3).map(|mut acl| {
                acl.sort();
                acl
            }),
        })
        .collect();
    objects.sort_by(|left, right| (&left.kind, &left.name).cmp(&(&right.kind, &right.name)));
    objects.dedup();
    Ok(Fidelity {
        privileges_sha256: digest(&objects),
        objects,
        sequences,
    })
}

fn digest(objects: &[ObjectPrivileges]) -> String {
    let json = serde_json::to_vec(objects).expect("privileges serialise");
    hex::encode(Sha256::digest(json))
}

/// What to compare: everything, or (after `--no-owner`, where every object
/// belongs to the restoring user on purpose) only the sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    OwnersAndPrivileges,
    SequencesOnly,
}

/// Every difference between the backup's facts and the restored ones,
/// sorted by kind and name. Large objects are compared by owner and access
/// list like the rest; their contents are in the dump's checksum.
pub fn compare(backup: &Fidelity, restored: &Fidelity, scope: Scope) -> Vec<Difference> {
    let mut differences = Vec::new();
    if scope == Scope::OwnersAndPrivileges && backup.privileges_sha256 != restored.privileges_sha256 {
        let key = |object: &ObjectPrivileges| (object.kind.clone(), object.name.clone());
        let before: std::collections::BTreeMap<_, _> =
            backup.objects.iter().map(|object| (key(object), object)).collect();
        let after: std::collections::BTreeMap<_, _> =
            restored.objects.iter().map(|object| (key(object), object)).collect();
        for ((kind, name), object) in &before {
            match after.get(&(kind.clone(), name.clone())) {
                None => differences.push(Difference {
                    kind: kind.clone(),
                    name: name.clone(),
                    problem: "missing from the restored database".into(),
                }),
                Some(found) => {
                    if found.owner != object.owner {
                        differences.push(Difference {
                            kind: kind.clone(),
                            name: name.clone(),
                            problem: format!("owner {} in the backup, {} restored", object.owner, found.owner),
                        });
                    }
                    if found.acl != object.acl {
                        differences.push(Difference {
                            kind: kind.clone(),
                            name: name.clone(),
                            problem: format!(
                                "privileges {} in the backup, {} restored",
                                describe_acl(&object.acl),
                                describe_acl(&found.acl)
                            ),
                        });
                    }
                }
            }
        }
        for (kind, name) in after.keys().filter(|key| !before.contains_key(*key)) {
            differences.push(Difference {
                kind: kind.clone(),
                name: name.clone(),
                problem: "in the restored database, not in the backup".into(),
            });
        }
    }
    for sequence in &backup.sequences {
        let found = restored
            .sequences
            .iter()
            .find(|candidate| candidate.name == sequence.name);
        let problem = match (found, sequence.last_value) {
            (None, _) => Some("missing from the restored database".to_owned()),
            (Some(_), None) => None,
            (Some(found), Some(recorded)) => {
                let behind = match found.last_value {
                    None => true,
                    Some(restored) if sequence.increment > 0 => restored < recorded,
                    Some(restored) => restored > recorded,
                };
                behind.then(|| {
                    format!(
                        "restored at {}, behind the backup's {recorded}: new rows would reuse values",
                        found
                            .last_value
                            .map_or("its start".to_owned(), |value| value.to_string())
                    )
                })
            }
        };
        if let Some(problem) = problem {
            differences.push(Difference {
                kind: "sequence position".into(),
                name: sequence.name.clone(),
                problem,
            });
        }
    }
    differences.sort_by(|left, right| (&left.kind, &left.name).cmp(&(&right.kind, &right.name)));
    differences
}

fn describe_acl(acl: &Option<Vec<String>>) -> String {
    match acl {
        None => "default".to_owned(),
        Some(items) if items.is_empty() => "none".to_owned(),
        Some(items) => items.join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str, name: &str, owner: &str, acl: Option<&[&str]>) -> ObjectPrivileges {
        ObjectPrivileges {
            kind: kind.into(),
            name: name.into(),
            owner: owner.into(),
            acl: acl.map(|items| items.iter().map(|item| item.to_string()).collect()),
        }
    }

    fn facts(objects: Vec<ObjectPrivileges>, sequences: Vec<(&str, Option<i64>, i64)>) -> Fidelity {
        Fidelity {
            privileges_sha256: digest(&objects),
            objects,
            sequences: sequences
                .into_iter()
                .map(|(name, last_value, increment)| SequencePosition {
                    name: name.into(),
                    last_value,
                    increment,
                })
                .collect(),
        }
    }

    #[test]
    fn differences_name_the_object_and_what_changed() {
        let backup = facts(
            vec![
                object(
                    "table",
                    "app.payments",
                    "app_owner",
                    Some(&["app_owner=arwdDxt/app_owner", "app_reader=r/app_owner"]),
                ),
                object("schema", "app", "app_owner", None),
                object("view", "app.totals", "app_owner", None),
            ],
            vec![
                ("app.payments_id_seq", Some(42), 1),
                ("app.down", Some(-5), -1),
                ("app.unused", None, 1),
            ],
        );
        assert!(compare(&backup, &backup, Scope::OwnersAndPrivileges).is_empty());

        let restored = facts(
            vec![
                object(
                    "table",
                    "app.payments",
                    "postgres",
                    Some(&["postgres=arwdDxt/postgres"]),
                ),
                object("schema", "app", "app_owner", None),
                object("function", "app.extra()", "postgres", None),
            ],
            vec![
                ("app.payments_id_seq", Some(41), 1),
                ("app.down", Some(-6), -1),
                ("app.unused", None, 1),
            ],
        );
        let found: Vec<(String, String)> = compare(&backup, &restored, Scope::OwnersAndPrivileges)
            .into_iter()
            .map(|difference| (difference.name, difference.problem))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "app.extra()".to_owned(),
                    "in the restored database, not in the backup".to_owned()
                ),
                (
                    "app.payments_id_seq".to_owned(),
                    "restored at 41, behind the backup's 42: new rows would reuse values".to_owned()
                ),
                (
                    "app.payments".to_owned(),
                    "owner app_owner in the backup, postgres restored".to_owned()
                ),
                (
                    "app.payments".to_owned(),
                    "privileges app_owner=arwdDxt/app_owner app_reader=r/app_owner in the backup, \
                     postgres=arwdDxt/postgres restored"
                        .to_owned()
                ),
                ("app.totals".to_owned(), "missing from the restored database".to_owned()),
            ]
        );
        // Without owners, only positions count; a sequence ahead is fine.
        let ahead = facts(
            vec![],
            vec![
                ("app.payments_id_seq", Some(50), 1),
                ("app.down", Some(-9), -1),
                ("app.unused", Some(3), 1),
            ],
        );
        assert!(compare(&backup, &ahead, Scope::SequencesOnly).is_empty());
        assert_eq!(compare(&backup, &restored, Scope::SequencesOnly).len(), 1);
    }
}
