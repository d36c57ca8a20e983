//! Restoring a PostgreSQL backup: decrypt and decompress it while streaming
//! it into `pg_restore` (or, for a parallel `pg_restore --jobs`, through a
//! verified temporary file), then prove the result: SHA-256 of the stored
//! dump and of the archive pg_restore read against the manifest, and exact
//! row counts per table against the counts taken under the backup's snapshot.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;

use crate::config::DatabaseUrl;
use crate::postgres::archive::{self, Identities};
use crate::postgres::fidelity::{self, Difference};
use crate::postgres::globals::{self, CreatedRole, Globals, TargetCheck};
use crate::postgres::layout::{self, Class, Manifest};
use crate::postgres::progress::Progress;
use crate::postgres::{self as pg, process, TableCount};
use crate::storage::{BlobStore, ByteStream};

/// Which backup to restore.
#[derive(Debug, Clone)]
pub enum Selection {
    Latest,
    /// The newest complete daily backup of that day.
    Date(chrono::NaiveDate),
    Id(String),
}

/// What a restore found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub id: String,
    pub database: String,
    pub bytes: u64,
    pub sha256_matches: bool,
    /// Tables whose restored row count differs from the manifest (or that are missing).
    pub mismatches: Vec<Mismatch>,
    pub tables: usize,
    /// How owners and privileges were restored.
    pub ownership: Ownership,
    /// Roles `--create-roles` created.
    pub created_roles: Vec<CreatedRole>,
    /// Whether owners, privileges and sequence positions were compared with
    /// the manifest (backups made before version 2 record none).
    pub fidelity_checked: bool,
    /// Objects whose owner or privileges, or sequences whose position,
    /// differ from the backup.
    pub fidelity_differences: Vec<Difference>,
    /// Things worth knowing that are not failures (extension versions).
    pub notes: Vec<String>,
}

impl RestoreReport {
    /// Whether the restored database is the backup's: every count, owner,
    /// privilege and sequence position as recorded.
    pub fn is_faithful(&self) -> bool {
        self.mismatches.is_empty() && self.fidelity_differences.is_empty()
    }
}

/// How a restore treats owners and privileges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ownership {
    /// Owners and privileges as in the backup; every role must exist on the
    /// target (the default).
    #[default]
    KeepOwners,
    /// As `KeepOwners`, creating missing roles from the backup's globals first.
    CreateRoles,
    /// Everything owned by the restoring user, no GRANTs (`--no-owner`): for
    /// a different environment on purpose, or a backup without globals.
    NoOwner,
}

