//! What a database needs from its cluster, which `pg_dump` does not dump:
//! the roles its objects belong to and are granted to (with their
//! attributes, memberships and settings) and its extensions. Recorded with
//! every backup as `<base>.globals.json`; before a restore the target server
//! is checked against it, and `--create-roles` creates what is missing.
//!
//! Read from the catalogue, not with `pg_dumpall --globals-only`: pg_dumpall
//! dumps every role of the cluster as SQL (filtering that text to the roles
//! one database needs is fragile), and needs superuser rights unless told
//! `--no-role-passwords`. The catalogue views read here (`pg_roles`,
//! `pg_shdepend`, `pg_auth_members`, `pg_db_role_setting`, `pg_extension`)
//! are readable by any role, as on Cloud SQL, and give structured data the
//! restore can compare with the target. No password is ever read: the
//! restore creates roles without one and says which need one.
//!
//! Never recorded, so never created by a restore: roles named `pg_*`
//! (predefined) or `cloudsql*` (Cloud SQL's own), and the bootstrap
//! superuser (the role with OID 10, whatever its name).

use anyhow::{anyhow, Context as _};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::postgres::{classify, quote_identifier};
use crate::runtime::job::JobError;

pub const GLOBALS_FORMAT: &str = "keshless-postgres-globals";

/// The globals file of one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Globals {
    pub format: String,
    pub version: u32,
    pub database: String,
    /// The role that owned the database (`datdba`).
    pub database_owner: String,
    /// The source's bootstrap superuser (never recorded as a role).
    pub bootstrap_superuser: String,
    pub roles: Vec<Role>,
    pub extensions: Vec<Extension>,
    /// Row-level security policies and the roles they name: a restore
    /// without owners leaves out the ones naming roles the target lacks.
    #[serde(default)]
    pub policies: Vec<Policy>,
}

/// A row-level security policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub schema: String,
    pub table: String,
    pub name: String,
    /// The roles it applies to (`public` for everyone).
    pub roles: Vec<String>,
}

/// A role the database depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    /// Owns something in the database (the restoring user must be able to
    /// give it ownership).
    pub owns_objects: bool,
    pub superuser: bool,
    pub inherit: bool,
    pub create_role: bool,
    pub create_database: bool,
    pub login: bool,
    pub replication: bool,
    pub bypass_rls: bool,
    /// -1: no limit.
    pub connection_limit: i32,
    /// `VALID UNTIL`, as PostgreSQL prints it.
    pub valid_until: Option<String>,
    /// `ALTER ROLE … SET` for every database, as `name=value`.
    pub settings: Vec<String>,
    /// `ALTER ROLE … IN DATABASE <this one> SET`, as `name=value`.
    pub database_settings: Vec<String>,
    /// Recorded roles this one is a member of, and predefined `pg_*` roles
    /// (`pg_read_all_data`): those exist everywhere and are granted, never created.
    pub member_of: Vec<Membership>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub role: String,
    pub admin_option: bool,
}

/// An installed extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    pub name: String,
    pub version: String,
    pub schema: String,
}

/// The roles the current database depends on: every role an object here is
/// owned by, granted to, or has a policy or default privilege for
/// (`pg_shdepend`), the database's owner, roles with settings in it, and
/// every role that is a member of one of those (directly or not: a login
/// role that reaches its privileges through a group role needs to exist too).
const ROLES: &str = r#"
WITH RECURSIVE this AS (SELECT oid, datdba FROM pg_database WHERE datname = current_database()),
needed(oid, owns) AS (
    SELECT refobjid, deptype = 'o' FROM pg_shdepend, this
    WHERE dbid = this.oid AND refclassid = 'pg_authid'::regclass
  UNION ALL SELECT datdba, true FROM this
  UNION ALL SELECT setrole, false FROM pg_db_role_setting, this WHERE setdatabase = this.oid AND setrole <> 0
),
-- Roles that are never recorded do not pull in their members: a database
-- owned by cloudsqlsuperuser would otherwise bring every user of the instance.
recordable(oid) AS (
    SELECT n.oid FROM needed n JOIN pg_roles r ON r.oid = n.oid
    WHERE r.oid <> 10 AND r.rolname NOT LIKE 'pg\_%' AND r.rolname NOT LIKE 'cloudsql%'
),
closure(oid) AS (
    SELECT oid FROM recordable
  UNION
    SELECT m.member FROM pg_auth_members m JOIN closure c ON m.roleid = c.oid
)
SELECT r.oid, r.rolname, coalesce(bool_or(n.owns), false), r.rolsuper, r.rolinherit, r.rolcreaterole,
       r.rolcreatedb, r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit,
       r.rolvaliduntil::text, coalesce(r.rolconfig, '{}'),
       coalesce((SELECT s.setconfig FROM pg_db_role_setting s, this
                 WHERE s.setdatabase = this.oid AND s.setrole = r.oid), '{}')
