//! Which environment variables each command reads: one table that gives
//! every subcommand's `--help` its "Environment" section and decides what
//! the command validates before it starts, so a command needs only what it
//! uses (`drill` with file:// stores needs no bucket names, no job secret).
//!
//! A command's variables are a list of [`Group`]s; each group knows how to
//! check its own variables ([`Group::check`]), and [`validate`] runs the
//! checks of every group of a command, so one message lists every problem.

use std::collections::HashMap;

use super::{ConfigError, Reader};

/// How much a command needs a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Must be set.
    Required,
    /// One of the two must be set (`BACKUP_STORE` or `GCS_BACKUPS_BUCKET`).
    OrElse(&'static str),
    /// Read when set.
    Optional,
}

/// One variable as a command reads it.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    pub name: &'static str,
    pub need: Need,
    pub meaning: &'static str,
}

/// Variables read together, with the check that validates them.
pub struct Group {
    pub name: &'static str,
    pub variables: &'static [Variable],
    check: fn(&mut Reader),
}

impl std::fmt::Debug for Group {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name)
    }
}

const fn required(name: &'static str, meaning: &'static str) -> Variable {
    Variable {
        name,
        need: Need::Required,
        meaning,
    }
}

const fn or_else(name: &'static str, other: &'static str, meaning: &'static str) -> Variable {
    Variable {
        name,
        need: Need::OrElse(other),
        meaning,
    }
}

const fn optional(name: &'static str, meaning: &'static str) -> Variable {
    Variable {
        name,
        need: Need::Optional,
        meaning,
    }
}

/// The backup store.
pub const STORES: Group = Group {
    name: "STORES",
    variables: &[
        or_else(
            "BACKUP_STORE",
            "GCS_BACKUPS_BUCKET",
            "where the backups are: gs://BUCKET[/PREFIX] or file:///PATH",
        ),
        or_else(
            "GCS_BACKUPS_BUCKET",
            "BACKUP_STORE",
            "the backups bucket, when BACKUP_STORE is not set",
        ),
        optional("STORAGE_EMULATOR_HOST", "host:port of a GCS emulator (no credentials)"),
    ],
    check: |reader| {
        reader.store("BACKUP_STORE", "GCS_BACKUPS_BUCKET", "the backups");
    },
};

/// The documents store.
pub const DOCUMENTS: Group = Group {
    name: "DOCUMENTS",
    variables: &[
        or_else(
            "DOCUMENTS_STORE",
            "GCS_DOCUMENTS_BUCKET",
            "where the documents are: gs://BUCKET[/PREFIX] or file:///PATH",
        ),
        or_else(
            "GCS_DOCUMENTS_BUCKET",
            "DOCUMENTS_STORE",
            "the documents bucket, when DOCUMENTS_STORE is not set",
        ),
        optional("STORAGE_EMULATOR_HOST", "host:port of a GCS emulator (no credentials)"),
    ],
    check: |reader| {
        reader.store("DOCUMENTS_STORE", "GCS_DOCUMENTS_BUCKET", "the documents");
    },
};

/// The database that is backed up.
pub const DATABASE: Group = Group {
    name: "DATABASE",
    variables: &[
        required(
            "DATABASE_URL",
            "postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE to back up",
        ),
        optional(
            "DATABASES",
            "comma-separated databases on that server (default: the one DATABASE_URL names)",
        ),
    ],
    check: |reader| {
        let raw = reader.required("DATABASE_URL", "the PostgreSQL database to back up (postgres://...)");
        let url = super::parse_database_url(reader, "DATABASE_URL", raw);
        reader.databases(url.as_ref());
    },
};

/// The idempotency ledger.
pub const LEDGER: Group = Group {
    name: "LEDGER",
    variables: &[
        or_else(
            "LEDGER_DATABASE_URL",
            "DATABASE_URL",
            "the ledger's database (schema keshless_ops)",
        ),
        or_else(
            "DATABASE_URL",
            "LEDGER_DATABASE_URL",
            "the ledger's database when LEDGER_DATABASE_URL is not set",
        ),
    ],
    check: |reader| {
        reader.database_or_default("LEDGER_DATABASE_URL", "the idempotency ledger's database");
    },
};

