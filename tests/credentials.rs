//! PostgreSQL credentials the libpq way, through the binary, on a cluster of
//! the test's own with password authentication (scram-sha-256): a backup and
//! a restore work with the password only in `PGPASSWORD`, only in a password
//! file, and only (percent-encoded) in the URL; a refused or missing password
//! is a configuration error that names the user and host, once, and the
//! drill that meets it neither starts nor writes a report.

mod common;

use common::cluster::PrivateCluster;
use common::text;

/// A password with every character a URL reserves in its user-info.
const PASSWORD: &str = "p@ss:w/rd?#1";
const ENCODED: &str = "p%40ss%3Aw%2Frd%3F%231";

struct Secured {
    cluster: PrivateCluster,
    port: u16,
}

impl Secured {
    /// A cluster whose TCP connections need a password; the test's own
    /// admin connection comes through the socket (trust).
    async fn start() -> Secured {
        let cluster = PrivateCluster::start();
        let port: u16 = cluster
            .url()
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|port| port.parse().ok())
            .expect("a port in the cluster URL");
        let (admin, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the private cluster");
        tokio::spawn(connection);
        for statement in [
            "ALTER SYSTEM SET password_encryption = 'scram-sha-256'".to_owned(),
            "SELECT pg_reload_conf()".to_owned(),
            // The session's own setting, in case the reload has not reached it yet.
            "SET password_encryption = 'scram-sha-256'".to_owned(),
            format!("CREATE ROLE keshless LOGIN SUPERUSER PASSWORD '{PASSWORD}'"),
            "CREATE DATABASE keshless OWNER keshless".to_owned(),
        ] {
            admin.batch_execute(&statement).await.unwrap();
        }
        let stored: String = admin
            .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = 'keshless'", &[])
            .await
            .unwrap()
            .get(0);
        assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}");
        let (app, connection) = tokio_postgres::connect(
            &format!("postgres://postgres@127.0.0.1:{port}/keshless"),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        app.batch_execute(
            "CREATE TABLE payments (id bigserial PRIMARY KEY, amount numeric NOT NULL);
             ALTER TABLE payments OWNER TO keshless;
             INSERT INTO payments (amount) SELECT i FROM generate_series(1, 250) AS i;",
        )
        .await
        .unwrap();
        // From now on TCP needs the password (md5 lines do SCRAM for SCRAM secrets).
        std::fs::write(
            cluster.data().join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 md5\n",
        )
        .unwrap();
        admin.batch_execute("SELECT pg_reload_conf()").await.unwrap();
        Secured { cluster, port }
    }

    fn url(&self, database: &str, password: Option<&str>) -> String {
        match password {
            Some(password) => format!("postgres://keshless:{password}@127.0.0.1:{}/{database}", self.port),
            None => format!("postgres://keshless@127.0.0.1:{}/{database}", self.port),
        }
    }
}