FROM pg_roles r LEFT JOIN needed n ON n.oid = r.oid
WHERE r.oid IN (SELECT oid FROM closure)
  AND r.oid <> 10 AND r.rolname NOT LIKE 'pg\_%' AND r.rolname NOT LIKE 'cloudsql%'
GROUP BY r.oid, r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
         r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil, r.rolconfig
ORDER BY r.rolname
"#;

/// Reads the globals of the current database (inside the backup's snapshot
/// transaction: the catalogue is read under it too).
pub async fn read(client: &Client, database: &str) -> Result<Globals, JobError> {
    let rows = client.query(ROLES, &[]).await.map_err(classify)?;
    let oids: Vec<u32> = rows.iter().map(|row| row.get(0)).collect();
    let memberships = client
        .query(
            "SELECT m.member, r.rolname, m.admin_option FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
             WHERE m.member = ANY($1) AND (m.roleid = ANY($1) OR r.rolname LIKE 'pg\\_%') ORDER BY 2",
            &[&oids],
        )
        .await
        .map_err(classify)?;
    let roles = rows
        .iter()
        .map(|row| {
            let oid: u32 = row.get(0);
            Role {
                name: row.get(1),
                owns_objects: row.get(2),
                superuser: row.get(3),
                inherit: row.get(4),
                create_role: row.get(5),
                create_database: row.get(6),
                login: row.get(7),
                replication: row.get(8),
                bypass_rls: row.get(9),
                connection_limit: row.get(10),
                valid_until: row.get(11),
                settings: row.get(12),
                database_settings: row.get(13),
                member_of: memberships
                    .iter()
                    .filter(|membership| membership.get::<_, u32>(0) == oid)
                    .map(|membership| Membership {
                        role: membership.get(1),
                        admin_option: membership.get(2),
                    })
                    .collect(),
            }
        })
        .collect();
    let extensions = client
        .query(
            "SELECT e.extname, e.extversion, n.nspname FROM pg_extension e
             JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY 1",
            &[],
        )
        .await
        .map_err(classify)?
        .iter()
        .map(|row| Extension {
            name: row.get(0),
            version: row.get(1),
            schema: row.get(2),
        })
        .collect();
    let policies = client
        .query(
            "SELECT n.nspname::text, c.relname::text, p.polname::text,
                    ARRAY(SELECT CASE r WHEN 0 THEN 'public' ELSE pg_get_userbyid(r)::text END
                          FROM unnest(p.polroles) r ORDER BY 1)
             FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             ORDER BY 1, 2, 3",
            &[],
        )
        .await
        .map_err(classify)?
        .iter()
        .map(|row| Policy {
            schema: row.get(0),
            table: row.get(1),
            name: row.get(2),
            roles: row.get(3),
        })
        .collect();
    let owners = client
        .query_one(
            "SELECT pg_get_userbyid(datdba), (SELECT rolname FROM pg_roles WHERE oid = 10)
             FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(classify)?;
    Ok(Globals {
        format: GLOBALS_FORMAT.to_owned(),
        version: 1,
        database: database.to_owned(),
        database_owner: owners.get(0),
        bootstrap_superuser: owners.get(1),
        roles,
        extensions,
        policies,
    })
}

/// What the target server lacks for a restore with owners and privileges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TargetCheck {
    /// The user the restore runs as.
    pub restoring_user: String,
    pub restoring_user_is_superuser: bool,
    /// Roles the backup needs that the target server does not have.
    pub missing_roles: Vec<String>,
    /// Extensions the target server cannot install (not available there).
    pub missing_extensions: Vec<String>,
    /// Existing roles that own objects, which the restoring user (not a
    /// superuser) is not a member of, so it cannot give them ownership.
    pub cannot_own: Vec<String>,
    /// Extensions available only in another version (pg_restore installs
    /// the target's default): a note, not a refusal.
    pub other_extension_versions: Vec<String>,
}