/// The server the drill makes its scratch database on.
pub const DRILL_SERVER: Group = Group {
    name: "DRILL_SERVER",
    variables: &[
        or_else(
            "DRILL_DATABASE_URL",
            "DATABASE_URL",
            "the server the scratch database is created on (its user needs CREATEDB); `--mode full` needs it set, on a server other than DATABASE_URL's",
        ),
        or_else(
            "DATABASE_URL",
            "DRILL_DATABASE_URL",
            "that server when DRILL_DATABASE_URL is not set",
        ),
        optional("DATABASES", "the databases whose newest backups are restored"),
    ],
    check: |reader| {
        let url = reader.database_or_default(
            "DRILL_DATABASE_URL",
            "the server the drill's scratch database is created on",
        );
        let database_url = reader
            .optional("DATABASE_URL")
            .and_then(|value| value.parse::<super::DatabaseUrl>().ok())
            .or(url);
        reader.databases(database_url.as_ref());
    },
};

/// The full drill's scratch targets (`{"mode": "full"}`).
pub const DRILL_FULL: Group = Group {
    name: "DRILL_FULL",
    variables: &[
        optional(
            "DRILL_SECRET_MANAGER_PROJECT",
            "full drill: the scratch project secrets are recovered into (never GOOGLE_CLOUD_PROJECT)",
        ),
        optional(
            "DRILL_DOCUMENTS_STORE",
            "full drill: the scratch bucket documents are recovered into, gs://BUCKET[/PREFIX] or file:///PATH",
        ),
        optional(
            "GOOGLE_CLOUD_PROJECT",
            "the production project, which the full drill refuses as its scratch project",
        ),
        optional(
            "SECRET_MANAGER_REQUESTS_PER_MINUTE",
            "the Secret Manager quota kept to (default 600)",
        ),
        optional(
            "SECRET_MANAGER_EMULATOR_HOST",
            "127.0.0.1:PORT of a Secret Manager fake",
        ),
        optional("PG_RESTORE", "the pg_restore to run (default: from PATH)"),
    ],
    check: |reader| {
        reader.full_drill();
    },
};

/// How dumps are written.
pub const DUMPS_WRITE: Group = Group {
    name: "DUMPS_WRITE",
    variables: &[
        optional("BACKUP_COMPRESSION", "zstd, zstd:LEVEL, gzip or none (default zstd:3)"),
        optional("BACKUP_ENCRYPTION", "required or optional (default optional)"),
        optional(
            "BACKUP_ENCRYPTION_RECIPIENTS",
            "comma-separated age public keys (age1…) dumps are encrypted to",
        ),
        optional("PG_DUMP", "the pg_dump to run (default: from PATH)"),
    ],
    check: |reader| {
        reader.dumps(true);
    },
};

/// How encrypted dumps are read back.
pub const DUMPS_READ: Group = Group {
    name: "DUMPS_READ",
    variables: &[
        optional(
            "BACKUP_AGE_IDENTITY_FILE",
            "file of age identities (AGE-SECRET-KEY-1…) to decrypt encrypted dumps",
        ),
        optional(
            "BACKUP_AGE_IDENTITY_SECRET",
            "instead: the Secret Manager secret holding that file",
        ),
        optional(
            "GOOGLE_CLOUD_PROJECT",
            "the project of a BACKUP_AGE_IDENTITY_SECRET given without one",
        ),
        optional(
            "SECRET_MANAGER_EMULATOR_HOST",
            "127.0.0.1:PORT of a Secret Manager fake",
        ),
        optional("PG_RESTORE", "the pg_restore to run (default: from PATH)"),
    ],
    check: |reader| {
        reader.dumps(false);
    },
};

/// The secrets backups' passphrase.
pub const SECRETS_KEY: Group = Group {
    name: "SECRETS_KEY",
    variables: &[required(
        "SECRETS_ENCRYPTION_KEY",
        "the passphrase secrets backups are encrypted with (at least 32 characters)",
    )],
    check: |reader| {
        reader.secrets_encryption_key();
    },
};

/// The passphrase, when a command can do without it.
pub const SECRETS_KEY_OPTIONAL: Group = Group {
    name: "SECRETS_KEY_OPTIONAL",
    variables: &[optional(
        "SECRETS_ENCRYPTION_KEY",
        "with it, secrets backups are decrypted too (which authenticates every byte)",
    )],
    check: |reader| {
        if reader.optional("SECRETS_ENCRYPTION_KEY").is_some() {
            reader.secrets_encryption_key();
        }
    },
};

