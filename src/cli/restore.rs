//! `keshless-ops restore`: bring data back from backups.

use std::path::PathBuf;
use std::process::ExitCode;

/// Restore PostgreSQL, secrets or documents from backups.
#[derive(Debug, clap::Subcommand)]
pub enum RestoreCmd {
    /// Stream a PostgreSQL backup into pg_restore (one transaction), then verify
    /// its SHA-256 against the manifest and every table's row count against the
    /// counts taken under the backup's snapshot. Exits 1 on any mismatch.
    /// Shows progress when stderr is a terminal.
    ///
    /// With --jobs N > 1 the dump is first downloaded to a temporary file and its
    /// SHA-256 verified before the target is touched; pg_restore then runs N jobs
    /// but NOT in one transaction, so a failed parallel restore can leave the target
    /// partly restored (a database made by --create-db is dropped again).
    #[command(group = clap::ArgGroup::new("which").required(true).args(["date", "latest", "id"]))]
    Postgres {
        /// Backup date (YYYY-MM-DD, UTC): the newest complete daily backup of that day.
        #[arg(long, conflicts_with_all = ["latest", "id"], value_parser = super::parse_date)]
        date: Option<chrono::NaiveDate>,
        /// The newest complete daily backup.
        #[arg(long, conflicts_with = "id")]
        latest: bool,
        /// A backup id from `backups list postgres` (daily or monthly).
        #[arg(long)]
        id: Option<String>,
        /// Database to restore into: postgres://USER@HOST[:PORT]/DATABASE. Prefer
        /// RESTORE_TARGET_URL (or PGPASSWORD / ~/.pgpass) for a password, so it is
        /// not on the command line.
        #[arg(long, env = "RESTORE_TARGET_URL", hide_env_values = true)]
        target_url: String,
        /// With --latest or --date: the database whose backup to restore (needed
        /// when the store holds backups of several databases).
        #[arg(long, value_name = "DATABASE")]
        database: Option<String>,
        /// Create the target database first.
        #[arg(long)]
        create_db: bool,
        /// Create the roles the backup needs that the target server lacks (from
        /// the backup's globals, without passwords) before restoring; prints
        /// each login role whose password must be set.
        #[arg(long, conflicts_with = "no_owner")]
        create_roles: bool,
        /// Restore everything owned by the restoring user, with no GRANTs (for
        /// another environment on purpose, or a backup made before roles were
        /// recorded). Default: owners and privileges as in the backup.
        #[arg(long)]
        no_owner: bool,
        /// Allow restoring into a non-empty database, dropping the backup's objects first.
        #[arg(long)]
        clean: bool,
        /// Parallel pg_restore jobs (1-64). Above 1: downloads to a temporary file
        /// first (needs free space for the dump) and is not one transaction.
        #[arg(long, default_value_t = 1, value_name = "N", value_parser = parse_jobs)]
        jobs: u32,
        /// Directory for the --jobs temporary file (default: TMPDIR, else /tmp).
        #[arg(long, value_name = "DIR")]
        temp_dir: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Decrypt a secrets backup into a new file (mode 0600). Needs only
    /// BACKUP_STORE and SECRETS_ENCRYPTION_KEY; prints names, never values,
    /// unless --stdout is given. With --to-secret-manager, a Secret Manager
    /// backup is put back into Secret Manager instead: missing secrets are
    /// created with their metadata and every version (numbers kept), existing
    /// ones whose newest enabled value differs get the backed-up versions
    /// added, expired ones are skipped; a second run changes nothing. Needs
    /// roles/secretmanager.admin on the target project (SECRET_MANAGER_EMULATOR_HOST
    /// for a fake; calls paced to SECRET_MANAGER_REQUESTS_PER_MINUTE, default 600).
    Secrets {
        /// Weekly backup date (YYYY-MM-DD); default: latest.
        #[arg(long, conflicts_with = "latest", value_parser = super::parse_date_text)]
        date: Option<String>,
        /// The newest backup, secrets/latest.json.encrypted (the default).
        #[arg(long)]
        latest: bool,
        /// Output file, created with mode 0600; an existing file is refused unless --force.
        #[arg(long, required_unless_present_any = ["stdout", "to_secret_manager"], conflicts_with = "stdout")]
        out: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "env")]
        format: super::restore_secrets::SecretsFormat,
        /// Write the decrypted secrets (values included) to standard output instead.
        #[arg(long)]
        stdout: bool,
        /// Replace an existing --out file (through a 0600 temporary file and a rename).
        #[arg(long)]
        force: bool,
        /// Restore a Secret Manager backup into Secret Manager (prints a table, never values).
        #[arg(long, conflicts_with_all = ["out", "stdout", "force"])]
        to_secret_manager: bool,
        /// The target project; required when it is not the project the backup was taken of
        /// (default: the backup's project, which GOOGLE_CLOUD_PROJECT must then not contradict).
        #[arg(long, requires = "to_secret_manager")]
        project: Option<String>,
        /// Restore only these secrets (ids or full names); repeat or comma-separate.
        #[arg(long, value_delimiter = ',', num_args = 1.., requires = "to_secret_manager")]
        only: Vec<String>,
        /// Report what would be created or added, writing nothing.
        #[arg(long, requires = "to_secret_manager")]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long, requires = "to_secret_manager")]
        json: bool,
    },
    /// Bring back, for every object under a prefix, the generation that was
    /// live at a time (--as-of, from the versioned documents bucket's history)
    /// or that an inventory records (--inventory; --from-mirror copies it from
    /// the mirror in the backup store). Copies are server-side and create new
    /// generations; history is never destroyed. Exits 3 when some generations
    /// no longer exist (the rest is restored). Running it again changes nothing.
    /// Reads BACKUP_STORE and DOCUMENTS_STORE (or the GCS_*_BUCKET variables).
    #[command(group = clap::ArgGroup::new("point").required(true).args(["as_of", "inventory"]))]
    Documents {
        /// Object prefix, e.g. kyc/ ("" for every object).
        #[arg(long)]
        prefix: String,
        /// Point in time (RFC 3339, e.g. 2026-11-26T03:00:00Z; a day YYYY-MM-DD means its 00:00 UTC).
        #[arg(long, value_parser = super::parse_time, conflicts_with = "inventory")]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
        /// Inventory date (YYYY-MM-DD): restore the generations it records.
        #[arg(long, value_parser = super::parse_date)]
        inventory: Option<chrono::NaiveDate>,
        /// With --inventory: copy from the mirror in the backup store instead of
        /// the documents bucket's history (works on any backend).
        #[arg(long, requires = "inventory")]
        from_mirror: bool,
        /// Report what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Delete objects created after the point (default: keep them).
        #[arg(long)]
        delete_newer: bool,
        /// Print one JSON line per object and a summary line.
        #[arg(long)]
        json: bool,
    },
}