impl TargetCheck {
    /// Whether anything stops a restore with owners (roles can be created).
    pub fn is_ready(&self) -> bool {
        self.missing_roles.is_empty() && self.missing_extensions.is_empty() && self.cannot_own.is_empty()
    }
}

/// Compares what the backup needs with the target server, on a connection
/// to it (any database of that server); changes nothing.
pub async fn check_target(client: &Client, globals: &Globals) -> anyhow::Result<TargetCheck> {
    let me = client
        .query_one(
            "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .context("reading the restoring user's attributes on the target")?;
    let restoring_user: String = me.get(0);
    let restoring_user_is_superuser: bool = me.get(1);
    let existing: Vec<String> = client
        .query("SELECT rolname::text FROM pg_roles", &[])
        .await
        .context("listing the target's roles")?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let missing_roles: Vec<String> = globals
        .roles
        .iter()
        .filter(|role| !existing.contains(&role.name))
        .map(|role| role.name.clone())
        .collect();
    let mut cannot_own = Vec::new();
    if !restoring_user_is_superuser {
        for role in globals
            .roles
            .iter()
            .filter(|role| role.owns_objects && existing.contains(&role.name))
        {
            // PostgreSQL 16 and later give ownership only to a role one may
            // SET ROLE to (an ADMIN-only membership is not enough).
            let member: bool = client
                .query_one(
                    "SELECT pg_has_role(current_user, $1::text,
                            CASE WHEN current_setting('server_version_num')::int >= 160000 THEN 'SET' ELSE 'MEMBER' END)",
                    &[&role.name],
                )
                .await
                .context("checking role memberships on the target")?
                .get(0);
            if !member {
                cannot_own.push(role.name.clone());
            }
        }
    }
    let available = client
        .query("SELECT name::text, version FROM pg_available_extension_versions", &[])
        .await
        .context("listing the target's available extensions")?;
    let mut missing_extensions = Vec::new();
    let mut other_extension_versions = Vec::new();
    for extension in &globals.extensions {
        let versions: Vec<String> = available
            .iter()
            .filter(|row| row.get::<_, String>(0) == extension.name)
            .map(|row| row.get(1))
            .collect();
        if versions.is_empty() {
            missing_extensions.push(format!("{} {}", extension.name, extension.version));
        } else if !versions.contains(&extension.version) {
            other_extension_versions.push(format!(
                "{} {} (the target has {})",
                extension.name,
                extension.version,
                versions.join(", ")
            ));
        }
    }
    Ok(TargetCheck {
        restoring_user,
        restoring_user_is_superuser,
        missing_roles,
        missing_extensions,
        cannot_own,
        other_extension_versions,
    })
}

impl Globals {
    /// Policies that name a role the target lacks.
    pub fn policies_naming(&self, missing_roles: &[String]) -> Vec<&Policy> {
        self.policies
            .iter()
            .filter(|policy| policy.roles.iter().any(|role| missing_roles.contains(role)))
            .collect()
    }
}

/// A role `--create-roles` created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedRole {
    pub name: String,
    pub login: bool,
    /// Attributes the backup's role had that the restoring user may not
    /// grant (SUPERUSER, REPLICATION, BYPASSRLS without superuser rights).
    pub attributes_left_out: Vec<String>,
    /// Settings and memberships the target refused, with why.
    pub settings_left_out: Vec<String>,
}

/// Runs `statement` inside a savepoint of `transaction`: a refusal (a
/// setting only a superuser may give) is rolled back alone and returned.
async fn in_savepoint(transaction: &tokio_postgres::Transaction<'_>, statement: &str) -> Result<(), String> {
    transaction
        .batch_execute("SAVEPOINT keshless_role_step")
        .await
        .map_err(|error| error.to_string())?;
    match transaction.batch_execute(statement).await {
        Ok(()) => transaction
            .batch_execute("RELEASE SAVEPOINT keshless_role_step")
            .await
            .map_err(|error| error.to_string()),
        Err(error) => {
            let _ = transaction
                .batch_execute("ROLLBACK TO SAVEPOINT keshless_role_step")
                .await;
            Err(error
                .as_db_error()
                .map_or_else(|| error.to_string(), |db| db.message().to_owned()))
        }
    }
}