/// Where the secrets backup reads the secrets it protects.
pub const SECRETS_SOURCE: Group = Group {
    name: "SECRETS_SOURCE",
    variables: &[
        optional("SECRETS_SOURCE", "env, file or secret-manager (default env)"),
        optional("SECRETS_ENV_VARS", "with env: comma-separated names to back up"),
        optional(
            "SECRETS_ENV_PREFIX",
            "with env: back up every variable with this prefix",
        ),
        optional("SECRETS_FILE", "with file: the JSON or .env file to back up"),
        optional("SECRETS_FILTER", "with secret-manager: Secret Manager's list filter"),
        optional(
            "SECRETS_LOCATIONS",
            "with secret-manager: regions whose regional secrets are read too",
        ),
        optional(
            "SECRET_MANAGER_REQUESTS_PER_MINUTE",
            "the Secret Manager quota kept to (default 600)",
        ),
        optional(
            "SECRET_MANAGER_EMULATOR_HOST",
            "127.0.0.1:PORT of a Secret Manager fake",
        ),
        optional(
            "GOOGLE_CLOUD_PROJECT",
            "with secret-manager: the project whose secrets are read",
        ),
    ],
    check: |reader| {
        reader.secrets_source();
    },
};

/// The drill's Secret Manager coverage step: read only with
/// `SECRETS_SOURCE=secret-manager` (no other source matters to the drill).
pub const DRILL_SECRET_MANAGER: Group = Group {
    name: "DRILL_SECRET_MANAGER",
    variables: &[
        optional("SECRETS_SOURCE", "secret-manager adds the Secret Manager coverage step"),
        optional(
            "GOOGLE_CLOUD_PROJECT",
            "with secret-manager: the project whose secrets are compared",
        ),
        optional("SECRETS_FILTER", "with secret-manager: Secret Manager's list filter"),
        optional(
            "SECRETS_LOCATIONS",
            "with secret-manager: regions whose regional secrets count too",
        ),
        optional(
            "SECRET_MANAGER_REQUESTS_PER_MINUTE",
            "the Secret Manager quota kept to (default 600)",
        ),
        optional(
            "SECRET_MANAGER_EMULATOR_HOST",
            "127.0.0.1:PORT of a Secret Manager fake",
        ),
    ],
    check: |reader| {
        if reader.optional("SECRETS_SOURCE").as_deref() == Some("secret-manager") {
            reader.secret_manager_source();
        }
    },
};

/// Secret Manager as a restore target.
pub const SECRET_MANAGER_TARGET: Group = Group {
    name: "SECRET_MANAGER_TARGET",
    variables: &[
        optional(
            "GOOGLE_CLOUD_PROJECT",
            "with --to-secret-manager: must not contradict the backup's project",
        ),
        optional(
            "SECRET_MANAGER_REQUESTS_PER_MINUTE",
            "the Secret Manager quota kept to (default 600)",
        ),
        optional(
            "SECRET_MANAGER_EMULATOR_HOST",
            "127.0.0.1:PORT of a Secret Manager fake",
        ),
    ],
    check: |reader| {
        reader.positive("SECRET_MANAGER_REQUESTS_PER_MINUTE", 600);
    },
};

/// Pub/Sub and the job secret.
pub const MESSAGING: Group = Group {
    name: "MESSAGING",
    variables: &[
        required("JOB_SECRET", "the shared secret job messages carry as x-job-secret"),
        optional("GOOGLE_CLOUD_PROJECT", "project of the Pub/Sub topics"),
        optional("PUBSUB_TOPIC", "jobs topic (default backup-jobs)"),
        optional(
            "PUBSUB_SUBSCRIPTION",
            "the worker's subscription (default backup-jobs-worker)",
        ),
        optional("PUBSUB_DLQ_TOPIC", "dead-letter topic (default backup-jobs-dlq)"),
        optional(
            "PUBSUB_DLQ_SUBSCRIPTION",
            "subscription on the dead-letter topic (default backup-jobs-dlq-inspect)",
        ),
        optional("PUBSUB_EMULATOR_HOST", "host:port of a Pub/Sub emulator"),
        optional(
            "SCHEDULE_TIME_ZONE",
            "IANA zone of the schedule's periods (default UTC)",
        ),
        optional(
            "DATABASES",
            "the database a postgres-backup message without one is for (the first)",
        ),
        optional("DATABASE_URL", "its database, when DATABASES is not set"),
    ],
    check: |reader| {
        reader.job_secret();
        reader.pubsub();
        reader.schedule_time_zone();
        let url = reader
            .optional("DATABASE_URL")
            .and_then(|value| value.parse::<super::DatabaseUrl>().ok());
        reader.databases(url.as_ref());
    },
};