impl Ownership {
    pub fn describe(self) -> &'static str {
        match self {
            Ownership::KeepOwners => "owners and privileges as in the backup",
            Ownership::CreateRoles => "owners and privileges as in the backup, missing roles created",
            Ownership::NoOwner => "--no-owner: everything owned by the restoring user, no privileges restored",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Mismatch {
    pub table: String,
    /// `None`: the table is not in the backup.
    pub expected: Option<i64>,
    /// `None`: the table is missing from the restored database.
    pub restored: Option<i64>,
}

/// Finds the manifest of the backup a selection names, in a store that
/// holds backups of one database (see [`select_for`]).
pub async fn select(store: &dyn BlobStore, selection: &Selection) -> anyhow::Result<(String, Manifest)> {
    select_for(store, selection, None).await
}

/// Finds the manifest of the backup a selection names; `--latest` and
/// `--date` look only at `database`'s backups when given, and refuse to
/// choose between several databases when not.
pub async fn select_for(
    store: &dyn BlobStore,
    selection: &Selection,
    database: Option<&str>,
) -> anyhow::Result<(String, Manifest)> {
    let complete = |listed: &layout::Listed| {
        listed.is_complete()
            && database.is_none_or(|database| listed.manifest.as_ref().is_some_and(|found| found.database == database))
    };
    match selection {
        Selection::Id(id) => {
            let base = layout::base_of(id);
            let manifest = layout::read_manifest(store, &layout::manifest_key(&base))
                .await
                .map_err(|problem| anyhow!("{problem} (is {id:?} a complete backup? see `backups list postgres`)"))?;
            Ok((layout::id_of(&base).to_owned(), manifest))
        }
        Selection::Latest | Selection::Date(_) => {
            let listed = layout::list(store, Some(Class::Daily)).await?;
            if database.is_none() {
                let mut databases: Vec<&str> = listed
                    .iter()
                    .filter_map(|listed| listed.manifest.as_ref())
                    .map(|manifest| manifest.database.as_str())
                    .collect();
                databases.sort_unstable();
                databases.dedup();
                if databases.len() > 1 {
                    bail!(
                        "the store holds backups of several databases ({}): say which with --database",
                        databases.join(", ")
                    );
                }
            }
            let of = database
                .map(|database| format!(" of database {database}"))
                .unwrap_or_default();
            let found = listed.into_iter().filter(complete).find(|listed| match selection {
                Selection::Date(date) => listed.id.starts_with(&format!("daily/{}/", date.format("%Y-%m-%d"))),
                _ => true,
            });
            match found {
                Some(listed) => Ok((listed.id, listed.manifest.expect("complete backups have a manifest"))),
                None => match selection {
                    Selection::Date(date) => {
                        bail!("no complete daily backup{of} for {date} (see `backups list postgres`)")
                    }
                    _ => bail!("no complete daily backup{of} in the store (see `backups list postgres`)"),
                },
            }
        }
    }
}

/// The most parallel `pg_restore` jobs accepted (`--jobs`).
pub const MAX_JOBS: u32 = 64;

/// Connections counting the restored rows at once.
const COUNT_CONNECTIONS: usize = 4;

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Create the target database first (and drop it again if a parallel
    /// restore fails, so no half-restored database is left behind).
    pub create_database: bool,
    /// Allow a non-empty target, dropping the backup's objects first.
    pub clean: bool,
    /// `pg_restore --jobs`: 1 streams into one transaction; more download the
    /// dump to a temporary file first (pg_restore needs to seek), verify it,
    /// and restore without a single transaction.
    pub jobs: u32,
    /// Where that temporary file goes; default `TMPDIR` (or `/tmp`).
    pub temp_dir: Option<PathBuf>,
    /// The `pg_restore` to run.
    pub pg_restore: String,
    pub progress: Progress,
    pub ownership: Ownership,
    /// The age identities an encrypted backup is decrypted with
    /// (`BACKUP_AGE_IDENTITY_FILE` / `_SECRET`).
    pub identities: Option<Arc<Identities>>,
    /// Given to each role `--create-roles` creates (`COMMENT ON ROLE`, in the
    /// transaction that creates it): the full drill marks its roles so its
    /// teardown drops only roles it created.
    pub role_comment: Option<String>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            create_database: false,
            clean: false,
            jobs: 1,
            temp_dir: None,
            pg_restore: process::pg_restore_program(),
            progress: Progress::hidden(),
            ownership: Ownership::KeepOwners,
            identities: None,
            role_comment: None,
        }
    }
}

/// `--jobs` must be 1..=[`MAX_JOBS`].
pub fn validate_jobs(jobs: u32) -> Result<u32, String> {
    if (1..=MAX_JOBS).contains(&jobs) {
        Ok(jobs)
    } else {
        Err(format!("--jobs must be between 1 and {MAX_JOBS} (got {jobs})"))
    }
}

/// Whether `available` bytes of free space hold a dump of `needed` bytes.
pub fn free_space_problem(directory: &Path, available: u64, needed: u64) -> Option<String> {
    (available < needed).then(|| {
        format!(
            "not enough free space in {} for the dump: it needs {needed} bytes, {available} are free; \
             free some space, pass --temp-dir DIR (or set TMPDIR), or restore with --jobs 1 (streamed, no file)",
            directory.display()
        )
    })
}

/// Restores `manifest`'s dump into `target` (streamed, one transaction) and verifies it.
pub async fn restore(
    store: &dyn BlobStore,
    id: &str,
    manifest: &Manifest,
    target: &DatabaseUrl,
    create_database: bool,
    clean: bool,
) -> anyhow::Result<RestoreReport> {
    let options = RestoreOptions {
        create_database,
        clean,
        ..RestoreOptions::default()
    };
    restore_with(store, id, manifest, target, &options).await
}