/// Applies the `ALTER ROLE … IN DATABASE` settings of the roles in `names`
/// to `database` (on a connection to it); returns the ones the server
/// refused, as notes.
pub async fn apply_database_settings(
    client: &Client,
    globals: &Globals,
    names: &[String],
    database: &str,
) -> anyhow::Result<Vec<String>> {
    let mut left_out = Vec::new();
    for role in globals.roles.iter().filter(|role| names.contains(&role.name)) {
        for setting in &role.database_settings {
            if let Err(error) = client
                .batch_execute(&alter_role_set(&role.name, Some(database), setting)?)
                .await
            {
                left_out.push(format!(
                    "setting {setting} of role {} in {database} left out: {error}",
                    role.name
                ));
            }
        }
    }
    Ok(left_out)
}

/// Creates the roles in `names` from the backup's globals, without
/// passwords, in one transaction: their attributes, settings, and
/// memberships between recorded roles where either side is new (settings
/// for the database come with [`apply_database_settings`], once it exists).
/// A setting or membership the restoring user may not give is left out and
/// said, rather than failing the whole restore. A restoring user without superuser rights is made a
/// member of each new role that owns objects, so it can give them ownership.
/// `comment` (the full drill's `keshless-drill:<run>`) is put on each new
/// role in the same transaction, so a role exists only with it.
pub async fn create_roles(
    client: &mut Client,
    globals: &Globals,
    names: &[String],
    check: &TargetCheck,
    comment: Option<&str>,
) -> anyhow::Result<Vec<CreatedRole>> {
    let transaction = client.transaction().await.context("starting the role transaction")?;
    let mut created = Vec::new();
    for role in globals.roles.iter().filter(|role| names.contains(&role.name)) {
        let (statement, attributes_left_out) = create_role_statement(role, check.restoring_user_is_superuser);
        transaction
            .batch_execute(&statement)
            .await
            .with_context(|| format!("creating role {}", role.name))?;
        if let Some(comment) = comment {
            transaction
                .batch_execute(&format!(
                    "COMMENT ON ROLE {} IS {}",
                    quote_identifier(&role.name),
                    quote_literal(comment)
                ))
                .await
                .with_context(|| format!("marking role {} as {comment}", role.name))?;
        }
        let mut left_out_settings = Vec::new();
        for setting in &role.settings {
            if let Err(error) = in_savepoint(&transaction, &alter_role_set(&role.name, None, setting)?).await {
                left_out_settings.push(format!("{setting} ({error})"));
            }
        }
        if role.owns_objects && !check.restoring_user_is_superuser {
            transaction
                .batch_execute(&format!(
                    "GRANT {} TO {}",
                    quote_identifier(&role.name),
                    quote_identifier(&check.restoring_user)
                ))
                .await
                .with_context(|| {
                    format!(
                        "making {} a member of {} to give it ownership",
                        check.restoring_user, role.name
                    )
                })?;
        }
        created.push(CreatedRole {
            name: role.name.clone(),
            login: role.login,
            attributes_left_out,
            settings_left_out: left_out_settings,
        });
    }
    for role in &globals.roles {
        for membership in &role.member_of {
            if !(names.contains(&role.name) || names.contains(&membership.role)) {
                continue;
            }
            let statement = format!(
                "GRANT {} TO {}{}",
                quote_identifier(&membership.role),
                quote_identifier(&role.name),
                if membership.admin_option {
                    " WITH ADMIN OPTION"
                } else {
                    ""
                }
            );
            if let Err(error) = in_savepoint(&transaction, &statement).await {
                if let Some(created) = created.iter_mut().find(|created| created.name == role.name) {
                    created
                        .settings_left_out
                        .push(format!("membership in {} ({error})", membership.role));
                }
            }
        }
    }
    transaction.commit().await.context("committing the new roles")?;
    Ok(created)
}