/// The worker process itself.
pub const WORKER: Group = Group {
    name: "WORKER",
    variables: &[
        optional("PORT", "HTTP port (default 8080)"),
        optional("WORKER_CONCURRENCY", "messages handled at once (default 1)"),
        optional(
            "SHUTDOWN_GRACE_SECONDS",
            "time running jobs get after SIGTERM (default 25)",
        ),
        optional(
            "PUBSUB_MAX_DELIVERY_ATTEMPTS",
            "the subscription's dead-letter limit (5-100)",
        ),
    ],
    check: |reader| {
        reader.parsed("PORT", 8080u16, "a TCP port number from 0 to 65535");
        reader.positive("WORKER_CONCURRENCY", 1);
        reader.positive("SHUTDOWN_GRACE_SECONDS", 25);
    },
};

/// Retention ages and floors.
pub const RETENTION: Group = Group {
    name: "RETENTION",
    variables: &[
        optional(
            "RETENTION_DAILY_DAYS",
            "age limit of daily PostgreSQL backups (default 30)",
        ),
        optional("RETENTION_MONTHLY_MONTHS", "age limit of monthly backups (default 12)"),
        optional(
            "RETENTION_WEEKLY_SECRETS_WEEKS",
            "age limit of weekly secrets backups (default 12)",
        ),
        optional("RETENTION_INVENTORY_DAYS", "age limit of inventories (default 90)"),
        optional(
            "RETENTION_DRILL_REPORT_MONTHS",
            "age limit of drill reports (default 24)",
        ),
        optional(
            "RETENTION_KEEP_MIN_DAILY",
            "newest daily backups always kept (default 7)",
        ),
        optional(
            "RETENTION_KEEP_MIN_MONTHLY",
            "newest monthly backups always kept (default 3)",
        ),
        optional(
            "RETENTION_KEEP_MIN_WEEKLY_SECRETS",
            "newest weekly secrets always kept (default 4)",
        ),
        optional(
            "RETENTION_KEEP_MIN_INVENTORIES",
            "newest inventories always kept (default 7)",
        ),
        optional(
            "RETENTION_KEEP_MIN_DRILL_REPORTS",
            "newest drill reports always kept (default 3)",
        ),
    ],
    check: |reader| {
        reader.retention();
    },
};

/// `status`'s freshness limits.
pub const FRESHNESS: Group = Group {
    name: "FRESHNESS",
    variables: &[
        optional(
            "FRESHNESS_POSTGRES_BACKUP_HOURS",
            "overdue after this many hours (default 26)",
        ),
        optional(
            "FRESHNESS_SECRETS_BACKUP_HOURS",
            "overdue after this many hours (default 192)",
        ),
        optional(
            "FRESHNESS_CLEANUP_OLD_BACKUPS_HOURS",
            "overdue after this many hours (default 192)",
        ),
        optional(
            "FRESHNESS_DOCUMENTS_INVENTORY_HOURS",
            "overdue after this many hours (default 26)",
        ),
        optional(
            "FRESHNESS_DR_DRILL_HOURS",
            "overdue after this many hours (default 840)",
        ),
        optional(
            "DATABASES",
            "one postgres-backup row per database (default: DATABASE_URL's)",
        ),
    ],
    check: |reader| {
        let variables = reader.variables.clone();
        if let Err(mut problems) = crate::schedule::freshness_limits(|name| variables.get(name).cloned()) {
            reader.problems.append(&mut problems);
        }
    },
};