/// A case: its name, the password in the URL, the variables that carry it.
type Case = (&'static str, Option<&'static str>, Vec<(&'static str, String)>);

fn environment(store: &str, documents: &str, home: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("JOB_SECRET", "job-secret-value".to_owned()),
        (
            "SECRETS_ENCRYPTION_KEY",
            "encryption-key-0123456789abcdefghijkl".to_owned(),
        ),
        ("BACKUP_STORE", store.to_owned()),
        ("DOCUMENTS_STORE", documents.to_owned()),
        ("SECRETS_ENV_PREFIX", "KESHLESS_".to_owned()),
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        // An empty HOME: no ~/.pgpass but the one a case writes.
        ("HOME", home.display().to_string()),
    ]
}

#[tokio::test]
async fn backup_and_restore_take_the_password_from_pgpassword_a_password_file_or_the_url() {
    let secured = Secured::start().await;
    let (backups, _backups_directory) = common::file_store().await;
    let (documents, _documents_directory) = common::file_store().await;
    let store = keshless_ops::storage::BlobStore::location(backups.as_ref()).to_string();
    let documents = keshless_ops::storage::BlobStore::location(documents.as_ref()).to_string();
    let home = tempfile::tempdir().unwrap();
    let password_file = home.path().join("pgpass");
    // libpq's escapes for ':' and '\' in a password file.
    std::fs::write(
        &password_file,
        format!(
            "# keshless\n127.0.0.1:{}:*:keshless:{}\n",
            secured.port,
            PASSWORD.replace('\\', "\\\\").replace(':', "\\:")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&password_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let cases: [Case; 3] = [
        ("pgpassword", None, vec![("PGPASSWORD", PASSWORD.to_owned())]),
        (
            "pgpassfile",
            None,
            vec![("PGPASSFILE", password_file.display().to_string())],
        ),
        ("url", Some(ENCODED), vec![]),
    ];
    for (case, in_url, extra) in cases {
        let mut environment = environment(&store, &documents, home.path());
        environment.extend(extra);
        environment.push(("DATABASE_URL", secured.url("keshless", in_url)));
        let key = format!("postgres-backup:credentials-{case}");
        common::next_second().await;
        let backup = common::keshless_ops_with(&["run", "postgres-backup", "--key", &key], &environment);
        assert!(
            backup.status.success(),
            "{case}: backup failed:\n{}{}",
            text(&backup.stdout),
            text(&backup.stderr)
        );
        let target = format!("restored_{case}");
        let restore = common::keshless_ops_with(
            &[
                "restore",
                "postgres",
                "--latest",
                "--database",
                "keshless",
                "--target-url",
                &secured.url(&target, in_url),
                "--create-db",
                "--json",
            ],
            &environment,
        );
        let (stdout, stderr) = (text(&restore.stdout), text(&restore.stderr));
        assert!(restore.status.success(), "{case}: restore failed:\n{stdout}{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{stdout}"));
        assert_eq!(report["tables"], 1, "{case}: {report:#}");
        for text in [&stdout, &stderr, &text(&backup.stdout), &text(&backup.stderr)] {
            assert!(
                !text.contains("w/rd") && !text.contains("%2Frd"),
                "{case}: a password leaks: {text}"
            );
        }
    }
    drop(secured.cluster);
}

#[tokio::test]
async fn a_refused_or_missing_password_is_a_configuration_error_and_the_drill_does_not_start() {
    let secured = Secured::start().await;
    let (backups, _backups_directory) = common::file_store().await;
    let (documents, _documents_directory) = common::file_store().await;
    let store = keshless_ops::storage::BlobStore::location(backups.as_ref()).to_string();
    let documents_url = keshless_ops::storage::BlobStore::location(documents.as_ref()).to_string();
    let home = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{}", secured.port);

    for (case, url, extra, detail) in [
        (
            "wrong",
            secured.url("keshless", Some("not-the-password")),
            vec![],
            "password authentication failed for user \"keshless\"",
        ),
        (
            "missing",
            secured.url("keshless", None),
            vec![],
            "the server asks for a password and none was given",
        ),
        (
            "wrong in PGPASSWORD",
            secured.url("keshless", None),
            vec![("PGPASSWORD", "not-the-password".to_owned())],
            "password authentication failed",
        ),
    ] {
        let mut environment = environment(&store, &documents_url, home.path());
        environment.extend(extra);
        environment.push(("DATABASE_URL", url));
        let drill = common::keshless_ops_with(&["drill"], &environment);
        let errors = text(&drill.stderr);
        assert_eq!(drill.status.code(), Some(78), "{case}: {errors}{}", text(&drill.stdout));
        for expected in [
            detail,
            host.as_str(),
            "DRILL_DATABASE_URL",
            "PGPASSWORD",
            "a configuration error, retrying cannot help",
            "percent-encode",
            "no report written",
        ] {
            assert!(
                errors.contains(expected),
                "{case}: {expected:?} missing from:\n{errors}"
            );
        }
        assert_eq!(errors.matches(detail).count(), 1, "{case}: said once:\n{errors}");
        assert!(!errors.contains("db error: db error"), "{case}: {errors}");
        assert!(!errors.contains("drop it by hand"), "{case}: {errors}");
        assert!(!errors.contains("not-the-password"), "{case}: {errors}");
        let reports: Vec<String> = common::all_keys(backups.as_ref())
            .await
            .into_iter()
            .filter(|key| key.starts_with("drills/"))
            .collect();
        assert!(
            reports.is_empty(),
            "{case}: a drill that never started wrote {reports:?}"
        );
    }

    // The ledger's own pool (status, the worker, dlq discard): the same
    // configuration error, said once, never the password.
    let mut ledger_environment = environment(&store, &documents_url, home.path());
    ledger_environment.push(("DATABASE_URL", secured.url("keshless", Some("not-the-password"))));
    let status = common::keshless_ops_with(&["status"], &ledger_environment);
    let said = format!("{}{}", text(&status.stdout), text(&status.stderr));
    // The store is empty too, so every job is overdue: exit 2 (4 is for
    // "nothing overdue, but a source could not be read").
    assert_eq!(status.status.code(), Some(2), "{said}");
    for expected in [
        "password authentication failed for user \"keshless\"",
        host.as_str(),
        "a configuration error, retrying cannot help",
        "PGPASSWORD",
    ] {
        assert!(said.contains(expected), "status: {expected:?} missing from:\n{said}");
    }
    assert_eq!(
        said.matches("password authentication failed").count(),
        1,
        "said once:\n{said}"
    );
    assert!(!said.contains("not-the-password"), "{said}");

    // A password with an unencoded '@' in the URL: a hint, and none of it shown.
    let mut environment = environment(&store, &documents_url, home.path());
    environment.push((
        "DATABASE_URL",
        format!("postgres://keshless:{PASSWORD}@127.0.0.1:{}/keshless", secured.port),
    ));
    let output = common::keshless_ops_with(&["config"], &environment);
    let errors = text(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{errors}");
    assert!(errors.contains("must be percent-encoded"), "{errors}");
    for part in ["p@ss", "ss:w", "w/rd", "rd?#1"] {
        assert!(!errors.contains(part), "{part:?} of the password shows:\n{errors}");
    }
    drop(secured.cluster);
}