impl RestoreCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let command = match &self {
            RestoreCmd::Postgres { .. } => "restore postgres",
            RestoreCmd::Secrets { .. } => "restore secrets",
            RestoreCmd::Documents { .. } => "restore documents",
        };
        if let Err(code) = super::check_environment(command) {
            return Ok(code);
        }
        match self {
            RestoreCmd::Postgres {
                date,
                latest,
                id,
                target_url,
                database,
                create_db,
                create_roles,
                no_owner,
                clean,
                jobs,
                temp_dir,
                json,
            } => {
                let selection = match (date, id) {
                    (Some(date), _) => crate::postgres::restore::Selection::Date(date),
                    (None, Some(id)) => crate::postgres::restore::Selection::Id(id),
                    (None, None) => {
                        debug_assert!(latest, "clap requires one of --date, --latest, --id");
                        crate::postgres::restore::Selection::Latest
                    }
                };
                let ownership = match (create_roles, no_owner) {
                    (true, _) => crate::postgres::restore::Ownership::CreateRoles,
                    (_, true) => crate::postgres::restore::Ownership::NoOwner,
                    _ => crate::postgres::restore::Ownership::KeepOwners,
                };
                super::restore_postgres::run(super::restore_postgres::Arguments {
                    selection,
                    database,
                    target_url,
                    ownership,
                    create_database: create_db,
                    clean,
                    jobs,
                    temp_dir,
                    json,
                })
                .await
            }
            RestoreCmd::Secrets {
                date,
                latest,
                out,
                format,
                stdout,
                force,
                to_secret_manager,
                project,
                only,
                dry_run,
                json,
            } => {
                if to_secret_manager {
                    super::restore_secrets::run_to_secret_manager(date, project, only, dry_run, json).await
                } else {
                    super::restore_secrets::run(date, latest, out, format, stdout, force).await
                }
            }
            RestoreCmd::Documents {
                prefix,
                as_of,
                inventory,
                from_mirror,
                dry_run,
                delete_newer,
                json,
            } => {
                super::restore_documents::run(prefix, as_of, inventory, from_mirror, dry_run, delete_newer, json).await
            }
        }
    }
}

/// `--jobs`: a number in 1..=64, named in the error otherwise.
fn parse_jobs(value: &str) -> Result<u32, String> {
    let jobs: u32 = value.parse().map_err(|_| {
        format!(
            "{value:?} is not a number; use 1 to {}",
            crate::postgres::restore::MAX_JOBS
        )
    })?;
    crate::postgres::restore::validate_jobs(jobs)
}