/// Restores `manifest`'s dump into `target` as `options` say and verifies it:
/// the dump's size and SHA-256 against the manifest, then every table's row
/// count against the counts taken under the backup's snapshot.
pub async fn restore_with(
    store: &dyn BlobStore,
    id: &str,
    manifest: &Manifest,
    target: &DatabaseUrl,
    options: &RestoreOptions,
) -> anyhow::Result<RestoreReport> {
    let jobs = validate_jobs(options.jobs).map_err(|problem| anyhow!(problem))?;
    let target_config = target.postgres_config();
    let database = target
        .database_name()
        .ok_or_else(|| anyhow!("--target-url names no database"))?
        .to_owned();
    let dump = layout::dump_key_for(&layout::base_of(id), &manifest.encoding);
    let clock = std::time::Instant::now();
    // An encrypted backup without a key that opens it is refused first.
    archive::require_identities(id, &manifest.encoding, options.identities.as_deref())
        .map_err(|problem| anyhow!("{problem}; nothing was restored"))?;
    // Roles and extensions are checked before anything is downloaded or
    // changed: a target that lacks them is refused untouched.
    let mut roles = RolePlan::prepare(store, id, manifest, target_config, &database, options).await?;
    let client = if jobs == 1 {
        restore_streamed(
            store,
            id,
            &dump,
            manifest,
            target_config,
            &database,
            options,
            &mut roles,
        )
        .await?
    } else {
        restore_from_file(
            store,
            id,
            &dump,
            manifest,
            target_config,
            &database,
            jobs,
            options,
            &mut roles,
        )
        .await?
    };

    tracing::debug!(
        elapsed_ms = clock.elapsed().as_millis() as u64,
        "restore: pg_restore finished"
    );
    options.progress.phase("counting rows");
    let (mismatches, fidelity_differences) =
        compare_with_manifest(target_config, &client, manifest, options.ownership).await?;
    tracing::debug!(elapsed_ms = clock.elapsed().as_millis() as u64, "restore: rows counted");
    options.progress.finish();
    Ok(RestoreReport {
        id: id.to_owned(),
        database: manifest.database.clone(),
        bytes: manifest.size_bytes,
        sha256_matches: true,
        mismatches,
        tables: manifest.tables.len(),
        ownership: options.ownership,
        created_roles: roles.created,
        fidelity_checked: manifest.fidelity.is_some(),
        fidelity_differences,
        notes: roles.notes,
    })
}

/// Compares a database with a backup's manifest: every table's row count,
/// and (when the manifest records them) every owner, privilege and sequence
/// position — owners and privileges only when restored with them. Used after
/// a restore, and by `recover` to recognise a database already recovered.
pub async fn compare_with_manifest(
    target_config: &tokio_postgres::Config,
    client: &tokio_postgres::Client,
    manifest: &Manifest,
    ownership: Ownership,
) -> anyhow::Result<(Vec<Mismatch>, Vec<Difference>)> {
    let restored = pg::table_counts_concurrently(target_config, client, COUNT_CONNECTIONS)
        .await
        .map_err(anyhow::Error::from)?;
    let fidelity_differences = match &manifest.fidelity {
        Some(recorded) => {
            let found = fidelity::read(client).await.map_err(anyhow::Error::from)?;
            let scope = match ownership {
                Ownership::NoOwner => fidelity::Scope::SequencesOnly,
                _ => fidelity::Scope::OwnersAndPrivileges,
            };
            fidelity::compare(recorded, &found, scope)
        }
        None => Vec::new(),
    };
    Ok((compare(&manifest.tables, &restored), fidelity_differences))
}

/// What a restore would need to do on the target before pg_restore runs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Readiness {
    /// Roles the backup needs that the target server lacks (`--create-roles`
    /// creates them).
    pub roles_to_create: Vec<String>,
    /// Things worth knowing that are not refusals (extension versions).
    pub notes: Vec<String>,
}

/// Checks, changing nothing, that `manifest`'s backup could be restored into
/// `target` as `options` say: the identity opens it, and the backup's roles
/// and extensions can be had on the target server. Errors say what stops it
/// (the same refusals [`restore_with`] would make before touching anything).
pub async fn check_ready(
    store: &dyn BlobStore,
    id: &str,
    manifest: &Manifest,
    target: &DatabaseUrl,
    options: &RestoreOptions,
) -> anyhow::Result<Readiness> {
    let database = target
        .database_name()
        .ok_or_else(|| anyhow!("the target URL names no database"))?
        .to_owned();
    archive::require_identities(id, &manifest.encoding, options.identities.as_deref())
        .map_err(|problem| anyhow!("{problem}; nothing was restored"))?;
    let plan = RolePlan::prepare(store, id, manifest, target.postgres_config(), &database, options).await?;
    Ok(Readiness {
        roles_to_create: plan.check.missing_roles,
        notes: plan.notes,
    })
}