/// How `documents url` signs.
pub const SIGNING: Group = Group {
    name: "SIGNING",
    variables: &[
        optional(
            "GOOGLE_APPLICATION_CREDENTIALS",
            "a service account key file that signs the URL locally",
        ),
        optional(
            "SIGNING_SERVICE_ACCOUNT",
            "without one: the service account IAM signBlob signs as",
        ),
    ],
    check: |_| {},
};

/// Where `restore postgres` restores to.
pub const RESTORE_TARGET: Group = Group {
    name: "RESTORE_TARGET",
    variables: &[optional(
        "RESTORE_TARGET_URL",
        "--target-url, kept off the command line (it may hold a password)",
    )],
    check: |_| {},
};

/// Where `recover` rebuilds its databases.
pub const RECOVER_TARGET: Group = Group {
    name: "RECOVER_TARGET",
    variables: &[optional(
        "RECOVER_TARGET_URL",
        "--target-url, kept off the command line (it may hold a password)",
    )],
    check: |_| {},
};

/// `dev`'s own server.
pub const DEV: Group = Group {
    name: "DEV",
    variables: &[optional(
        "DEV_POSTGRES_URL",
        "the server the demo database is created on when DATABASE_URL is not set",
    )],
    check: |_| {},
};

/// Everything the worker reads (`worker`, `run`, `config`).
const WORKER_GROUPS: &[&Group] = &[
    &MESSAGING,
    &DATABASE,
    &LEDGER,
    &DRILL_SERVER,
    &DRILL_FULL,
    &STORES,
    &DOCUMENTS,
    &SECRETS_KEY,
    &SECRETS_SOURCE,
    &RETENTION,
    &WORKER,
    &DUMPS_WRITE,
    &DUMPS_READ,
];

/// Every subcommand (as typed after `keshless-ops`) and the groups it reads.
pub const COMMANDS: &[(&str, &[&Group])] = &[
    ("worker", WORKER_GROUPS),
    ("run", WORKER_GROUPS),
    ("config", WORKER_GROUPS),
    ("publish", &[&MESSAGING]),
    ("dlq list", &[&MESSAGING]),
    ("dlq replay", &[&MESSAGING]),
    ("dlq discard", &[&MESSAGING, &LEDGER]),
    ("backups list", &[&STORES]),
    ("backups show", &[&STORES]),
    ("backups verify", &[&STORES, &DUMPS_READ, &SECRETS_KEY_OPTIONAL]),
    ("backups pin", &[&STORES]),
    ("backups unpin", &[&STORES]),
    ("restore postgres", &[&STORES, &DUMPS_READ, &RESTORE_TARGET]),
    ("restore secrets", &[&STORES, &SECRETS_KEY, &SECRET_MANAGER_TARGET]),
    ("restore documents", &[&STORES, &DOCUMENTS]),
    ("cleanup", &[&STORES, &RETENTION]),
    (
        "drill",
        &[
            &STORES,
            &DOCUMENTS,
            &DRILL_SERVER,
            &SECRETS_KEY,
            &DUMPS_READ,
            &DRILL_SECRET_MANAGER,
            &DRILL_FULL,
        ],
    ),
    ("secrets verify", &[&STORES, &SECRETS_KEY]),
    ("secrets rekey", &[&STORES, &SECRETS_KEY]),
    ("status", &[&STORES, &LEDGER, &FRESHNESS]),
    ("dev", &[&DEV]),
    ("emulator", &[]),
    ("documents check", &[&STORES, &DOCUMENTS]),
    ("documents url", &[&DOCUMENTS, &SIGNING]),
    ("doctor", &[&STORES, &DOCUMENTS]),
    (
        "recover",
        &[
            &STORES,
            &SECRETS_KEY,
            &DUMPS_READ,
            &SECRET_MANAGER_TARGET,
            &RECOVER_TARGET,
        ],
    ),
];

/// The groups of `command` (`"backups verify"`); `None` for one the table lacks.
pub fn groups(command: &str) -> Option<&'static [&'static Group]> {
    COMMANDS
        .iter()
        .find(|(name, _)| *name == command)
        .map(|(_, groups)| *groups)
}

