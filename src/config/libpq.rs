//! What libpq reads from the environment when a URL does not say, applied
//! to our own connections so they accept the credentials `pg_dump` and
//! `pg_restore` accept: `PGUSER`, `PGPASSWORD`, the password file
//! (`PGPASSFILE`, default `~/.pgpass`) and `PGSSLMODE`.

use std::path::PathBuf;

use tokio_postgres::config::{Host, SslMode};

/// Fills in what `url` leaves out, from `lookup` (the environment). The URL
/// always wins; an unsupported `PGSSLMODE` is an error naming it.
pub(super) fn apply_environment(
    config: &mut tokio_postgres::Config,
    url: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    let lookup = |name: &str| lookup(name).filter(|value| !value.is_empty());
    if config.get_user().is_none() {
        if let Some(user) = lookup("PGUSER").or_else(|| lookup("USER")) {
            config.user(&user);
        }
    }
    if config.get_password().is_none() {
        if let Some(password) = lookup("PGPASSWORD") {
            config.password(password);
        } else if let Some(password) = password_from_file(config, &lookup) {
            config.password(password);
        }
    }
    let query = url.split_once('?').map_or("", |(_, query)| query);
    let url_sets_ssl_mode = query.split('&').any(|pair| pair.starts_with("sslmode="));
    if !url_sets_ssl_mode {
        match lookup("PGSSLMODE").as_deref() {
            None => {}
            Some("disable") => {
                config.ssl_mode(SslMode::Disable);
            }
            Some("prefer") => {
                config.ssl_mode(SslMode::Prefer);
            }
            Some("require") => {
                config.ssl_mode(SslMode::Require);
            }
            Some(other) => {
                return Err(format!(
                    "PGSSLMODE={other:?} is not supported: use disable, prefer or require (certificates are not \
                     verified)"
                ))
            }
        }
    }
    Ok(())
}

/// The password file's entry for this connection, as libpq picks it: the
/// first line whose host, port, database and user match (`*` matches
/// anything). Ignored, as by libpq, when others may read the file.
fn password_from_file(config: &tokio_postgres::Config, lookup: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let path = match lookup("PGPASSFILE") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(lookup("HOME")?).join(".pgpass"),
    };
    let metadata = std::fs::metadata(&path).ok()?;
    if std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            "the password file is readable by others and is ignored (as libpq does): chmod 0600 it"
        );
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let user = config.get_user()?;
    let (hosts, port) = match (config.get_hosts().first(), config.get_ports().first()) {
        (Some(Host::Tcp(name)), port) => (vec![name.clone()], port.copied().unwrap_or(5432)),
        // A socket matches "localhost" (libpq's rule for the default socket
        // directory) or its directory.
        (Some(Host::Unix(path)), port) => (
            vec!["localhost".to_owned(), path.display().to_string()],
            port.copied().unwrap_or(5432),
        ),
        (None, _) => return None,
    };
    let database = config.get_dbname().unwrap_or(user);
    find_password(&text, &hosts, port, database, user)
}

/// The password of the first matching line of a password file's `text`.
fn find_password(text: &str, hosts: &[String], port: u16, database: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let fields = split_fields(line);
            (fields.len() == 5).then_some(fields)
        })
        .find(|fields| {
            let matches = |field: &str, value: &str| field == "*" || field == value;
            hosts.iter().any(|host| matches(&fields[0], host))
                && matches(&fields[1], &port)
                && matches(&fields[2], database)
                && matches(&fields[3], user)
        })
        .map(|fields| fields[4].clone())
}

/// A password file line's fields: `:` separates, `\:` and `\\` escape.
fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut characters = line.chars();
    while let Some(character) = characters.next() {
        match character {
            '\\' => {
                if let Some(next) = characters.next() {
                    fields.last_mut().expect("one field").push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            other => fields.last_mut().expect("one field").push(other),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::str::FromStr;

    fn applied(url: &str, environment: &[(&str, &str)]) -> Result<tokio_postgres::Config, String> {
        let environment: HashMap<String, String> = environment
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let mut config = tokio_postgres::Config::from_str(url).unwrap();
        apply_environment(&mut config, url, &|name| environment.get(name).cloned())?;
        Ok(config)
    }

    #[test]
    fn the_url_wins_and_the_environment_fills_in() {
        let config = applied(
            "postgres://app:inurl@db/app",
            &[("PGPASSWORD", "env"), ("PGUSER", "other")],
        )
        .unwrap();
        assert_eq!(config.get_user(), Some("app"));
        assert_eq!(config.get_password(), Some(&b"inurl"[..]));
        let config = applied("postgres://db/app", &[("PGPASSWORD", "env"), ("PGUSER", "ops")]).unwrap();
        assert_eq!(config.get_user(), Some("ops"));
        assert_eq!(config.get_password(), Some(&b"env"[..]));
        let config = applied("postgres://db/app", &[("USER", "me")]).unwrap();
        assert_eq!(config.get_user(), Some("me"));
        assert_eq!(config.get_password(), None);
    }

    #[test]
    fn sslmode_from_the_environment_unless_the_url_has_one() {
        let config = applied("postgres://u@db/app", &[("PGSSLMODE", "require")]).unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        let config = applied("postgres://u@db/app?sslmode=disable", &[("PGSSLMODE", "require")]).unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Disable);
        let error = applied("postgres://u@db/app", &[("PGSSLMODE", "verify-full")]).unwrap_err();
        assert!(error.contains("PGSSLMODE=\"verify-full\" is not supported"), "{error}");
    }

    #[test]
    fn the_password_file_is_read_as_libpq_reads_it() {
        let text = "# comment\n\
                    other:5432:*:app:wrong-host\n\
                    db:5433:*:app:wrong-port\n\
                    db:*:app:app:p\\:ss\\\\word\n\
                    *:*:*:*:fallback\n";
        let hosts = ["db".to_owned()];
        assert_eq!(
            find_password(text, &hosts, 5432, "app", "app").as_deref(),
            Some("p:ss\\word")
        );
        assert_eq!(
            find_password(text, &hosts, 5433, "app", "app").as_deref(),
            Some("wrong-port")
        );
        assert_eq!(
            find_password(text, &hosts, 5432, "other", "app").as_deref(),
            Some("fallback")
        );
        assert_eq!(find_password("db:5432:app:app\n", &hosts, 5432, "app", "app"), None);

        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("pgpass");
        std::fs::write(&file, "db:5432:app:app:from-file\n").unwrap();
        let path = file.display().to_string();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let config = applied("postgres://app@db/app", &[("PGPASSFILE", &path)]).unwrap();
        assert_eq!(config.get_password(), None, "a file others may read is ignored");
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let config = applied("postgres://app@db/app", &[("PGPASSFILE", &path)]).unwrap();
        assert_eq!(config.get_password(), Some(&b"from-file"[..]));
    }
}