/// What the target needs before pg_restore may run: the backup's globals,
/// checked against the target server, and the roles still to create.
struct RolePlan {
    globals: Option<Globals>,
    check: TargetCheck,
    /// `--no-owner`: policies naming roles the target lacks, left out of
    /// the restore (pg_restore would fail on them).
    left_out_policies: Vec<globals::Policy>,
    /// Filled in by [`RolePlan::apply`].
    created: Vec<CreatedRole>,
    notes: Vec<String>,
    /// [`RestoreOptions::role_comment`].
    role_comment: Option<String>,
}

impl RolePlan {
    /// Reads the backup's globals and checks the target server against
    /// them; refuses (changing nothing) when the restore could not keep
    /// owners and privileges. `--no-owner` needs neither.
    async fn prepare(
        store: &dyn BlobStore,
        id: &str,
        manifest: &Manifest,
        target_config: &tokio_postgres::Config,
        database: &str,
        options: &RestoreOptions,
    ) -> anyhow::Result<RolePlan> {
        let mut plan = RolePlan {
            globals: None,
            check: TargetCheck::default(),
            left_out_policies: Vec::new(),
            created: Vec::new(),
            notes: Vec::new(),
            role_comment: options.role_comment.clone(),
        };
        let connect_target = || async {
            if options.create_database {
                connect_admin(target_config).await
            } else {
                pg::connect(target_config).await.map_err(anyhow::Error::from)
            }
        };
        if options.ownership == Ownership::NoOwner {
            // Without owners nothing needs the backup's roles, except
            // row-level security policies that name them: those are left
            // out (RLS stays on, so only the owner sees the rows) and said.
            let Some(stored) = &manifest.globals else {
                return Ok(plan);
            };
            let globals = read_globals(store, id, manifest, stored, options).await?;
            if globals.policies.is_empty() {
                return Ok(plan);
            }
            let check = globals::check_target(&connect_target().await?, &globals).await?;
            plan.left_out_policies = globals
                .policies_naming(&check.missing_roles)
                .into_iter()
                .cloned()
                .collect();
            if !plan.left_out_policies.is_empty() {
                plan.notes.push(format!(
                    "row-level security policies left out, as they name roles the target lacks ({}): {}; row-level \
                     security stays enabled, so only the owner sees those tables' rows until the policies are \
                     recreated",
                    check.missing_roles.join(", "),
                    plan.left_out_policies
                        .iter()
                        .map(|policy| format!("{} on {}.{}", policy.name, policy.schema, policy.table))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            return Ok(plan);
        }
        let Some(stored) = &manifest.globals else {
            bail!(
                "{id} was made before keshless-ops recorded the roles a database needs (manifest version {}), so \
                 its owners and privileges cannot be restored; restore it with --no-owner (everything owned by the \
                 restoring user, no GRANTs: grant the application's role its privileges by hand afterwards); \
                 nothing was restored",
                manifest.version
            );
        };
        let globals = read_globals(store, id, manifest, stored, options).await?;
        let check = globals::check_target(&connect_target().await?, &globals).await?;
        let mut problems = Vec::new();
        if !check.missing_roles.is_empty() && options.ownership != Ownership::CreateRoles {
            problems.push(format!(
                "roles missing on the target server: {} — pass --create-roles to create them from the backup \
                 (without passwords), or --no-owner to restore everything owned by {} without privileges",
                check.missing_roles.join(", "),
                check.restoring_user
            ));
        }
        if !check.missing_extensions.is_empty() {
            problems.push(format!(
                "extensions not available on the target server: {} — install them there (Cloud SQL: see its \
                 supported extensions), then restore again",
                check.missing_extensions.join(", ")
            ));
        }
        if !check.cannot_own.is_empty() {
            problems.push(format!(
                "{} is not a superuser and not a member of {}, so it cannot give them ownership — run `GRANT {} TO \
                 {}` as a user with CREATEROLE, or pass --no-owner",
                check.restoring_user,
                check.cannot_own.join(", "),
                check.cannot_own.join(", "),
                check.restoring_user
            ));
        }
        if !problems.is_empty() {
            bail!(
                "{id} cannot be restored into {database:?} with its owners and privileges; nothing was changed:\n  - {}",
                problems.join("\n  - ")
            );
        }
        plan.notes.extend(
            check
                .other_extension_versions
                .iter()
                .map(|extension| format!("extension {extension}: pg_restore installs the target's default version")),
        );
        plan.check = check;
        plan.globals = Some(globals);
        Ok(plan)
    }

    /// Creates the missing roles (`--create-roles`), once, just before the
    /// target database is created or written.
    async fn apply(&mut self, target_config: &tokio_postgres::Config) -> anyhow::Result<()> {
        let Some(globals) = &self.globals else { return Ok(()) };
        if self.check.missing_roles.is_empty() || !self.created.is_empty() {
            return Ok(());
        }
        let mut admin = connect_admin(target_config).await?;
        self.created = globals::create_roles(
            &mut admin,
            globals,
            &self.check.missing_roles,
            &self.check,
            self.role_comment.as_deref(),
        )
        .await
        .context("creating the backup's roles (nothing was restored)")?;
        for role in &self.created {
            tracing::info!(role = %role.name, login = role.login, "created role from the backup's globals");
        }
        Ok(())
    }

    /// The new roles' `ALTER ROLE … IN DATABASE` settings, once the target
    /// database exists.
    async fn apply_database_settings(&mut self, client: &tokio_postgres::Client, database: &str) -> anyhow::Result<()> {
        let Some(globals) = &self.globals else { return Ok(()) };
        let names: Vec<String> = self.created.iter().map(|role| role.name.clone()).collect();
        let left_out = globals::apply_database_settings(client, globals, &names, database).await?;
        self.notes.extend(left_out);
        Ok(())
    }

    /// The `--use-list` file leaving out [`RolePlan::left_out_policies`],
    /// from the dump's own table of contents; `None` when nothing is left out.
    async fn contents(
        &self,
        store: &dyn BlobStore,
        dump: &str,
        manifest: &Manifest,
        options: &RestoreOptions,
    ) -> anyhow::Result<Option<tempfile::NamedTempFile>> {
        if self.left_out_policies.is_empty() {
            return Ok(None);
        }
        let archive = open_archive(store, dump, manifest, options).await?;
        let listed = process::table_of_contents(&options.pg_restore, archive).await?;
        let policies: Vec<(&str, &str, &str)> = self
            .left_out_policies
            .iter()
            .map(|policy| (policy.schema.as_str(), policy.table.as_str(), policy.name.as_str()))
            .collect();
        let mut file = tempfile::Builder::new()
            .prefix("keshless-restore-")
            .suffix(".list")
            .tempfile()
            .context("creating the pg_restore list file")?;
        std::io::Write::write_all(&mut file, process::without_policies(&listed, &policies).as_bytes())
            .context("writing the pg_restore list file")?;
        Ok(Some(file))
    }

    /// The owner to give a database this restore creates: the backup's, when
    /// it is a role the backup recorded (never the bootstrap superuser).
    fn database_owner(&self) -> Option<&str> {
        let globals = self.globals.as_ref()?;
        globals
            .roles
            .iter()
            .any(|role| role.name == globals.database_owner)
            .then_some(globals.database_owner.as_str())
    }
}

/// `--jobs 1`: proves the dump at rest, then streams it into `pg_restore
/// --single-transaction` while hashing it. Returns a connection to the target.
#[allow(clippy::too_many_arguments)]
async fn restore_streamed(
    store: &dyn BlobStore,
    id: &str,
    dump: &str,
    manifest: &Manifest,
    target_config: &tokio_postgres::Config,
    database: &str,
    options: &RestoreOptions,
    roles: &mut RolePlan,
) -> anyhow::Result<tokio_postgres::Client> {
    options.progress.phase("checking the dump at rest");
    check_before_restoring(store, id, dump, manifest).await?;
    tracing::debug!("restore: dump checked at rest");
    // A refused target gets no new roles: check it before creating any.
    let client = if options.create_database {
        roles.apply(target_config).await?;
        create_database(target_config, database, roles.database_owner()).await?;
        pg::connect(target_config).await.map_err(anyhow::Error::from)?
    } else {
        let client = pg::connect(target_config).await.map_err(anyhow::Error::from)?;
        refuse_non_empty(&client, database, options.clean).await?;
        roles.apply(target_config).await?;
        client
    };
    roles.apply_database_settings(&client, database).await?;
    tracing::debug!("restore: target ready");

    let contents = roles.contents(store, dump, manifest, options).await?;
    let mut restore = process::spawn_restore(
        &options.pg_restore,
        &pg::libpq_environment(target_config),
        database,
        options.clean,
        options.ownership != Ownership::NoOwner,
        contents.as_ref().map(|file| file.path()),
        &process::RestoreInput::Stdin,
    )?;
    let mut stdin = restore.child.stdin.take().expect("stdin is piped");
    // Decrypted, decompressed and proven on the way; the archive's tail
    // comes only once all of it is proven, so pg_restore cannot commit an
    // archive that fails.
    let expected = manifest.archive_digest();
    let mut plain = open_archive(store, dump, manifest, options).await?;
    options.progress.bytes("restoring", expected.size_bytes);
    let mut written = 0u64;
    let mut write_error = None;
    let mut read_error = None;
    loop {
        let chunk = match plain.try_next().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) => {
                read_error = Some(error);
                break;
            }
        };
        options.progress.advance(chunk.len() as u64);
        if write_error.is_none() {
            match stdin.write_all(&chunk).await {
                Ok(()) => written += chunk.len() as u64,
                // pg_restore stopped reading (its own error explains why);
                // keep reading so a damaged dump is named as such.
                Err(error) => write_error = Some(error),
            }
        }
    }
    if let Some(error) = read_error {
        // pg_restore has not seen the end of the archive: stop it before it
        // could, so its single transaction rolls back.
        let _ = restore.child.start_kill();
        drop(stdin);
        let _ = restore.finish().await;
        let created = if options.create_database {
            drop(client);
            match drop_database(target_config, database).await {
                Ok(()) => format!("; the database {database:?} this restore created was dropped again"),
                Err(drop_error) => format!(
                    "; the database {database:?} this restore created could not be dropped ({drop_error:#}): drop \
                     it by hand"
                ),
            }
        } else {
            String::new()
        };
        bail!(
            "{id}: {error}; pg_restore was stopped before the end of the archive and its single transaction rolled \
             back: nothing of the backup was restored{created}; do not trust this backup"
        );
    }
    drop(stdin);
    options.progress.phase("restoring: waiting for pg_restore to commit");
    let restored = restore.finish().await;
    if let Err(error) = restored {
        // One transaction: nothing of the backup is in the target. A database
        // this restore created is dropped again, so a rerun starts clean.
        let created = if options.create_database {
            drop(client);
            match drop_database(target_config, database).await {
                Ok(()) => format!("; the database {database:?} this restore created was dropped again"),
                Err(drop_error) => format!(
                    "; the database {database:?} this restore created is empty and could not be dropped \
                     ({drop_error:#}): drop it by hand"
                ),
            }
        } else {
            String::new()
        };
        let roles = if roles.created.is_empty() {
            String::new()
        } else {
            format!(
                "; the roles it created stay ({}), so a rerun needs no --create-roles",
                roles
                    .created
                    .iter()
                    .map(|role| role.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(error.context(format!(
            "pg_restore failed and its single transaction rolled back: nothing of the backup was restored{created}{roles}"
        )));
    }
    if let Some(error) = write_error {
        bail!(
            "pg_restore stopped reading its input after {written} of {} bytes of the archive ({error}) and yet \
             reported success: the target database WAS modified by this restore and may lack data: do not use it",
            expected.size_bytes
        );
    }
    Ok(client)
}

/// `--jobs N > 1`: downloads the dump to a temporary file, proves its size
/// and SHA-256 before anything touches the target, then runs `pg_restore
/// --jobs N` on it. The file is removed on every way out (it is owned by a
/// guard). Returns a connection to the target.
#[allow(clippy::too_many_arguments)]
async fn restore_from_file(
    store: &dyn BlobStore,
    id: &str,
    dump: &str,
    manifest: &Manifest,
    target_config: &tokio_postgres::Config,
    database: &str,
    jobs: u32,
    options: &RestoreOptions,
    roles: &mut RolePlan,
) -> anyhow::Result<tokio_postgres::Client> {
    // Refuse a non-empty target before downloading anything, and a dump
    // that is not what its manifest says.
    check_before_restoring(store, id, dump, manifest).await?;
    let mut client = None;
    if !options.create_database {
        let existing = pg::connect(target_config).await.map_err(anyhow::Error::from)?;
        refuse_non_empty(&existing, database, options.clean).await?;
        client = Some(existing);
    }

    let directory = options.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let free = rustix::fs::statvfs(&directory)
        .with_context(|| format!("cannot read the free space of {} (--temp-dir)", directory.display()))?;
    let available = free.f_bavail.saturating_mul(free.f_frsize);
    let expected = manifest.archive_digest();
    if let Some(problem) = free_space_problem(&directory, available, expected.size_bytes) {
        bail!("{problem}; nothing was restored");
    }
    let temporary = tempfile::Builder::new()
        .prefix("keshless-restore-")
        .suffix(".dump")
        .tempfile_in(&directory)
        .with_context(|| format!("cannot create a temporary file in {} (--temp-dir)", directory.display()))?;
    let mut file = tokio::fs::File::from_std(temporary.reopen().context("opening the temporary file")?);
    // The archive is proven (size and SHA-256, every age chunk) by the
    // time its last bytes are written: nothing is restored from a file
    // that failed.
    let mut plain = open_archive(store, dump, manifest, options).await?;
    options.progress.bytes("downloading", expected.size_bytes);
    while let Some(chunk) = plain
        .try_next()
        .await
        .map_err(|error| anyhow!("{id}: {error}; do not trust this backup; nothing was restored"))?
    {
        options.progress.advance(chunk.len() as u64);
        file.write_all(&chunk)
            .await
            .with_context(|| format!("writing the temporary file {}", temporary.path().display()))?;
    }
    file.flush().await.context("writing the temporary file")?;
    drop(file);

    roles.apply(target_config).await?;
    let client = match client {
        Some(client) => client,
        None => {
            create_database(target_config, database, roles.database_owner()).await?;
            pg::connect(target_config).await.map_err(anyhow::Error::from)?
        }
    };
    roles.apply_database_settings(&client, database).await?;
    options.progress.phase(&format!("restoring with {jobs} parallel jobs"));
    let contents = roles.contents(store, dump, manifest, options).await?;
    let restored = process::spawn_restore(
        &options.pg_restore,
        &pg::libpq_environment(target_config),
        database,
        options.clean,
        options.ownership != Ownership::NoOwner,
        contents.as_ref().map(|file| file.path()),
        &process::RestoreInput::File {
            path: temporary.path(),
            jobs,
        },
    )?
    .finish()
    .await;
    drop(temporary);
    if let Err(error) = restored {
        if !options.create_database {
            bail!(
                "pg_restore --jobs {jobs} failed; a parallel restore is not one transaction, so the target \
                 database {database:?} may be partly restored: drop it, or restore again with --clean: {error}"
            );
        }
        drop(client);
        return Err(match drop_database(target_config, database).await {
            Ok(()) => anyhow!(
                "pg_restore --jobs {jobs} failed; the database {database:?} this restore created was dropped again: \
                 {error}"
            ),
            Err(drop_error) => anyhow!(
                "pg_restore --jobs {jobs} failed and the database {database:?} this restore created, now partly \
                 restored, could not be dropped ({drop_error:#}); drop it by hand: {error}"
            ),
        });
    }
    Ok(client)
}

/// A connection to the server's `postgres` database, for CREATE/DROP DATABASE.
async fn connect_admin(target_config: &tokio_postgres::Config) -> anyhow::Result<tokio_postgres::Client> {
    let mut admin = target_config.clone();
    admin.dbname("postgres");
    pg::connect(&admin).await.map_err(anyhow::Error::from)
}

/// Creates the target database, owned by `owner` when given (the backup's
/// database owner, so `pg_database_owner` means the same role again).
async fn create_database(
    target_config: &tokio_postgres::Config,
    database: &str,
    owner: Option<&str>,
) -> anyhow::Result<()> {
    let owner = owner
        .map(|owner| format!(" OWNER {}", pg::quote_identifier(owner)))
        .unwrap_or_default();
    connect_admin(target_config)
        .await?
        .batch_execute(&format!("CREATE DATABASE {}{owner}", pg::quote_identifier(database)))
        .await
        .with_context(|| format!("cannot create database {database:?}{owner}"))
}

async fn drop_database(target_config: &tokio_postgres::Config, database: &str) -> anyhow::Result<()> {
    connect_admin(target_config)
        .await?
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            pg::quote_identifier(database)
        ))
        .await
        .with_context(|| format!("cannot drop database {database:?}"))
}

/// Restoring over existing tables needs `--clean`.
async fn refuse_non_empty(client: &tokio_postgres::Client, database: &str, clean: bool) -> anyhow::Result<()> {
    let existing = pg::table_names(client).await.map_err(anyhow::Error::from)?;
    if !existing.is_empty() && !clean {
        bail!(
            "target database {database:?} is not empty ({} tables, e.g. {}.{}); restore into an empty database \
             or pass --clean to drop and replace the backup's objects",
            existing.len(),
            existing[0].0,
            existing[0].1
        );
    }
    Ok(())
}

/// Proves the dump at rest before the target is touched (pg_restore commits
/// when its input ends, before a streamed checksum could stop it): size, then
/// the store's own checksum when the manifest recorded one, else a full
/// SHA-256 pass.
async fn check_before_restoring(
    store: &dyn BlobStore,
    id: &str,
    dump: &str,
    manifest: &Manifest,
) -> anyhow::Result<()> {
    let stored = store
        .stat(dump)
        .await?
        .ok_or_else(|| anyhow!("{id}: the dump {dump} is missing; nothing was restored"))?;
    if stored.size != manifest.size_bytes {
        bail!(
            "{id}: checksum mismatch: the manifest says {} bytes, the stored dump has {}; nothing was restored",
            manifest.size_bytes,
            stored.size
        );
    }
    match (&manifest.dump_crc32c, &stored.crc32c) {
        (Some(expected), Some(found)) if expected != found => bail!(
            "{id}: checksum mismatch: the manifest says CRC32C {expected}, the stored dump has {found}; \
             nothing was restored"
        ),
        (Some(_), Some(_)) => Ok(()),
        _ => layout::verify(store, id)
            .await
            .map(|_| ())
            .map_err(|error| anyhow!("{error:#}; nothing was restored")),
    }
}

/// Reads a backup's globals file, proven against the manifest and
/// decrypted when the backup is.
async fn read_globals(
    store: &dyn BlobStore,
    id: &str,
    manifest: &Manifest,
    stored: &layout::StoredFile,
    options: &RestoreOptions,
) -> anyhow::Result<Globals> {
    let bytes = layout::read_stored_file(store, id, stored)
        .await
        .map_err(|error| anyhow!("{error:#}; nothing was restored"))?;
    let identities = archive::require_identities(id, &manifest.encoding, options.identities.as_deref())
        .map_err(|problem| anyhow!("{problem}; nothing was restored"))?;
    let plain = match identities {
        Some(identities) => archive::decrypt_small(id, &stored.key, &bytes, identities)
            .map_err(|problem| anyhow!("{problem}; nothing was restored"))?,
        None => zeroize::Zeroizing::new(bytes.to_vec()),
    };
    serde_json::from_slice(&plain).with_context(|| format!("{id}: {} is not a globals file", stored.key))
}

/// The plain archive of a stored dump: decrypted and decompressed as its
/// manifest says, and proven against the manifest's archive digest on the
/// way (its tail held back until the proof is complete).
pub async fn open_archive(
    store: &dyn BlobStore,
    dump: &str,
    manifest: &Manifest,
    options: &RestoreOptions,
) -> anyhow::Result<ByteStream> {
    let stored = store.get(dump, None).await?;
    Ok(archive::decode(
        stored,
        &manifest.encoding,
        options.identities.clone(),
        manifest.archive_digest(),
    ))
}

/// Tables whose restored count differs from the manifest's, and tables the
/// target has that the backup does not (left over from before a `--clean`).
pub fn compare(expected: &[TableCount], restored: &[TableCount]) -> Vec<Mismatch> {
    let same = |left: &TableCount, right: &TableCount| left.schema == right.schema && left.table == right.table;
    let mut mismatches: Vec<Mismatch> = expected
        .iter()
        .filter_map(|table| {
            let found = restored
                .iter()
                .find(|candidate| same(candidate, table))
                .map(|candidate| candidate.rows);
            (found != Some(table.rows)).then(|| Mismatch {
                table: format!("{}.{}", table.schema, table.table),
                expected: Some(table.rows),
                restored: found,
            })
        })
        .collect();
    mismatches.extend(
        restored
            .iter()
            .filter(|table| !expected.iter().any(|candidate| same(candidate, table)))
            .map(|table| Mismatch {
                table: format!("{}.{}", table.schema, table.table),
                expected: None,
                restored: Some(table.rows),
            }),
    );
    mismatches
}