/// `CREATE ROLE` with the backup's attributes; the ones the restoring user
/// cannot grant are left out and returned.
fn create_role_statement(role: &Role, superuser: bool) -> (String, Vec<String>) {
    let flag = |on: bool, name: &str| if on { name.to_owned() } else { format!("NO{name}") };
    let mut attributes = vec![
        flag(role.login, "LOGIN"),
        flag(role.inherit, "INHERIT"),
        flag(role.create_database, "CREATEDB"),
        flag(role.create_role, "CREATEROLE"),
    ];
    let mut left_out = Vec::new();
    for (on, name) in [
        (role.superuser, "SUPERUSER"),
        (role.replication, "REPLICATION"),
        (role.bypass_rls, "BYPASSRLS"),
    ] {
        if on && !superuser {
            left_out.push(name.to_owned());
        } else if on {
            attributes.push(name.to_owned());
        }
    }
    if role.connection_limit >= 0 {
        attributes.push(format!("CONNECTION LIMIT {}", role.connection_limit));
    }
    if let Some(until) = &role.valid_until {
        attributes.push(format!("VALID UNTIL {}", quote_literal(until)));
    }
    (
        format!(
            "CREATE ROLE {} WITH {}",
            quote_identifier(&role.name),
            attributes.join(" ")
        ),
        left_out,
    )
}

/// Settings whose value is a list, given to `SET` as separate items (what
/// pg_dumpall does for them); any other value is one literal.
const LIST_SETTINGS: [&str; 4] = [
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
];

/// `ALTER ROLE … [IN DATABASE …] SET name TO value` from `name=value`.
fn alter_role_set(role: &str, database: Option<&str>, setting: &str) -> anyhow::Result<String> {
    let (name, value) = setting
        .split_once('=')
        .ok_or_else(|| anyhow!("the setting {setting:?} of role {role} has no '='"))?;
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
        return Err(anyhow!("the setting name {name:?} of role {role} is not a plain name"));
    }
    let value = if LIST_SETTINGS.contains(&name) {
        value
            .split(',')
            .map(|item| quote_literal(item.trim().trim_matches('"')))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        quote_literal(value)
    };
    let scope = database
        .map(|database| format!(" IN DATABASE {}", quote_identifier(database)))
        .unwrap_or_default();
    Ok(format!(
        "ALTER ROLE {}{scope} SET {name} TO {value}",
        quote_identifier(role)
    ))
}

/// `'text'` with embedded quotes doubled (standard_conforming_strings is on
/// by default since PostgreSQL 9.1).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str) -> Role {
        Role {
            name: name.into(),
            owns_objects: false,
            superuser: false,
            inherit: true,
            create_role: false,
            create_database: false,
            login: true,
            replication: false,
            bypass_rls: false,
            connection_limit: -1,
            valid_until: None,
            settings: vec![],
            database_settings: vec![],
            member_of: vec![],
        }
    }

    #[test]
    fn roles_are_created_with_what_the_restoring_user_may_grant() {
        let mut app = role("app");
        app.bypass_rls = true;
        app.connection_limit = 20;
        app.valid_until = Some("2030-01-01 00:00:00+00".into());
        let (statement, left_out) = create_role_statement(&app, false);
        assert_eq!(
            statement,
            "CREATE ROLE \"app\" WITH LOGIN INHERIT NOCREATEDB NOCREATEROLE CONNECTION LIMIT 20 \
             VALID UNTIL '2030-01-01 00:00:00+00'"
        );
        assert_eq!(left_out, ["BYPASSRLS"]);
        let (statement, left_out) = create_role_statement(&app, true);
        assert!(statement.contains(" BYPASSRLS "), "{statement}");
        assert!(left_out.is_empty());
    }

    #[test]
    fn settings_become_alter_role_statements() {
        assert_eq!(
            alter_role_set("app", None, "search_path=app, \"public\"").unwrap(),
            "ALTER ROLE \"app\" SET search_path TO 'app', 'public'"
        );
        assert_eq!(
            alter_role_set("app", Some("pay"), "statement_timeout=30s").unwrap(),
            "ALTER ROLE \"app\" IN DATABASE \"pay\" SET statement_timeout TO '30s'"
        );
        assert_eq!(
            alter_role_set("app", None, "application_name=it's").unwrap(),
            "ALTER ROLE \"app\" SET application_name TO 'it''s'"
        );
        assert!(alter_role_set("app", None, "x; DROP TABLE y=1").is_err());
        assert!(alter_role_set("app", None, "novalue").is_err());
    }
}