/// The variables `command` reads, each once, in table order; a variable
/// required by one group and optional in another counts as required.
pub fn variables(command: &str) -> Vec<Variable> {
    let mut variables: Vec<Variable> = Vec::new();
    for group in groups(command).unwrap_or_default() {
        for variable in group.variables {
            match variables.iter_mut().find(|seen| seen.name == variable.name) {
                Some(seen) => {
                    if variable.need == Need::Required
                        || (matches!(variable.need, Need::OrElse(_)) && seen.need == Need::Optional)
                    {
                        seen.need = variable.need;
                    }
                }
                None => variables.push(*variable),
            }
        }
    }
    variables
}

/// Commands that hand every worker variable through to what they start
/// (`dev`): their own variables are listed, the worker's are not.
const PASS_THROUGH: &[&str] = &["dev"];

/// The "Environment" section of `command`'s `--help`.
pub fn help(command: &str) -> String {
    let variables = variables(command);
    if variables.is_empty() {
        return "Environment: reads no configuration variable (RUST_LOG sets the log filter).".to_owned();
    }
    let width = variables.iter().map(|variable| variable.name.len()).max().unwrap_or(0);
    let mut text = if PASS_THROUGH.contains(&command) {
        String::from(
            "Environment (every variable of `keshless-ops worker --help` set here overrides what this command \
             generates, and it writes them all to var/dev.env; its own, and RUST_LOG for the log filter):\n",
        )
    } else {
        String::from("Environment (this command reads these and no other; RUST_LOG sets the log filter):\n")
    };
    for variable in &variables {
        let need = match variable.need {
            Need::Required => "required".to_owned(),
            Need::OrElse(other) => format!("required unless {other} is set"),
            Need::Optional => "optional".to_owned(),
        };
        text.push_str(&format!("  {:<width$}  {need}: {}\n", variable.name, variable.meaning));
    }
    text.trim_end().to_owned()
}

/// Checks every variable `command` reads, in the process environment; one
/// error lists every problem.
pub fn validate(command: &str) -> Result<(), ConfigError> {
    validate_vars(command, super::utf8_environment().collect())
}

/// [`validate`] over a given set of variables.
pub fn validate_vars(command: &str, variables: HashMap<String, String>) -> Result<(), ConfigError> {
    let mut reader = Reader {
        variables,
        problems: Vec::new(),
    };
    for group in groups(command).unwrap_or_default() {
        (group.check)(&mut reader);
    }
    // Two groups may check one variable (DATABASE_URL for the ledger and the drill).
    let mut problems: Vec<String> = Vec::new();
    for problem in reader.problems {
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn the_drill_on_file_stores_needs_no_bucket_and_no_job_secret() {
        let environment = vars(&[
            ("BACKUP_STORE", "file:///tmp/backups"),
            ("DOCUMENTS_STORE", "file:///tmp/documents"),
            ("DATABASE_URL", "postgres://postgres@127.0.0.1/app"),
            ("SECRETS_ENCRYPTION_KEY", "0123456789abcdef0123456789abcdef"),
        ]);
        validate_vars("drill", environment).expect("enough for the drill");
        let error = validate_vars("drill", vars(&[])).unwrap_err();
        let text = error.to_string();
        for name in [
            "BACKUP_STORE",
            "DOCUMENTS_STORE",
            "DRILL_DATABASE_URL",
            "SECRETS_ENCRYPTION_KEY",
        ] {
            assert!(text.contains(name), "{name}: {text}");
        }
        assert!(!text.contains("JOB_SECRET"), "{text}");
    }

    #[test]
    fn every_problem_of_a_command_is_reported_at_once() {
        let error = validate_vars("dlq discard", vars(&[("LEDGER_DATABASE_URL", "mysql://x")])).unwrap_err();
        assert_eq!(error.problems.len(), 2, "{error}");
        assert!(error.problems[0].contains("JOB_SECRET"), "{error}");
        assert!(error.problems[1].starts_with("LEDGER_DATABASE_URL"), "{error}");
    }

    #[test]
    fn a_variable_required_by_one_group_is_required() {
        let drill = variables("drill");
        let key = drill
            .iter()
            .find(|variable| variable.name == "SECRETS_ENCRYPTION_KEY")
            .unwrap();
        assert_eq!(key.need, Need::Required);
        let names: Vec<&str> = drill.iter().map(|variable| variable.name).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }
}
